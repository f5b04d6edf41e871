"""The fault schedule of a run, drawn from its seed alone: the same seed and number of sketches give
the same schedule, to the hundredth of a second.

Faults are of two kinds:

- steady ones, on for the whole fault phase: the simulator's own seeded dice (`STEADY`): paid
  requests whose answer never arrives although the task was made, webhooks dropped, duplicated (the
  copies at once), held back up to a few seconds (so late, and out of order), and a few 429s and 5xx;
- episodes (`EPISODES`), each at a time of its own: `kill -9` of a function's gunicorn worker or of its
  whole instance (its process group; the stack's supervisor starts it again), a restart of the
  Firestore, Pub/Sub or Cloud Storage emulator, a burst of Novita 429s and 5xx, a slow media host,
  media links that expire within seconds, and the balance running out and coming back.

Every kind of episode happens at least twice, each kill for each function. A kind's episodes are
spread over the fault phase: it is cut into as many equal slots as the kind has episodes, and each
episode happens at a random time of its own slot, so that two of a kind never overlap.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EpisodeKind = Literal[
    "kill_worker",
    "kill_instance",
    "restart_firestore",
    "restart_pubsub",
    "restart_storage",
    "novita_errors",
    "slow_media",
    "short_links",
    "balance_out",
]
Function = Literal["create_sketch", "novita_webhook", "steps"]
FUNCTIONS: tuple[Function, ...] = ("create_sketch", "novita_webhook", "steps")
# Kills come in one series per function: each function's processes are killed repeatedly.
PER_FUNCTION: tuple[EpisodeKind, ...] = ("kill_worker", "kill_instance")
MIN_EPISODES = 2

# One sketch is sent every SEND_EVERY seconds; the faults go on FAULT_TAIL seconds after the last, so
# that the last sketches meet them in their later steps too.
SEND_EVERY = 0.8
FAULT_TAIL = 30.0
# Novita's links live an hour (the simulator's default); a short_links episode cuts that to seconds.
LINK_TTL = 3600
ERROR_STATUSES = [429, 500, 502, 503, 504]

# The simulator's steady faults during the fault phase (novita_simulator/config.py).
STEADY: dict[str, Any] = {
    "drop_response_probability": 0.08,
    "drop_webhook_probability": 0.15,
    "duplicate_webhook_probability": 0.25,
    "concurrent_deliveries": True,
    "webhook_delay_max": 4.0,
    "http_error_probability": 0.03,
    "http_error_statuses": ERROR_STATUSES,
}
# The simulator once the faults stop: no fault of any kind.
CALM: dict[str, Any] = {
    "drop_response_probability": 0.0,
    "drop_webhook_probability": 0.0,
    "duplicate_webhook_probability": 0.0,
    "concurrent_deliveries": False,
    "webhook_delay_max": 0.0,
    "http_error_probability": 0.0,
    "media_delay": 0.0,
    "media_bytes_per_second": 0,
    "media_ttl": LINK_TTL,
    "balance_exhausted": False,
}


@dataclass(frozen=True)
class Rate:
    # One episode per this many seconds of the fault phase, on average (at least MIN_EPISODES).
    every: float
    # How long one lasts, drawn evenly from this range (seconds; a kill is an instant).
    lasts: tuple[float, float]
    what: str


EPISODES: dict[EpisodeKind, Rate] = {
    "kill_worker": Rate(
        12.0, (0.0, 0.0), "kill -9 of the function's gunicorn worker (the master starts another)"
    ),
    "kill_instance": Rate(
        25.0, (0.0, 0.0), "kill -9 of the function's process group (the supervisor starts it again)"
    ),
    "restart_firestore": Rate(45.0, (1.0, 4.0), "the Firestore emulator down, then back with its documents"),
    "restart_pubsub": Rate(
        45.0, (2.0, 5.0), "the Pub/Sub emulator down, then back empty (its messages lost)"
    ),
    "restart_storage": Rate(40.0, (1.0, 4.0), "the Cloud Storage emulator down, then back with its objects"),
    "novita_errors": Rate(20.0, (3.0, 8.0), "a burst: 40-80% of Novita's answers are 429 or 5xx"),
    "slow_media": Rate(30.0, (5.0, 15.0), "the media host answers 0.5-3 s late, then at 50-200 KB/s"),
    "short_links": Rate(30.0, (5.0, 15.0), "Novita's media links issued meanwhile expire after 2-5 s"),
    "balance_out": Rate(60.0, (4.0, 10.0), "Novita's balance is out: every paid request is refused"),
}


@dataclass(frozen=True)
class Episode:
    at: float  # seconds after the first sketch is sent
    kind: EpisodeKind
    seconds: float  # how long it lasts: an emulator's downtime, a window of the simulator's
    target: Function | None = None  # the function, for a kill
    # The simulator's settings while it lasts (simulator episodes only).
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    seed: int
    sketches: int
    send_every: float
    fault_seconds: float
    episodes: tuple[Episode, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steady": STEADY}


def plan(seed: int, sketches: int) -> Plan:
    """The run's schedule: every episode of every kind, in the order they happen."""
    dice = random.Random(seed)
    fault_seconds = round(sketches * SEND_EVERY + FAULT_TAIL, 2)
    episodes: list[Episode] = []
    for kind, rate in EPISODES.items():
        targets: tuple[Function | None, ...] = FUNCTIONS if kind in PER_FUNCTION else (None,)
        for target in targets:
            count = max(MIN_EPISODES, round(fault_seconds / rate.every))
            slot = fault_seconds / count
            for index in range(count):
                seconds = round(dice.uniform(*rate.lasts), 2)
                # Rounded down, with a margin, so that it ends inside its slot however it rounds.
                start = index * slot + dice.uniform(0.0, max(0.0, slot - seconds - 0.1))
                at = math.floor(start * 100) / 100
                episodes.append(Episode(at, kind, seconds, target, _settings(kind, dice)))
    episodes.sort(key=lambda episode: (episode.at, episode.kind))
    return Plan(seed, sketches, SEND_EVERY, fault_seconds, tuple(episodes))


def _settings(kind: EpisodeKind, dice: random.Random) -> dict[str, Any]:
    """The simulator's settings during an episode of `kind` (none for kills and restarts)."""
    if kind == "novita_errors":
        return {"http_error_probability": round(dice.uniform(0.4, 0.8), 2)}
    if kind == "slow_media":
        return {
            "media_delay": round(dice.uniform(0.5, 3.0), 2),
            "media_bytes_per_second": dice.choice([50_000, 100_000, 200_000]),
        }
    if kind == "short_links":
        return {"media_ttl": dice.randint(2, 5)}
    if kind == "balance_out":
        return {"balance_exhausted": True}
    return {}


def after(kind: EpisodeKind) -> dict[str, Any]:
    """The simulator's settings once an episode of `kind` is over: the fault phase's own."""
    fields = {
        "novita_errors": ["http_error_probability"],
        "slow_media": ["media_delay", "media_bytes_per_second"],
        "short_links": ["media_ttl"],
        "balance_out": ["balance_exhausted"],
    }.get(kind, [])
    return {name: {**CALM, **STEADY}[name] for name in fields}
