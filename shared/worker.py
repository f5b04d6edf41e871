"""The steps: the slow work of a sketch, each run from Pub/Sub (`shared/steps.py`,
`shared/topology.py`).

- `check`: ask Novita's task-result about the sketch's task and apply what it says (`shared/results.py`).
  A webhook delivery only names a task; this is where it is confirmed. The sweep runs the same code.
- `seedream`: make the still with Seedream 3.0's synchronous endpoint.
- `chain`: download the still, keep a copy in the bucket, and start Kling on it.
- `copy`: stream the finished video from Novita into the bucket; then the sketch is complete.

A step that needs the sketch's slow work takes the step lease first, in a conditional write, so
that however many times Pub/Sub delivers it, and however many deliveries race, the work runs once.
Only a lease that ran out (its step was killed, or Firestore failed just after Kling accepted) lets
a later step take the work up again: that is the one way a sketch can cause a second paid request.
A request whose answer was lost is never sent again; the sketch waits for its result (a webhook
naming it) and fails with the reason if none comes.

A fault that may pass raises `RetryLater` (or one of the `TRANSIENT` faults); the push is answered
5xx and Pub/Sub delivers the step again. Once the step ends in the dead letters, the sketch fails
with the reason (`dead_letter`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from shared import logs
from shared.config import Settings
from shared.deadline import Deadline, DeadlinePassed
from shared.google_api import ApiError, Unavailable
from shared.media import (
    MediaExpired,
    MediaRejected,
    MediaUnavailable,
    Resolver,
    Still,
    default_resolver,
    fetch_media,
    inspect_still,
    stream_media,
)
from shared.novita_client import (
    NovitaClient,
    NovitaError,
    NovitaOutcomeUnknown,
    NovitaRejected,
    NovitaUnavailable,
)
from shared.novita_models import TaskResult, expires_at
from shared.results import (
    NO_LEASE,
    OUTCOME_KNOWN,
    MalformedResult,
    Outcome,
    Results,
    fail_changes,
    progress_at,
    stage_of,
)
from shared.sketch import Sketch, Stage, Status, StepKind, utcnow
from shared.sketch_store import Changes, SketchStore, StoreUnavailable
from shared.spending import BalanceBreaker, BalanceExhausted
from shared.steps import QueueUnavailable, Step, StepQueue
from shared.storage_rest import TOKEN_METADATA, ObjectExists, Storage
from shared.tokens import webhook_url
from shared.topology import STEP_DEADLINE_SECONDS

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Connect, write and read timeouts of a Kling request: the lease must still run this long when it is sent.
KLING_REQUEST_BUDGET = timedelta(seconds=95)
SEEDREAM_REQUEST_BUDGET = timedelta(seconds=110)
MAX_VIDEO_BYTES = 512 * 1024 * 1024


class RetryLater(Exception):
    """A fault that may pass: the step is answered 5xx so that Pub/Sub delivers it again."""


# Faults that may pass, whichever layer raised them; each is answered as RetryLater is.
TRANSIENT = (
    RetryLater,
    StoreUnavailable,
    QueueUnavailable,
    DeadlinePassed,
    NovitaUnavailable,
    BalanceExhausted,
    MediaUnavailable,
    Unavailable,
)


@dataclass(frozen=True)
class Hint:
    """What a webhook delivery said: the task it reported, for the stage its URL was registered for.
    `result` is the delivery's own result, used only in Novita's webhook test mode."""

    task_id: str
    stage: Stage
    result: dict[str, Any] | None = None


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: SketchStore,
        results: Results,
        novita: NovitaClient,
        queue: StepQueue,
        breaker: BalanceBreaker,
        media_http: httpx.Client,
        storage: Storage | None,
        *,
        resolve: Resolver = default_resolver,
    ) -> None:
        self._settings = settings
        self._store = store
        self._results = results
        self._novita = novita
        self._queue = queue
        self._breaker = breaker
        self._media_http = media_http
        self._storage = storage
        self._resolve = resolve

    # --------------------------------------------------------------------------------- entry

    def run(self, step: Step) -> Outcome:
        """Do `step` within its deadline; raises one of TRANSIENT for a fault that may pass."""
        logs.bind_sketch(step.sketch_id)
        deadline = Deadline.after(STEP_DEADLINE_SECONDS)
        sketch = self._store.get(step.sketch_id)
        if sketch is None:
            log.warning("step for an unknown sketch ignored", extra={"step": step.kind.value})
            return Outcome.IGNORED
        if step.kind is StepKind.CHECK:
            hint = Hint(step.task_id, step.stage, step.result) if step.task_id and step.stage else None
            return self.examine(sketch, deadline, hint)
        if sketch.next_step() is not step.kind:
            return Outcome.DUPLICATE  # the sketch has moved on since the step was published
        handlers: dict[StepKind, Callable[[Sketch, Deadline], Outcome]] = {
            StepKind.SEEDREAM: self._seedream,
            StepKind.CHAIN: self._chain,
            StepKind.COPY: self._copy,
        }
        return handlers[step.kind](sketch, deadline)

    def note_failure(self, step: Step, error: Exception) -> None:
        """Keep why the step did not finish, for the reason the sketch fails with if it never does."""
        message = f"{step.kind.value}: {error}"[:500]
        # If Firestore is what failed, there is nothing to keep the reason in.
        with contextlib.suppress(StoreUnavailable):
            self._store.mutate(
                step.sketch_id, lambda s: None if s.status.is_final else {"last_step_error": message}
            )

    def dead_letter(self, step: Step, attempts: int | None) -> Outcome:
        """A step Pub/Sub gave up on: the sketch fails with the reason, if it still waits on it."""
        logs.bind_sketch(step.sketch_id)
        tries = f"{attempts} times" if attempts else "every time Pub/Sub tried"

        def fail(s: Sketch) -> Changes | None:
            if s.status.is_final or s.next_step() is not step.kind:
                return None
            last = s.last_step_error or "no reason was recorded"
            return fail_changes(f"the {step.kind.value} step failed {tries}; the last time: {last}")

        sketch, changed = self._store.mutate(step.sketch_id, fail)
        if changed:
            log.error("a step ended in the dead letters; the sketch failed", extra={"step": step.kind.value})
        return Outcome.APPLIED if changed else Outcome.IGNORED if sketch is None else Outcome.DUPLICATE

    # --------------------------------------------------------------------------------- check

    def examine(self, sketch: Sketch, deadline: Deadline, hint: Hint | None = None) -> Outcome:
        """Look at a sketch that may wait on Novita: ask task-result and apply what it says, give up
        on what waited too long, and hand on any slow work the sketch now needs."""
        now = utcnow()
        if sketch.status.is_final:
            return Outcome.DUPLICATE
        max_age = timedelta(seconds=self._settings.max_sketch_age_seconds)
        if sketch.created_at + max_age <= now:
            reason = (
                f"not finished within {max_age.total_seconds():.0f} s of its creation "
                f"(last status {sketch.status})"
            )
            return self._fail_unless_final(sketch, reason, "gave up on a sketch that did not finish")
        asked = self._task_to_ask(sketch, hint)
        if asked is None:
            if hint is not None:
                log.info(
                    "a result for a task the sketch does not wait on: ignored",
                    extra={"task_id": hint.task_id},
                )
                return Outcome.IGNORED
            if sketch.submission_unknown is not None:
                if not self._unknown_expired(sketch, now):
                    return Outcome.IN_PROGRESS
                return self._fail_unless_final(
                    sketch, self._unknown_reason(sketch), "gave up on an unconfirmed request"
                )
            outcome, latest = Outcome.IN_PROGRESS, sketch
        else:
            task_id, stage = asked
            try:
                result = self._result(task_id, hint, deadline)
            except MalformedResult as exc:
                return self._fail_unless_final(sketch, str(exc), "refused a result for good")
            if result is None:
                return Outcome.IGNORED
            adopted = task_id != sketch.task_of(stage)
            if adopted and not _plausible(result, stage):
                log.warning("a task of another kind was not adopted", extra={"task_id": task_id})
                return Outcome.IGNORED
            try:
                outcome, latest = self._results.apply(sketch, result, stage)
            except MalformedResult as exc:
                return self._fail_unless_final(sketch, str(exc), "refused a result for good")
            if adopted and outcome is Outcome.APPLIED:
                log.warning("adopted a task whose request had no known outcome", extra={"task_id": task_id})
        if latest is not None:
            self._hand_on(latest, now)
        return outcome

    def _task_to_ask(self, sketch: Sketch, hint: Hint | None) -> tuple[str, Stage] | None:
        """Which task to ask Novita about: the one a webhook named, if the sketch waits on it (or on
        an unknown task of that stage); else the task the sketch waits on, if any."""
        if hint is not None:
            stage = stage_of(sketch, hint.task_id, hint.stage)
            waiting = stage == "image" and sketch.status is Status.IMAGE_PENDING
            waiting |= stage == "video" and (
                sketch.status is Status.IMAGE_COMPLETE
                or (sketch.status is Status.VIDEO_PENDING and sketch.novita_video_url is None)
            )
            return (hint.task_id, hint.stage) if stage is not None and waiting else None
        if sketch.next_step() is not StepKind.CHECK:
            return None
        stage: Stage = "image" if sketch.status is Status.IMAGE_PENDING else "video"
        task_id = sketch.task_of(stage)
        return None if task_id is None else (task_id, stage)

    def _result(self, task_id: str, hint: Hint | None, deadline: Deadline) -> TaskResult | None:
        """Novita's word on the task; in webhook test mode, where no real task exists, the delivery's."""
        try:
            if hint is not None and hint.result is not None and self._settings.webhook_test_mode:
                result = TaskResult.model_validate(hint.result)
            else:
                result = self._novita.task_result(task_id, deadline)
        except ValidationError as exc:
            raise MalformedResult(
                f"Novita's result for task {task_id} was refused: {exc.error_count()} value(s) break a bound"
            ) from exc
        except NovitaRejected as exc:
            log.warning("task-result refused to answer: %s", exc.describe(), extra={"task_id": task_id})
            return None
        if result.task.task_id != task_id:
            log.warning("task-result answered for another task", extra={"task_id": task_id})
            return None
        return result

    def _unknown_expired(self, sketch: Sketch, now: datetime) -> bool:
        if sketch.image_form == "sync" and sketch.submission_unknown == "image":
            # Seedream's answer comes with the request or not at all: once its step is gone, it is lost.
            return not sketch.lease_is_live(now)
        since = sketch.submission_unknown_since
        grace = timedelta(seconds=self._settings.unknown_outcome_grace_seconds)
        return since is None or since + grace <= now

    def _unknown_reason(self, sketch: Sketch) -> str:
        if sketch.image_form == "sync" and sketch.submission_unknown == "image":
            return (
                "Seedream's synchronous request did not finish; it was not sent again, so that it is "
                "not paid for twice"
            )
        what = "text-to-image" if sketch.submission_unknown == "image" else "image-to-video"
        grace = self._settings.unknown_outcome_grace_seconds
        return (
            f"Novita did not confirm the {what} request and no result arrived within {grace:.0f} s; "
            "it was not sent again, so that it is not paid for twice"
        )

    def _hand_on(self, sketch: Sketch, now: datetime) -> None:
        """Publish the slow step the sketch needs, unless a step holds it or a request awaits its outcome."""
        kind = sketch.next_step()
        if (
            kind is not None
            and kind.is_slow
            and not sketch.lease_is_live(now)
            and sketch.submission_unknown is None
        ):
            self._queue.publish(Step(kind=kind, sketch_id=sketch.id))

    def _record_paid(self, what: str, write: Callable[[], T], deadline: Deadline) -> T:
        """Write down a result Novita was paid for. While Firestore is away it is tried again, until
        the step's deadline: giving up would mean the result is lost, or paid for again."""
        attempt = 0
        while True:
            try:
                return write()
            except StoreUnavailable as exc:
                attempt += 1
                delay = min(2.0, 0.25 * 2**attempt)
                if deadline.remaining() <= delay:
                    raise RetryLater(f"{what} could not be recorded: {exc}") from exc
                log.warning("%s not recorded yet, trying again: %s", what, exc)
                time.sleep(delay)

    def _fail_unless_final(self, sketch: Sketch, reason: str, what: str) -> Outcome:
        _, changed = self._store.mutate(
            sketch.id, lambda s: None if s.status.is_final else fail_changes(reason), known=sketch
        )
        if changed:
            log.warning("%s: %s", what, reason)
        return Outcome.APPLIED if changed else Outcome.DUPLICATE

    # ------------------------------------------------------------------------------ seedream

    def _seedream(self, sketch: Sketch, deadline: Deadline) -> Outcome:
        def may(s: Sketch) -> bool:
            return (
                s.status is Status.IMAGE_PENDING
                and s.image_form == "sync"
                and s.image_task_id is None
                and s.submission_unknown is None
            )

        now = utcnow()
        # Until Seedream answers, whether the still was paid for is unknown.
        with self._lease(
            sketch, may, {"submission_unknown": "image", "submission_unknown_since": now}
        ) as held:
            if held is None:
                return Outcome.IN_PROGRESS
            sketch, owner = held
            sketch = self._hold(sketch, owner, SEEDREAM_REQUEST_BUDGET)
            self._breaker.check()
            try:
                url = self._novita.seedream(
                    prompt=sketch.prompt,
                    width=sketch.width,
                    height=sketch.height,
                    seed=sketch.seed,
                    deadline=deadline,
                )
            except NovitaRejected as exc:
                if exc.is_balance:
                    self._breaker.open(exc)
                    self._release(sketch, owner, OUTCOME_KNOWN)
                    raise RetryLater(f"Seedream refused for the balance: {exc.describe()}") from exc
                self._finish(sketch, owner, fail_changes(exc.describe()))
                log.warning("Seedream refused the request: %s", exc.describe())
                return Outcome.APPLIED
            except NovitaUnavailable as exc:
                self._release(sketch, owner, OUTCOME_KNOWN)
                raise RetryLater(f"Seedream could not be reached: {exc.describe()}") from exc
            except NovitaOutcomeUnknown as exc:
                self._finish(sketch, owner, fail_changes(self._unknown_reason(sketch)))
                log.warning("Seedream's answer was lost: %s", exc.describe())
                return Outcome.APPLIED
            now = utcnow()
            drawn: Changes = {
                "status": Status.IMAGE_COMPLETE,
                "image_url": url,
                "novita_image_url": url,
                "progress": progress_at("chain"),
                "eta_seconds": None,
                **NO_LEASE,
                **OUTCOME_KNOWN,
                "recovery_due_at": self._results.recovery_due(now, StepKind.CHAIN),
            }
            made = self._record_paid(
                "the still Seedream drew", lambda: self._finish(sketch, owner, drawn), deadline
            )
        log.info("Seedream drew the still", extra={"form": "reference"})
        if made is not None:
            self._hand_on(made, now)
        return Outcome.APPLIED

    # --------------------------------------------------------------------------------- chain

    def _chain(self, sketch: Sketch, deadline: Deadline) -> Outcome:
        def may(s: Sketch) -> bool:
            # A request whose outcome is unknown may have started a paid task: never send it again.
            return (
                s.status is Status.IMAGE_COMPLETE and s.video_task_id is None and s.submission_unknown is None
            )

        with self._lease(sketch, may) as held:
            if held is None:
                return Outcome.IN_PROGRESS
            sketch, owner = held
            fetched = self._fetch_still(sketch, owner, deadline)
            if fetched is None:
                return Outcome.APPLIED
            sketch, still = fetched
            if self._storage is not None and sketch.image_object is None:
                stored = self._store_still(sketch, owner, still, deadline)
                if stored is None:
                    return Outcome.APPLIED
                sketch = stored
            sketch = self._hold(sketch, owner, KLING_REQUEST_BUDGET)
            self._breaker.check()
            assert sketch.novita_image_url is not None
            try:
                video_task_id, form = self._novita.start_image_to_video(
                    still=still,
                    still_url=sketch.novita_image_url,
                    prompt=sketch.video_prompt,
                    negative_prompt=sketch.negative_prompt,
                    duration=sketch.duration,
                    webhook_url=self._webhook_url(sketch.id, "video"),
                    deadline=deadline,
                )
            except NovitaRejected as exc:
                if exc.is_balance:
                    # The chain can wait: its step comes back, with backoff, until the balance does.
                    self._breaker.open(exc)
                    self._release(sketch, owner)
                    raise RetryLater(f"Kling refused for the balance: {exc.describe()}") from exc
                self._finish(sketch, owner, fail_changes(exc.describe()))
                log.warning("Kling refused the still: %s", exc.describe())
                return Outcome.APPLIED
            except NovitaUnavailable as exc:
                self._release(sketch, owner)
                raise RetryLater(f"image-to-video could not be started: {exc.describe()}") from exc
            except NovitaOutcomeUnknown as exc:
                now = utcnow()
                grace = timedelta(seconds=self._settings.unknown_outcome_grace_seconds)
                self._finish(
                    sketch,
                    owner,
                    {
                        **NO_LEASE,
                        "submission_unknown": "video",
                        "submission_unknown_since": now,
                        "recovery_due_at": now + grace,
                    },
                )
                log.warning("image-to-video outcome unknown; it is not sent again: %s", exc.describe())
                return Outcome.IN_PROGRESS

            def record(s: Sketch) -> Changes | None:
                if s.status is not Status.IMAGE_COMPLETE or s.video_task_id is not None:
                    return None  # the video's own result got here first and adopted the task
                return {
                    "status": Status.VIDEO_PENDING,
                    "video_task_id": video_task_id,
                    "progress": max(s.progress, progress_at("video")),
                    **NO_LEASE,
                    "recovery_due_at": self._results.recovery_due(utcnow(), StepKind.CHECK),
                }

            try:
                self._record_paid(
                    f"the image-to-video task {video_task_id}",
                    lambda: self._store.mutate(sketch.id, record, known=sketch),
                    deadline,
                )
            except RetryLater:
                # The lease stays, so no other step asks Kling before this task's result is adopted,
                # unless the lease runs out first.
                log.error("image-to-video task started but not recorded", extra={"task_id": video_task_id})
                raise
        log.info("image-to-video task started", extra={"task_id": video_task_id, "form": form})
        return Outcome.APPLIED

    def _fetch_still(self, sketch: Sketch, owner: str, deadline: Deadline) -> tuple[Sketch, Still] | None:
        """The still, checked; None if it was refused for good (the sketch is then failed)."""

        def fetch(s: Sketch) -> Still:
            assert s.novita_image_url is not None
            return inspect_still(
                fetch_media(
                    s.novita_image_url,
                    policy=self._settings.media_url_policy,
                    client=self._media_http,
                    deadline=deadline,
                    resolve=self._resolve,
                )
            )

        return self._from_novita(sketch, owner, "image", deadline, fetch)

    def _store_still(self, sketch: Sketch, owner: str, still: Still, deadline: Deadline) -> Sketch | None:
        """Keep the bytes just fetched in the bucket; the sketch then shows the copy."""
        name = f"sketches/{sketch.id}/still.{still.extension}"
        token = self._upload(sketch, owner, name, still.data, still.mime, deadline)
        if token is None:
            return None
        assert self._storage is not None and self._settings.media_bucket is not None
        stored = self._finish(
            sketch,
            owner,
            {
                "image_object": name,
                "image_url": self._storage.download_url(self._settings.media_bucket, name, token),
                "image_url_expires_at": None,
            },
        )
        if stored is None:
            raise RetryLater("the step lost its lease while storing the still")
        return stored

    # ---------------------------------------------------------------------------------- copy

    def _copy(self, sketch: Sketch, deadline: Deadline) -> Outcome:
        def may(s: Sketch) -> bool:
            return (
                s.status is Status.VIDEO_PENDING and s.novita_video_url is not None and s.video_object is None
            )

        with self._lease(sketch, may) as held:
            if held is None:
                return Outcome.IN_PROGRESS
            sketch, owner = held
            if self._storage is None or self._settings.media_bucket is None:
                # The bucket was taken out of the configuration after the video was made.
                self._finish(sketch, owner, self._complete(sketch.novita_video_url, None, None))
                return Outcome.APPLIED
            storage, bucket = self._storage, self._settings.media_bucket
            name = f"sketches/{sketch.id}/video.mp4"

            def copy(s: Sketch) -> str | None:
                assert s.novita_video_url is not None
                with stream_media(
                    s.novita_video_url,
                    policy=self._settings.media_url_policy,
                    client=self._media_http,
                    deadline=deadline,
                    max_bytes=MAX_VIDEO_BYTES,
                    resolve=self._resolve,
                ) as chunks:
                    return self._upload(s, owner, name, chunks, "video/mp4", deadline)

            copied = self._from_novita(sketch, owner, "video", deadline, copy)
            if copied is None or copied[1] is None:
                return Outcome.APPLIED
            token = copied[1]
            self._finish(sketch, owner, self._complete(storage.download_url(bucket, name, token), None, name))
        log.info("video stored; sketch complete")
        return Outcome.APPLIED

    def _complete(self, video_url: str | None, expires: datetime | None, name: str | None) -> Changes:
        return {
            "status": Status.COMPLETE,
            "video_url": video_url,
            "video_url_expires_at": expires,
            "video_object": name,
            "progress": 100,
            "eta_seconds": None,
            "completed_at": utcnow(),
            "error_message": None,
            **NO_LEASE,
            "recovery_due_at": None,
        }

    def _renew_link(self, sketch: Sketch, owner: str, stage: Stage, deadline: Deadline) -> Sketch:
        """The sketch with a new Novita link to its still or its video, from task-result."""
        task_id = sketch.task_of(stage)
        what = "still" if stage == "image" else "video"
        if task_id is None:
            # Seedream's synchronous answer has no task to ask again.
            self._finish(sketch, owner, fail_changes(f"the {what}'s link expired before it could be fetched"))
            raise RetryLater(f"the {what}'s link expired and cannot be renewed")
        try:
            result = self._novita.task_result(task_id, deadline)
        except (NovitaError, ValidationError) as exc:
            self._release(sketch, owner)
            raise RetryLater(f"a fresh link to the {what} could not be fetched: {exc}") from exc
        now = utcnow()
        changes: Changes
        if stage == "image" and result.images:
            link, expires = result.images[0].image_url, expires_at(now, result.images[0].image_url_ttl)
            changes = {"novita_image_url": link, "novita_image_url_expires_at": expires}
            if sketch.image_object is None:
                changes |= {"image_url": link, "image_url_expires_at": expires}
        elif stage == "video" and result.videos:
            link, expires = result.videos[0].video_url, expires_at(now, result.videos[0].video_url_ttl)
            changes = {"novita_video_url": link, "novita_video_url_expires_at": expires}
        else:
            self._release(sketch, owner)
            raise RetryLater(f"task-result gave no {what} for a finished task")
        renewed = self._finish(sketch, owner, changes)
        if renewed is None:
            raise RetryLater(f"the step lost its lease while renewing the {what}'s link")
        return renewed

    def _from_novita(
        self, sketch: Sketch, owner: str, stage: Stage, deadline: Deadline, use: Callable[[Sketch], R]
    ) -> tuple[Sketch, R] | None:
        """`use` the sketch's Novita link to its still or video. A medium refused for good fails the
        sketch (None); an expired link is renewed from task-result once; a fault that may pass gives
        the work back for the next delivery of the step."""
        what = "still" if stage == "image" else "video"
        link_expires = (
            sketch.novita_image_url_expires_at if stage == "image" else sketch.novita_video_url_expires_at
        )
        if link_expires is not None and link_expires <= utcnow():
            sketch = self._renew_link(sketch, owner, stage, deadline)
        for attempt in (1, 2):
            try:
                return sketch, use(sketch)
            except MediaRejected as exc:
                self._finish(sketch, owner, fail_changes(f"the {what} was refused: {exc}"))
                log.warning("%s refused: %s", what, exc)
                return None
            except MediaExpired as exc:
                if attempt == 2:
                    self._release(sketch, owner)
                    raise RetryLater(f"the {what}'s link keeps expiring: {exc}") from exc
                sketch = self._renew_link(sketch, owner, stage, deadline)
            except MediaUnavailable as exc:
                self._release(sketch, owner)
                raise RetryLater(f"the {what} could not be downloaded: {exc}") from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _upload(
        self,
        sketch: Sketch,
        owner: str,
        name: str,
        data: bytes | Iterable[bytes],
        content_type: str,
        deadline: Deadline,
    ) -> str | None:
        """Store a new object; its download token. None if the name is taken by something that is
        not this sketch's (the sketch is then failed: nothing is replaced)."""
        assert self._storage is not None and self._settings.media_bucket is not None
        try:
            return self._storage.upload(
                self._settings.media_bucket,
                name,
                data,
                content_type=content_type,
                token=uuid.uuid4().hex,
                metadata={"sketch_id": sketch.id},
                deadline=deadline,
            ).token
        except ObjectExists as exists:
            metadata = exists.existing.get("metadata") or {}
            if metadata.get("sketch_id") == sketch.id and metadata.get(TOKEN_METADATA):
                # An upload of this sketch's whose answer was lost: it is the copy.
                return str(metadata[TOKEN_METADATA]).split(",")[0]
            self._finish(sketch, owner, fail_changes(f"{name} exists in the bucket and is not this sketch's"))
            return None
        except ApiError as exc:
            self._release(sketch, owner)
            raise RetryLater(f"Cloud Storage did not take {name}: {exc}") from exc

    # --------------------------------------------------------------------------------- lease

    @contextmanager
    def _lease(
        self, sketch: Sketch, may: Callable[[Sketch], bool], extra: Changes | None = None
    ) -> Iterator[tuple[Sketch, str] | None]:
        """Take the sketch's step lease if `may` allows it and no live lease is held; yields the
        sketch and the lease's owner, or None when another step holds the work or it is done.
        Any other fault inside gives the lease back."""
        owner = uuid.uuid4().hex
        now = utcnow()
        until = now + timedelta(seconds=self._settings.step_lease_seconds)

        def claim(s: Sketch) -> Changes | None:
            if not may(s) or s.lease_is_live(now):
                return None
            return {
                "step_lease_owner": owner,
                "step_lease_until": until,
                "recovery_due_at": until,
                **(extra or {}),
            }

        claimed, changed = self._store.mutate(sketch.id, claim, known=sketch)
        # A claim whose first answer was lost and retried reads back as somebody else's change.
        if claimed is None or not (changed or claimed.step_lease_owner == owner):
            yield None
            return
        try:
            yield claimed, owner
        except (RetryLater, StoreUnavailable):
            raise  # the lease was dealt with where it was raised, or cannot be written to
        except Exception:
            # The claimed copy, not the one read before: only it shows this step's lease.
            self._release(claimed, owner, OUTCOME_KNOWN if extra else None)
            raise

    def _hold(self, sketch: Sketch, owner: str, budget: timedelta) -> Sketch:
        """Make sure the lease outlasts the paid request about to be sent, or give up the work.

        A slow download may have used up most of the lease; another step must not take the work up
        while this one is still asking Novita.
        """
        now = utcnow()
        if sketch.step_lease_until is not None and sketch.step_lease_until - now >= budget:
            return sketch
        until = now + max(budget, timedelta(seconds=self._settings.step_lease_seconds))

        def renew(s: Sketch) -> Changes | None:
            held = s.step_lease_owner == owner and not s.status.is_final
            return {"step_lease_until": until, "recovery_due_at": until} if held else None

        renewed, held = self._store.mutate(sketch.id, renew, known=sketch)
        if not held or renewed is None:
            raise RetryLater("the step's lease ran out before the paid request could be sent")
        return renewed

    def _finish(self, known: Sketch, owner: str, changes: Changes) -> Sketch | None:
        """Write `changes` if this step still holds the lease; the sketch as written, else None.
        `known` is the step's latest copy: if the document has changed since, it is read again."""

        def decide(s: Sketch) -> Changes | None:
            return changes if s.step_lease_owner == owner and not s.status.is_final else None

        # A copy that does not show this step's lease predates the claim, and deciding on it would
        # leave the lease held: the document is read instead.
        latest = known if known.step_lease_owner == owner else None
        sketch, changed = self._store.mutate(known.id, decide, known=latest)
        return sketch if changed else None

    def _release(self, known: Sketch, owner: str, extra: Changes | None = None) -> None:
        """Give the work back so that the next delivery of the step takes it up at once.

        If Firestore is out of reach, the lease simply runs out instead.
        """
        due = self._results.recovery_due(utcnow(), known.next_step())
        try:
            self._finish(known, owner, {**NO_LEASE, **(extra or {}), "recovery_due_at": due})
        except StoreUnavailable:
            log.warning("the step's lease could not be given back; it will run out")

    def _webhook_url(self, sketch_id: str, stage: Stage) -> str:
        return webhook_url(
            self._settings.webhook_url, self._settings.webhook_secret.get_secret_value(), sketch_id, stage
        )


def _plausible(result: TaskResult, stage: Stage) -> bool:
    """Whether an unrecorded task reported for `stage` could be of that kind (Novita names text to
    image TXT_TO_IMG; its video tasks have other names)."""
    kind = result.task.task_type
    if kind is None:
        return True
    return (kind == "TXT_TO_IMG") == (stage == "image")
