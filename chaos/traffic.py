"""The app's side of a run: guests signed in on the Firebase Auth emulator ask for the sketches, one
every `SEND_EVERY` seconds, and watch them as the app does (`GET ?id=` every few seconds).

Each sketch is asked for with an Idempotency-Key of its own and asked again, with the same key and
body, as an app does when no answer comes (a killed instance) or the answer says to come back (409,
429, 503 without a sketch): however often it is asked, one sketch is made. Each has a prompt and a
video prompt no other sketch has, so that every paid call in the simulator's ledger, which keeps the
prompts Novita was sent, can be joined to its sketch.

Every answer is kept; a 500 (the function's "unexpected error") is a fault of the machine.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.auth import Guest
from devstack.stack import LocalStack

# A guest has at most this many sketches, all of which may be in progress at once: the stack's
# MAX_SKETCHES_IN_PROGRESS is set above it, so that no create is refused for it.
SKETCHES_PER_GUEST = 8
WIDTH, HEIGHT = 512, 512
# A create answers within its function's 60 s timeout.
CREATE_TIMEOUT = 70.0
# How long an app keeps asking for one sketch before it gives up.
PATIENCE = 300.0
# The longest an app waits before asking again, whatever Retry-After says (a daily cap's is hours).
MOST_WAIT = 5.0
POLL_EVERY = 5.0
POLLERS = 4
# Enough that each sketch is asked for on time while dozens of others wait to be asked again (a
# balance outage holds every create off for a while).
SENDERS = 64

SUBJECTS = (
    "a walrus giving a TED talk about spoons",
    "a giraffe ice-skating on custard",
    "a snail racing a glacier",
    "a committee of pigeons judging a bread contest",
    "an octopus teaching a knitting class",
    "a penguin selling umbrellas in the desert",
    "a cactus attending a balloon convention",
    "a sloth delivering express mail",
    "a goldfish steering a submarine made of jelly",
    "a llama conducting an orchestra of kettles",
)
PLACES = ("on the moon", "in a library", "at a wedding", "on a rainy rooftop", "inside a teapot")
MOTIONS = ("slow zoom in", "the camera drifts left", "everything wobbles", "a gentle pan upward")


@dataclass
class Ask:
    """One sketch the app asks for, and what it heard."""

    index: int
    prompt: str
    video_prompt: str
    guest: Guest
    key: str
    sketch_id: str | None = None
    # The answer that named the sketch: 202, or the 502/503 of a sketch that failed at its start.
    answered: int | None = None
    # Every answer to its create: when (seconds into the run) and what.
    answers: list[tuple[float, str]] = field(default_factory=list)
    # The status the last GET showed.
    seen: str | None = None

    def body(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "video_prompt": self.video_prompt, "width": WIDTH, "height": HEIGHT}


def asks(seed: int, count: int, guests: list[Guest]) -> list[Ask]:
    """The run's sketches: prompts drawn from the seed, each made unique by its number."""
    dice = random.Random(f"prompts-{seed}")
    made = []
    for index in range(count):
        prompt = f"{dice.choice(SUBJECTS)} {dice.choice(PLACES)} (chaos {seed}, sketch {index})"
        video_prompt = f"{dice.choice(MOTIONS)} (chaos {seed}, sketch {index} moving)"
        guest = guests[index % len(guests)]
        made.append(Ask(index, prompt, video_prompt, guest, f"chaos-{seed}-{index}"))
    return made


def guests_for(count: int) -> int:
    return max(1, -(-count // SKETCHES_PER_GUEST))


class App:
    def __init__(self, stack: LocalStack, asked: list[Ask], send_every: float) -> None:
        self._url = stack.create.url
        self._asked = asked
        self._send_every = send_every
        self._http = httpx.Client(timeout=httpx.Timeout(CREATE_TIMEOUT, connect=5.0))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="chaos-send")
        self._sent: list[Future[None]] = []
        self._pacer = threading.Thread(target=self._pace, name="chaos-pace", daemon=True)
        self._poller = threading.Thread(target=self._poll, name="chaos-poll", daemon=True)
        self._started = 0.0
        # Every 500 the app was answered: (seconds into the run, request, answer body).
        self.unexpected: list[tuple[float, str, str]] = []

    def start(self, started: float) -> App:
        self._started = started
        self._pacer.start()
        self._poller.start()
        return self

    def sent(self) -> bool:
        """Whether every sketch has been asked for, and each asking is over."""
        return not self._pacer.is_alive() and all(sent.done() for sent in self._sent)

    def progress(self) -> str:
        named = sum(ask.sketch_id is not None for ask in self._asked)
        seen = Counter(ask.seen for ask in self._asked if ask.seen)
        return f"{named}/{len(self._asked)} sketches made; the app last saw {dict(seen)}"

    def stop(self) -> None:
        self._stopping.set()
        self._poller.join()
        self._senders.shutdown(wait=True)
        self._http.close()

    # -------------------------------------------------------------------------- asking

    def _pace(self) -> None:
        for ask in self._asked:
            due = self._started + ask.index * self._send_every
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                return
            self._sent.append(self._senders.submit(self._send, ask))

    def _send(self, ask: Ask) -> None:
        give_up = time.monotonic() + PATIENCE
        headers = {**ask.guest.headers, "Idempotency-Key": ask.key}
        while time.monotonic() < give_up and not self._stopping.is_set():
            try:
                response = self._http.post(self._url, json=ask.body(), headers=headers)
            except httpx.HTTPError as exc:
                ask.answers.append((self._now(), f"no answer: {type(exc).__name__}"))
                self._stopping.wait(1.0)
                continue
            error = _error(response)
            ask.answers.append((self._now(), f"{response.status_code} {error.get('code', '')}".strip()))
            if response.status_code == 202:
                ask.sketch_id, ask.answered = response.json()["id"], 202
                return
            if isinstance(error.get("sketch"), dict):
                # Novita refused or could not be reached at the start: the sketch failed, with why.
                ask.sketch_id, ask.answered = error["sketch"]["id"], response.status_code
                return
            if response.status_code == 500:
                self._unexpected(f"POST create_sketch ({ask.key})", response)
            elif response.status_code not in (409, 429, 503):
                return  # refused for good: the audit finds the sketch was never made
            self._stopping.wait(_retry_after(response))

    # ------------------------------------------------------------------------- watching

    def _poll(self) -> None:
        with ThreadPoolExecutor(POLLERS, thread_name_prefix="chaos-poll") as pool:
            while not self._stopping.wait(POLL_EVERY):
                watched = [a for a in self._asked if a.sketch_id and a.seen not in ("complete", "failed")]
                list(pool.map(self._look, watched))

    def _look(self, ask: Ask) -> None:
        try:
            response = self._http.get(self._url, params={"id": ask.sketch_id}, headers=ask.guest.headers)
        except httpx.HTTPError:
            return  # an instance being started again: the next look
        if response.status_code == 200:
            ask.seen = response.json()["status"]
        elif response.status_code == 500:
            self._unexpected(f"GET create_sketch?id={ask.sketch_id}", response)

    def _unexpected(self, request: str, response: httpx.Response) -> None:
        with self._lock:
            self.unexpected.append((self._now(), request, response.text[:300]))

    def _now(self) -> float:
        return round(time.monotonic() - self._started, 2)


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(MOST_WAIT, max(0.5, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def sign_in(stack: LocalStack, count: int, say: Callable[[str], None]) -> list[Guest]:
    guests = [stack.auth.sign_in_guest() for _ in range(count)]
    say(f"{count} guests signed in on the Firebase Auth emulator")
    return guests
