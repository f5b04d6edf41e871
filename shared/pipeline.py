"""The sketch pipeline: start a sketch, apply Novita's task results, chain the still into Kling.

Every state change is decided by a pure function of the sketch as it is in Firestore, and written
through `SketchStore.mutate`, so that the same result applied by any number of concurrent
deliveries, polls or sweeps (`shared/recovery.py`) changes the sketch once.

The image-to-video chain (download the still, send it to Kling) is claimed by a lease written with
the move to `image_complete`. A duplicate delivery that finds a live lease answers at once and
sends nothing. Only when the lease has expired, because the delivery holding it stopped, may a later
delivery, poll or sweep take the chain up again; that is the one way a sketch can ever cause a
second Kling request. A request whose answer was lost (sent, but no reply) is never sent again:
its own webhook, which names the sketch, is adopted when it comes, and the sketch fails with a
clear reason if nothing comes within the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from enum import StrEnum

import httpx

from shared import logs
from shared.config import Settings
from shared.media import (
    MediaExpired,
    MediaRejected,
    MediaUnavailable,
    Resolver,
    Still,
    default_resolver,
    fetch_media,
    inspect_still,
)
from shared.novita_client import (
    NovitaClient,
    NovitaError,
    NovitaOutcomeUnknown,
    NovitaRejected,
    NovitaUnavailable,
)
from shared.novita_models import TaskResult, expires_at
from shared.sketch import CreateSketchRequest, Sketch, Status, new_sketch_id, utcnow
from shared.sketch_store import Changes, SketchStore, StoreUnavailable
from shared.webhook_tokens import Stage, webhook_url

log = logging.getLogger(__name__)

# Connect, write and read timeouts of a Kling request: the lease must still run this long when it is sent.
KLING_REQUEST_BUDGET = timedelta(seconds=95)
IMAGE_FAILED_DEFAULT = "Novita could not make the image (text-to-image task failed)"
VIDEO_FAILED_DEFAULT = "Novita could not make the video (image-to-video task failed)"


class Outcome(StrEnum):
    APPLIED = "applied"  # the result changed the sketch
    DUPLICATE = "duplicate"  # this result was applied before
    IGNORED = "ignored"  # not the sketch's task, not finished, or no such sketch
    IN_PROGRESS = "in_progress"  # another delivery holds the chain, or a submission awaits its outcome


class RetryLater(Exception):
    """A fault that may pass: the caller should answer 5xx so that the work is tried again."""


class StartFailed(Exception):
    """Novita refused or could not be reached to start the sketch's image; the sketch is failed."""

    def __init__(self, sketch: Sketch, cause: NovitaError) -> None:
        super().__init__(cause.describe())
        self.sketch = sketch
        self.cause = cause


class TooManySketches(Exception):
    """The user already has as many sketches in progress as they may."""


class MalformedResult(Exception):
    """A finished task result without the output it should carry."""


# Parts of a change: the chain's lease given back, and a submission's outcome no longer unknown.
NO_LEASE: Changes = {"chain_lease_owner": None, "chain_lease_until": None}
OUTCOME_KNOWN: Changes = {"submission_unknown": None, "submission_unknown_since": None}


def fail_changes(message: str) -> Changes:
    """The change that fails a sketch with `message`, whatever it was waiting on."""
    return {
        "status": Status.FAILED,
        "error_message": message[:2000],
        **NO_LEASE,
        **OUTCOME_KNOWN,
        "recovery_due_at": None,
    }


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: SketchStore,
        novita: NovitaClient,
        media_http: httpx.Client,
        *,
        resolve: Resolver = default_resolver,
    ) -> None:
        self._settings = settings
        self._store = store
        self._novita = novita
        self._media_http = media_http
        self._resolve = resolve

    # ----------------------------------------------------------------------------------- create

    def create(self, request: CreateSketchRequest, user_id: str | None = None) -> Sketch:
        """Record the sketch, then start its text-to-image task.

        The sketch is written first, so no paid task can point at a sketch that does not exist.
        Raises TooManySketches when the user has no place left for another sketch in progress, and
        StartFailed, with the failed sketch, when Novita refuses or cannot be reached.
        """
        now = utcnow()
        sketch = Sketch.new(new_sketch_id(), request, now, user_id, self.recovery_due(now))
        logs.bind_sketch(sketch.id)
        limit = self._settings.max_sketches_in_progress
        if user_id is not None and not self._store.claim_slot(user_id, sketch.id, limit):
            raise TooManySketches(f"at most {limit} sketches may be in progress at once")
        sketch = self._store.create(sketch)
        log.info("sketch created", extra={"status": sketch.status.value})
        return self._submit_image(sketch)

    def _submit_image(self, sketch: Sketch) -> Sketch:
        try:
            task_id = self._novita.start_text_to_image(
                prompt=sketch.prompt,
                negative_prompt=sketch.negative_prompt,
                width=sketch.width,
                height=sketch.height,
                seed=sketch.seed,
                webhook_url=self._webhook_url(sketch.id, "image"),
            )
        except (NovitaRejected, NovitaUnavailable) as exc:
            raise StartFailed(self._fail_unanswered(sketch.id, exc) or sketch, exc) from exc
        except NovitaOutcomeUnknown as exc:
            log.warning("text-to-image outcome unknown: %s", exc.describe())
            return sketch
        started = {"image_task_id": task_id, **OUTCOME_KNOWN}

        def record(s: Sketch) -> Changes | None:
            if s.image_task_id is not None or s.status is not Status.IMAGE_PENDING:
                return None  # an early webhook adopted the task id already
            return started

        try:
            self._store.mutate(sketch.id, record, known=sketch)
        except StoreUnavailable:
            # The paid task runs: its webhook names the sketch and will be adopted.
            log.warning(
                "text-to-image task started but not recorded",
                extra={"task_id": task_id},
            )
        else:
            log.info("text-to-image task started", extra={"task_id": task_id})
        # The sketch as it was when its task started, even if a quick webhook has moved it on since.
        return sketch.model_copy(update=started)

    def _fail_unanswered(self, sketch_id: str, exc: NovitaError) -> Sketch | None:
        reason = exc.describe()

        def fail(s: Sketch) -> Changes | None:
            unanswered = s.status is Status.IMAGE_PENDING and s.image_task_id is None
            return fail_changes(reason) if unanswered else None

        return self._store.mutate(sketch_id, fail)[0]

    # ------------------------------------------------------------------------------------ apply

    def apply(self, sketch_id: str, result: TaskResult, stage_hint: Stage | None) -> Outcome:
        """Apply a task result to the sketch it was registered for (webhook and recovery alike)."""
        logs.bind_sketch(sketch_id)
        task_id = result.task.task_id
        extra = {"task_id": task_id, "task_status": result.task.status}
        if not result.is_final:
            log.info("task not finished; nothing to apply", extra=extra)
            return Outcome.IGNORED
        sketch = self._store.get(sketch_id)
        if sketch is None:
            log.warning("result for an unknown sketch ignored", extra=extra)
            return Outcome.IGNORED
        stage = _stage_of(sketch, task_id, stage_hint)
        if stage is None:
            log.info("result for a task that is not the sketch's ignored", extra=extra)
            return Outcome.IGNORED
        if stage == "image":
            return self._apply_image(sketch, result)
        return self._apply_video(sketch, result)

    def _apply_image(self, known: Sketch, result: TaskResult) -> Outcome:
        sketch_id = known.id
        task_id = result.task.task_id
        if result.failed:
            reason = result.task.reason or IMAGE_FAILED_DEFAULT

            def fail(s: Sketch) -> Changes | None:
                if s.status is Status.IMAGE_PENDING and s.image_task_id in (None, task_id):
                    return {**fail_changes(reason), "image_task_id": task_id}
                return None

            return self._applied(*self._store.mutate(sketch_id, fail, known=known))
        if not result.images:
            raise MalformedResult(f"image task {task_id} succeeded without an image")
        image = result.images[0]
        owner = uuid.uuid4().hex
        now = utcnow()
        lease_until = now + timedelta(seconds=self._settings.chain_lease_seconds)

        def claim(s: Sketch) -> Changes | None:
            if not self.may_chain(s, task_id, now):
                return None
            return {
                "status": Status.IMAGE_COMPLETE,
                "image_task_id": task_id,
                "image_url": image.image_url,
                "image_url_expires_at": expires_at(now, image.image_url_ttl),
                "chain_lease_owner": owner,
                "chain_lease_until": lease_until,
                **OUTCOME_KNOWN,
                "recovery_due_at": lease_until,
            }

        sketch, claimed = self._store.mutate(sketch_id, claim, known=known)
        if sketch is None:
            return Outcome.IGNORED
        # A claim whose first answer was lost and retried reads back as somebody else's change.
        claimed = claimed or sketch.chain_lease_owner == owner
        if not claimed:
            waiting = sketch.status is Status.IMAGE_COMPLETE and sketch.video_task_id is None
            return Outcome.IN_PROGRESS if waiting else Outcome.DUPLICATE
        log.info(
            "image ready; chain claimed",
            extra={"task_id": task_id},
        )
        self._chain(sketch, owner)
        return Outcome.APPLIED

    def may_chain(self, s: Sketch, task_id: str, now: datetime) -> bool:
        if s.status is Status.IMAGE_PENDING:
            return s.image_task_id in (None, task_id)
        if s.status is not Status.IMAGE_COMPLETE or s.image_task_id != task_id or s.video_task_id:
            return False
        # A request whose outcome is unknown may have started a paid task: never send it again.
        return not s.lease_is_live(now) and s.submission_unknown is None

    def _chain(self, sketch: Sketch, owner: str) -> None:
        """Download the still and start Kling on it, holding the lease `owner`."""
        still = self._fetch_still(sketch, owner)
        if still is None:
            return
        sketch = self._hold_lease_for_kling(sketch, owner)
        try:
            video_task_id = self._novita.start_image_to_video(
                image=still.data,
                image_filename=still.filename,
                image_mime=still.mime,
                prompt=sketch.video_prompt,
                negative_prompt=sketch.negative_prompt,
                duration=sketch.duration,
                webhook_url=self._webhook_url(sketch.id, "video"),
            )
        except NovitaRejected as exc:
            self._finish_chain(sketch.id, owner, fail_changes(exc.describe()))
            log.warning("Kling refused the still: %s", exc.describe())
            return
        except NovitaUnavailable as exc:
            self._release(sketch.id, owner)
            raise RetryLater(f"image-to-video could not be started: {exc.describe()}") from exc
        except NovitaOutcomeUnknown as exc:
            now = utcnow()
            self._finish_chain(
                sketch.id,
                owner,
                {
                    **NO_LEASE,
                    "submission_unknown": "video",
                    "submission_unknown_since": now,
                    "recovery_due_at": now + timedelta(seconds=self._settings.unknown_outcome_grace_seconds),
                },
            )
            log.warning("image-to-video outcome unknown: %s", exc.describe())
            # 5xx, as for any timeout: the next delivery finds the unknown outcome and sends nothing.
            raise RetryLater(f"no answer from Kling; waiting for its webhook: {exc.describe()}") from exc

        def record(s: Sketch) -> Changes | None:
            if s.status is not Status.IMAGE_COMPLETE or s.video_task_id is not None:
                return None  # the video's own webhook got here first and adopted the task
            return {
                "status": Status.VIDEO_PENDING,
                "video_task_id": video_task_id,
                **NO_LEASE,
                "recovery_due_at": self.recovery_due(utcnow()),
            }

        try:
            self._store.mutate(sketch.id, record, known=sketch)
        except StoreUnavailable as exc:
            # The lease stays, so no other delivery asks Kling before this task's own webhook
            # arrives and is adopted, unless the lease runs out first.
            log.error(
                "image-to-video task started but not recorded",
                extra={"task_id": video_task_id},
            )
            raise RetryLater(f"the image-to-video task {video_task_id} could not be recorded") from exc
        log.info(
            "image-to-video task started",
            extra={"task_id": video_task_id},
        )

    def _hold_lease_for_kling(self, sketch: Sketch, owner: str) -> Sketch:
        """Make sure the lease outlasts the Kling request about to be sent, or give up the chain.

        A slow download may have used up most of the lease; another delivery must not take the
        chain up while this one is still asking Kling.
        """
        now = utcnow()
        if sketch.chain_lease_until is not None and sketch.chain_lease_until - now >= KLING_REQUEST_BUDGET:
            return sketch
        lease_until = now + timedelta(seconds=self._settings.chain_lease_seconds)

        def renew(s: Sketch) -> Changes | None:
            held = s.status is Status.IMAGE_COMPLETE and s.chain_lease_owner == owner
            return {"chain_lease_until": lease_until, "recovery_due_at": lease_until} if held else None

        renewed, held = self._store.mutate(sketch.id, renew, known=sketch)
        if not held or renewed is None:
            raise RetryLater("the chain's lease ran out while the still was downloaded")
        return renewed

    def _fetch_still(self, sketch: Sketch, owner: str) -> Still | None:
        url = sketch.image_url
        assert url is not None and sketch.image_task_id is not None
        if sketch.image_url_expires_at is not None and sketch.image_url_expires_at <= utcnow():
            url = self._fresh_image_url(sketch, owner)
        for attempt in (1, 2):
            try:
                data = fetch_media(
                    url,
                    policy=self._settings.media_url_policy,
                    client=self._media_http,
                    resolve=self._resolve,
                )
                return inspect_still(data)
            except MediaRejected as exc:
                self._finish_chain(sketch.id, owner, fail_changes(f"the still was refused: {exc}"))
                log.warning("still refused: %s", exc)
                return None
            except MediaExpired as exc:
                if attempt == 2:
                    self._release(sketch.id, owner)
                    raise RetryLater(f"the still's URL keeps expiring: {exc}") from exc
                url = self._fresh_image_url(sketch, owner)
            except MediaUnavailable as exc:
                self._release(sketch.id, owner)
                raise RetryLater(f"the still could not be downloaded: {exc}") from exc
        raise AssertionError("unreachable")

    def _fresh_image_url(self, sketch: Sketch, owner: str) -> str:
        """A new presigned URL for the still, from task-result."""
        assert sketch.image_task_id is not None
        try:
            result = self._novita.task_result(sketch.image_task_id)
        except NovitaError as exc:
            self._release(sketch.id, owner)
            raise RetryLater(f"a fresh URL for the still could not be fetched: {exc.describe()}") from exc
        if not result.images:
            self._release(sketch.id, owner)
            raise RetryLater("task-result returned no image for a finished image task")
        image = result.images[0]
        now = utcnow()
        self._finish_chain(
            sketch.id,
            owner,
            {"image_url": image.image_url, "image_url_expires_at": expires_at(now, image.image_url_ttl)},
        )
        return image.image_url

    def _finish_chain(self, sketch_id: str, owner: str, changes: Changes) -> None:
        """Write `changes` if this delivery still holds the chain, else leave the sketch alone."""

        def decide(s: Sketch) -> Changes | None:
            held = s.status is Status.IMAGE_COMPLETE and s.chain_lease_owner == owner
            return changes if held else None

        self._store.mutate(sketch_id, decide)

    def _release(self, sketch_id: str, owner: str) -> None:
        """Give the chain back so that the next delivery takes it up at once.

        If Firestore is out of reach, the lease simply runs out instead.
        """
        with contextlib.suppress(StoreUnavailable):
            self._finish_chain(
                sketch_id,
                owner,
                {**NO_LEASE, "recovery_due_at": self.recovery_due(utcnow())},
            )

    def _apply_video(self, known: Sketch, result: TaskResult) -> Outcome:
        sketch_id = known.id
        task_id = result.task.task_id
        now = utcnow()
        if result.failed:
            changes = {**fail_changes(result.task.reason or VIDEO_FAILED_DEFAULT), "video_task_id": task_id}
        else:
            if not result.videos:
                raise MalformedResult(f"video task {task_id} succeeded without a video")
            video = result.videos[0]
            changes = {
                "status": Status.COMPLETE,
                "video_task_id": task_id,
                "video_url": video.video_url,
                "video_url_expires_at": expires_at(now, video.video_url_ttl),
                "completed_at": now,
                "error_message": None,
                **NO_LEASE,
                **OUTCOME_KNOWN,
                "recovery_due_at": None,
            }

        def decide(s: Sketch) -> Changes | None:
            waiting = (s.status is Status.VIDEO_PENDING and s.video_task_id == task_id) or (
                s.status is Status.IMAGE_COMPLETE and s.video_task_id is None
            )
            return changes if waiting else None

        return self._applied(*self._store.mutate(sketch_id, decide, known=known))

    # ---------------------------------------------------------------------------------- helpers

    def _webhook_url(self, sketch_id: str, stage: Stage) -> str:
        return webhook_url(
            self._settings.webhook_url, self._settings.webhook_secret.get_secret_value(), sketch_id, stage
        )

    def recovery_due(self, now: datetime) -> datetime:
        """When recovery may next ask Novita about a sketch that was just changed at `now`."""
        return now + timedelta(seconds=self._settings.recovery_interval_seconds)

    @staticmethod
    def _applied(sketch: Sketch | None, changed: bool) -> Outcome:
        if sketch is None:
            return Outcome.IGNORED
        return Outcome.APPLIED if changed else Outcome.DUPLICATE


def _stage_of(sketch: Sketch, task_id: str, hint: Stage | None) -> Stage | None:
    """Which of the sketch's tasks a result belongs to, or None for a stale or foreign task.

    A task id the sketch has not recorded yet is adopted only for the stage the webhook URL was
    registered for, and only while that stage's submission has no recorded id (its answer is
    still on the way, or was lost).
    """
    if task_id == sketch.image_task_id:
        return "image"
    if task_id == sketch.video_task_id:
        return "video"
    if hint == "image" and sketch.status is Status.IMAGE_PENDING and sketch.image_task_id is None:
        return "image"
    if hint == "video" and sketch.status is Status.IMAGE_COMPLETE and sketch.video_task_id is None:
        return "video"
    return None
