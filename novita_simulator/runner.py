"""Accepts tasks and runs each in the background: queued, processing, finished, then the webhook."""

import json
import threading
import time
import uuid
from collections.abc import Callable

import av

from novita_simulator.background import BackgroundThreads
from novita_simulator.config import TaskKind
from novita_simulator.media import MediaAsset, make_still, make_video, media_id, strip_media_id, with_media_id
from novita_simulator.payloads import result_entries, webhook_body
from novita_simulator.state import SimulatorState
from novita_simulator.task import SUCCEED, Task
from novita_simulator.validation import KlingRequest, Txt2ImgBody, Webhook
from novita_simulator.webhooks import WebhookDispatcher

FAULT_REASON = "simulated failure: content policy"
TEST_MODE_REASON = "test mode: TASK_STATUS_FAILED requested"
# Share of a task's delay spent queued before it turns to processing.
QUEUED_SHARE = 0.2

# Makes a task's media, each carrying the task's id.
Producer = Callable[[Task], list[MediaAsset]]


class TaskRunner:
    def __init__(
        self,
        state: SimulatorState,
        dispatcher: WebhookDispatcher,
        threads: BackgroundThreads,
        stopping: threading.Event,
        base_url: str,
    ) -> None:
        self._state = state
        self._dispatcher = dispatcher
        self._threads = threads
        self._stopping = stopping
        self._base_url = base_url

    def accept_txt2img(self, body: Txt2ImgBody) -> Task:
        settings = body.request

        def produce(task: Task) -> list[MediaAsset]:
            still = make_still(settings.prompt, settings.width, settings.height, task.config.image_mode)
            return [with_media_id(still, task.task_id)] * settings.image_num

        return self._accept("txt2img", body.extra.webhook, settings.prompt, produce)

    def accept_kling(self, request: KlingRequest) -> Task:
        def produce(task: Task) -> list[MediaAsset]:
            # without the still's own id, stills alike but for it share one encoding
            return [with_media_id(make_video(strip_media_id(request.image)), task.task_id)]

        return self._accept(
            "kling",
            request.webhook,
            request.prompt,
            produce,
            video_duration=float(request.duration),
            still_media_id=media_id(request.image),
        )

    def _accept(
        self,
        kind: TaskKind,
        webhook: Webhook | None,
        prompt: str,
        produce: Producer,
        video_duration: float = 5.0,
        still_media_id: str | None = None,
    ) -> Task:
        config = self._state.config
        forced_status = webhook.forced_status() if webhook else None
        if forced_status is None:
            delay = config.image_delay if kind == "txt2img" else config.video_delay
            failure_reason = FAULT_REASON if self._state.take_fault("fail_tasks", kind) else None
        else:
            # test mode answers at once with the status asked for
            delay = 0.0
            failure_reason = None if forced_status == SUCCEED else TEST_MODE_REASON
        silent = webhook is None or config.drop_webhooks
        task = Task(
            task_id=str(uuid.uuid4()),
            kind=kind,
            config=config,
            webhook_url=webhook.url if webhook else None,
            delay=delay,
            failure_reason=failure_reason,
            prompt=prompt,
            webhook_delays=() if silent else self._state.webhook_delays(config),
            still_media_id=still_media_id,
            video_duration=video_duration,
        )
        token = self._state.add_task(task)
        self._threads.start(f"task-{task.task_id[:8]}", self._run, task, token, produce)
        return task

    def _run(self, task: Task, token: object, produce: Producer) -> None:
        try:
            if self._stopping.wait(task.delay * QUEUED_SHARE):
                return
            if not self._state.mark_processing(task.task_id):
                return  # a reset forgot the task
            failure_reason = task.failure_reason
            media: list[MediaAsset] = []
            if failure_reason is None:
                try:
                    media = produce(task)
                except (OSError, ValueError, av.FFmpegError) as error:  # fail the task rather than hang it
                    failure_reason = f"simulator could not produce the result: {error}"
            remaining = task.due_monotonic - time.monotonic()
            if remaining > 0 and self._stopping.wait(remaining):
                return
            finished = self._state.finish_task(task.task_id, failure_reason, tuple(media))
            if finished is not None:
                self._deliver(finished)
        finally:
            self._state.end_work(token)

    def _deliver(self, task: Task) -> None:
        config = task.config
        if task.webhook_url is None or not task.webhook_delays:
            return
        images, videos = result_entries(self._state, task, self._base_url, config)
        body = json.dumps(webhook_body(task, images, videos, config)).encode()
        self._dispatcher.dispatch(task.task_id, task.webhook_url, body, config, task.webhook_delays)
