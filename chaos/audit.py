"""The audit of a run: the sketches as Firestore holds them, joined to the simulator's ledger of every
paid call, and the media in the bucket.

A paid call is joined to its sketch by the webhook URL it registered (it names the sketch), else by
its prompt: every sketch's prompt and video prompt are its own (`chaos/traffic.py`), and the ledger
keeps the prompt of each text-to-image, Seedream and Kling call. Its checks:

- `settled`: every sketch is `complete` or `failed` within the bound after the faults stopped;
- `reasons`: every failed sketch says why in words a person can read, and says nothing the ledger
  contradicts (a sketch that says nothing was paid has no paid call);
- `paid once`: each paid step of a sketch is paid once, or once more for each line of its `repaid`
  for that stage whose lost task could not be adopted (the one documented double payment,
  `chaos/repaid.py`); any other paid call (a second one no line explains, or one whose lost task's
  webhook reached the function in time, one that no sketch can be joined to, one of a second sketch
  made for one request) is an undocumented double payment;
- `media`: every complete sketch's still and video are in the bucket under its own names, decode
  (the still with Pillow, every frame of the video with PyAV), and are its own: the id each carries
  (`novita_simulator.media.media_id`) is its `image_task_id` (for a Seedream still, the id of one of
  the Seedream images the ledger shows drawn for its prompt) and its `video_task_id`, and the Kling
  task animated that very still;
- `asked`: every sketch the app asked for was made, and the app was answered that very sketch;
- `no 500`: no answer 500 ("unexpected error") to the app, to Novita or to Pub/Sub.

Beside the checks, a figure: the creates refused for Novita's balance when it had been back for
longer than the breaker's own time (`late_refusals`). The breaker's design allows them (a probe
whose holder died holds creates that ask Novita off for `BREAKER_PROBE`, 10 s), so they are counted,
not failed.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import av
from PIL import Image, UnidentifiedImageError

from chaos.repaid import Repaid, cause
from chaos.settle import FINAL
from chaos.traffic import Ask
from devstack.storage import StorageEmulator
from novita_simulator.media import media_id

STAGES = ("image", "video")
# What the pipeline says when it stopped before paying anything (shared/pipeline/paid.py).
NOTHING_PAID = "nothing was paid"
# A reason that carries a traceback or a Python repr was written for a developer, not for a person.
_REPR = re.compile(r"Traceback|\bobject at 0x|\b[A-Z]\w*(Error|Exception|Timeout)\(")

Document = dict[str, Any]


@dataclass
class Check:
    name: str
    what: str
    cases: list[str] = field(default_factory=list)
    # Sketches the cases are about: their stories go to the run's evidence.
    sketches: set[str] = field(default_factory=set)

    @property
    def passed(self) -> bool:
        return not self.cases

    def fail(self, case: str, sketch_id: str | None = None) -> None:
        self.cases.append(case)
        if sketch_id is not None:
            self.sketches.add(sketch_id)


@dataclass
class Audit:
    sketches: int
    complete: int
    failed: int
    stuck: int
    paid: int
    extra: int
    documented: list[Repaid]
    checks: list[Check]
    # Failed sketches by reason, numbers and ids left out.
    reasons: dict[str, int]
    # For each create refused for the balance once it had been back longer than the breaker's time:
    # how long it had been back (seconds).
    late_refusals: list[float]
    # Each paid call under its sketch and stage (`join`).
    joined: dict[tuple[str, str], list[dict[str, Any]]]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def final_line(self) -> str:
        return (
            f"chaos: {self.sketches} sketches, {self.complete} complete, {self.failed} failed, "
            f"{self.stuck} stuck, {self.paid} paid tasks, {self.extra} paid twice"
        )


def audit(
    documents: Mapping[str, Document],
    ledger: list[dict[str, Any]],
    asked: list[Ask],
    bucket: StorageEmulator,
    unexpected: list[str],
    balance_out: list[tuple[float, float]],
    breaker_seconds: float,
    told: Mapping[str, list[dict[str, Any]]],
) -> Audit:
    joined, strays = join(documents, ledger)
    settled, reasons, asked_check, no_500 = (
        Check("settled", "every sketch complete or failed within the bound"),
        Check("reasons", "every failed sketch says why, readably and truly"),
        Check("asked", "every sketch the app asked for was made, and the app was answered that one"),
        Check("no 500", "no answer 500 to the app, to Novita or to Pub/Sub"),
    )
    for sketch_id, document in documents.items():
        if document["status"] not in FINAL:
            settled.fail(f"{sketch_id} is still {document['status']}", sketch_id)
        elif document["status"] == "failed":
            message = document.get("error_message")
            problem = unreadable(message)
            if problem is None and NOTHING_PAID in (message or "") and joined.get((sketch_id, "image")):
                problem = "it says nothing was paid, but the ledger holds a paid call for it"
            if problem is not None:
                reasons.fail(f"{sketch_id}: {problem}: {document.get('error_message')!r}", sketch_id)
    made = {document["prompt"]: sketch_id for sketch_id, document in documents.items()}
    for ask in asked:
        if ask.prompt not in made:
            asked_check.fail(f"sketch {ask.index} was never made; the app heard {ask.answers[-5:]}")
        elif ask.sketch_id is not None and ask.sketch_id != made[ask.prompt]:
            asked_check.fail(
                f"the app was answered {ask.sketch_id} for the request that made {made[ask.prompt]}"
            )
    for case in unexpected:
        no_500.fail(case, _sketch_named(case, documents))
    paid_once, extra, documented = payments(documents, joined, strays, told)
    media = Check("media", "every complete sketch's still and video in the bucket, whole, and its own")
    for sketch_id, document in documents.items():
        if document["status"] == "complete":
            for problem in media_problems(bucket, document, joined):
                media.fail(f"{sketch_id}: {problem}", sketch_id)
    statuses = [document["status"] for document in documents.values()]
    return Audit(
        sketches=len(documents),
        complete=statuses.count("complete"),
        failed=statuses.count("failed"),
        stuck=sum(status not in FINAL for status in statuses),
        paid=len(ledger),
        extra=extra,
        documented=documented,
        checks=[settled, reasons, paid_once, media, asked_check, no_500],
        reasons=reason_counts(document.get("error_message") for document in documents.values()),
        late_refusals=late_refusals(asked, balance_out, breaker_seconds),
        joined=joined,
    )


def join(
    documents: Mapping[str, Document], ledger: Iterable[dict[str, Any]]
) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[dict[str, Any]]]:
    """Each paid call under its sketch and stage; the calls no sketch can be joined to."""
    by_prompt: dict[tuple[str, str], list[str]] = defaultdict(list)
    for sketch_id, document in documents.items():
        by_prompt["image", document["prompt"]].append(sketch_id)
        by_prompt["video", document["video_prompt"]].append(sketch_id)
    joined: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    strays = []
    for call in ledger:
        stage = "video" if call["endpoint"] == "kling" else "image"
        named = call.get("sketch")
        found = by_prompt.get((stage, call["prompt"]), [])
        # The webhook URL names the sketch; a call without one (Seedream, Kling's reference form) is
        # the sketch's whose prompt it carries (if a request made two, `payments` counts the second).
        sketch_id = named if named in documents else (found[0] if found else None)
        if sketch_id is None:
            strays.append(call)
        else:
            joined[sketch_id, stage].append(call)
    return joined, strays


def payments(
    documents: Mapping[str, Document],
    joined: Mapping[tuple[str, str], list[dict[str, Any]]],
    strays: list[dict[str, Any]],
    told: Mapping[str, list[dict[str, Any]]],
) -> tuple[Check, int, list[Repaid]]:
    """The `paid once` check, the number of undocumented extra paid calls, and the documented ones;
    `told`: each sketch's log lines, which say whether a lost task could have been adopted."""
    check = Check("paid once", "each paid step once, or once more per line of the sketch's `repaid`")
    extra = 0
    documented: list[Repaid] = []
    for sketch_id, document in documents.items():
        for stage in STAGES:
            calls = joined.get((sketch_id, stage), [])
            wrong = [
                c for c in calls if c["prompt"] != document["prompt" if stage == "image" else "video_prompt"]
            ]
            for call in wrong:
                check.fail(
                    f"{sketch_id}: paid {call['endpoint']} task {call['task_id']} carries another prompt",
                    sketch_id,
                )
            lines = [line for line in document.get("repaid") or [] if line.startswith(f"{stage}:")]
            beyond = max(0, len(calls) - 1)
            explained = min(beyond, len(lines))
            # Each line sent the stage's request again after the one before it went unanswered.
            for line, lost, again in zip(
                lines[:explained], calls[:explained], calls[1 : explained + 1], strict=True
            ):
                repaid = Repaid(sketch_id, stage, line, lost, again["time"])
                why = cause(repaid, told.get(sketch_id, []))
                if why.adoptable_at is None:
                    documented.append(dataclasses.replace(repaid, cause=why.text))
                else:
                    extra += 1
                    check.fail(
                        f"{sketch_id}: {stage} paid again for {lost['task_id']}: {why.text}", sketch_id
                    )
            if beyond > explained:
                extra += beyond - explained
                tasks = ", ".join(f"{c['endpoint']} {c['task_id']}" for c in calls)
                check.fail(
                    f"{sketch_id}: {stage} paid {len(calls)} times ({tasks}), {len(lines)} repaid line(s)",
                    sketch_id,
                )
    for call in strays:
        extra += 1
        check.fail(
            f"paid {call['endpoint']} task {call['task_id']} joins no sketch (sketch {call.get('sketch')}, "
            f"prompt {call['prompt'][:60]!r})",
            call.get("sketch"),
        )
    firsts: dict[str, str] = {}
    for sketch_id, document in sorted(documents.items(), key=lambda item: item[1]["created_at"]):
        first = firsts.setdefault(document["prompt"], sketch_id)
        if first != sketch_id:
            calls = len(joined.get((sketch_id, "image"), [])) + len(joined.get((sketch_id, "video"), []))
            extra += calls
            check.fail(
                f"{sketch_id} is a second sketch for the request of {first} ({calls} paid calls)", sketch_id
            )
    return check, extra, documented


def media_problems(
    bucket: StorageEmulator,
    document: Document,
    joined: Mapping[tuple[str, str], list[dict[str, Any]]],
) -> list[str]:
    sketch_id = document["id"]
    still_name, video_name = document.get("image_object"), document.get("video_object")
    problems = []
    if still_name not in (f"sketches/{sketch_id}/still.jpg", f"sketches/{sketch_id}/still.png"):
        problems.append(f"its still is kept as {still_name!r}, not under its own name")
    if video_name != f"sketches/{sketch_id}/video.mp4":
        problems.append(f"its video is kept as {video_name!r}, not under its own name")
    if problems:
        return problems
    still, video = bucket.read(still_name), bucket.read(video_name)
    if still is None or video is None:
        return [
            f"{name} is not in the bucket"
            for name, data in ((still_name, still), (video_name, video))
            if data is None
        ]
    problems += still_problems(still) + video_problems(video)
    still_id, video_id = media_id(still), media_id(video)
    images = joined.get((sketch_id, "image"), [])
    if document.get("image_task_id"):
        owned = {document["image_task_id"]}
    else:
        owned = {call["task_id"] for call in images if call["endpoint"] == "seedream" and call["answered"]}
    if still_id not in owned:
        problems.append(
            f"its still carries the id {still_id}, not one of its own ({', '.join(sorted(owned))})"
        )
    if video_id != document.get("video_task_id"):
        problems.append(
            f"its video carries the id {video_id}, not its video_task_id {document.get('video_task_id')}"
        )
    animated = [c for c in joined.get((sketch_id, "video"), []) if c["task_id"] == video_id]
    if animated and animated[0]["still_media_id"] != still_id:
        problems.append(
            f"its Kling task animated the still {animated[0]['still_media_id']}, not its own {still_id}"
        )
    return problems


def still_problems(data: bytes) -> list[str]:
    try:
        with Image.open(io.BytesIO(data)) as still:
            still.load()
    except (UnidentifiedImageError, OSError) as exc:
        return [f"its still does not decode: {exc}"]
    return []


def video_problems(data: bytes) -> list[str]:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, ValueError) as exc:
        return [f"its video does not decode: {exc}"]
    return [] if frames else ["its video has no frame"]


def late_refusals(asked: list[Ask], balance_out: list[tuple[float, float]], breaker: float) -> list[float]:
    """How long the balance had been back at each create refused for it (`503 novita_balance`)
    later than the breaker's `breaker` seconds (and one more) after a balance episode ended. Times
    are seconds into the run, as the app and the schedule count them."""
    late = []
    for at, answer in (pair for ask in asked for pair in ask.answers):
        if not answer.endswith("novita_balance"):
            continue
        ended = max((end for began, end in balance_out if began <= at), default=0.0)
        if at > ended + breaker + 1.0:
            late.append(round(at - ended, 1))
    return sorted(late)


def unreadable(message: str | None) -> str | None:
    """Why a failed sketch's reason is not one a person can read; None when it is."""
    if not message or len(message.strip()) < 12:
        return "no reason, or too short to be one"
    if "\n" in message.strip() or _REPR.search(message):
        return "it carries a traceback or a Python repr"
    return None


def reason_counts(messages: Iterable[str | None]) -> dict[str, int]:
    """How many sketches failed for each reason, with the ids, times and numbers in it left out."""
    counts: dict[str, int] = defaultdict(int)
    for message in messages:
        if message:
            shape = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}", "<id>", message)
            shape = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "<time>", shape)
            counts[re.sub(r"\d+(\.\d+)?", "<n>", shape)] += 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _sketch_named(case: str, documents: Mapping[str, Document]) -> str | None:
    match = re.search(r"[0-9a-f]{32}", case)
    return match.group(0) if match and match.group(0) in documents else None
