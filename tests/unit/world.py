"""One instance's pipeline with fakes where Google and Novita would be: the real store, results,
queue, breaker, lease and steps, over in-memory Firestore, Pub/Sub and Cloud Storage, a scripted
Novita and a media host that answers from memory."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
from PIL import Image

from shared.core.config import Settings, settings_from
from shared.core.deadline import Deadline
from shared.media.fetch import media_client
from shared.novita.client import Form, NovitaClient
from shared.novita.errors import NovitaError
from shared.novita.models import TaskResult
from shared.pipeline.creation import Creator
from shared.pipeline.queue import Step, StepQueue
from shared.pipeline.recovery import Recovery
from shared.pipeline.results import Results
from shared.pipeline.steps import Worker
from shared.pipeline.work import Tools
from shared.sketch.model import Sketch, Status, new_sketch_id, utcnow
from shared.sketch.request import CreateSketchRequest
from shared.sketch.store import SketchStore
from shared.spending.breaker import BalanceBreaker
from shared.spending.daily import DailyCaps
from shared.spending.idempotency import IdempotencyKeys
from tests.unit.fakes import MemoryFirestore, MemoryPubSub, MemoryStorage

SECRET = "unit-secret"
BUCKET = "unit-bucket"
STILL_URL = "http://media.test/still.jpg"
VIDEO_URL = "http://media.test/video.mp4"
ENV = {
    "NOVITA_API_KEY": "k",
    "WEBHOOK_URL": "https://hooks.test/",
    "WEBHOOK_SECRET": SECRET,
    "GOOGLE_CLOUD_PROJECT": "unit",
    "MEDIA_BUCKET": BUCKET,
    "MEDIA_URL_POLICY": "any",
    "STEP_LEASE_SECONDS": "30",
    "UNKNOWN_OUTCOME_GRACE_SECONDS": "600",
    "RECOVERY_INTERVAL_SECONDS": "60",
}


def jpeg(width: int = 720, height: int = 1280) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


Outcome = Any  # a value to return, or a NovitaError to raise


class ScriptedNovita(NovitaClient):
    """Novita's answers from a script, one list per call; every call is recorded."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, transport=httpx.MockTransport(lambda r: httpx.Response(500)))
        self.script: dict[str, list[Outcome]] = {
            "txt2img": [],
            "seedream": [],
            "kling": [],
            "task_result": [],
        }
        self.calls: list[tuple[str, Any]] = []
        # Called with the form of each Kling request, before it "goes out".
        self.kling_forms: list[Form] = []

    def _next(self, name: str, detail: Any) -> Any:
        self.calls.append((name, detail))
        if not self.script[name]:
            raise AssertionError(f"Novita was asked {name} with nothing scripted")
        outcome = self.script[name].pop(0)
        if callable(outcome):  # evaluated as the request goes out: it may look at the sketch then
            outcome = outcome()
        if isinstance(outcome, NovitaError):
            raise outcome
        return outcome

    def count(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)

    def start_text_to_image(self, **request: Any) -> str:
        return str(self._next("txt2img", request))

    def seedream(self, *, prompt: str, width: int, height: int, seed: int, deadline: Deadline) -> str:
        return str(self._next("seedream", prompt))

    def start_image_to_video(self, *, sending: Callable[[Form], None], **request: Any) -> tuple[str, Form]:
        form = self.form("image_to_video")
        sending(form)
        self.kling_forms.append(form)
        return str(self._next("kling", request)), form

    def task_result(self, task_id: str, deadline: Deadline) -> TaskResult:
        return TaskResult.model_validate(self._next("task_result", task_id))


@dataclass
class MediaHost:
    """The media host: answers from `files` (by path) and, as Firebase's download URLs do, with the
    objects of `storage`; it counts what it was asked."""

    files: dict[str, tuple[int, bytes]] = field(
        default_factory=lambda: {
            "/still.jpg": (200, jpeg()),
            "/video.mp4": (200, b"\x00\x00\x00\x18ftypmp42" * 64),
        }
    )
    asked: list[str] = field(default_factory=list)
    storage: MemoryStorage | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path)
        kept = re.fullmatch(
            r"(?:/v0|/download/storage/v1)/b/([^/]+)/o/([^/?]+)", request.url.raw_path.decode().split("?")[0]
        )
        if kept is not None and self.storage is not None:
            found = self.storage.objects.get((kept[1], unquote(kept[2])))
            return httpx.Response(200, content=found[0]) if found else httpx.Response(404)
        status, body = self.files.get(request.url.path, (404, b""))
        return httpx.Response(status, content=body)


TASK_FIELDS = ("task_type", "reason", "eta", "progress_percent")


def result(task_id: str, status: str = "TASK_STATUS_SUCCEED", **payload: Any) -> dict[str, Any]:
    """A task-result body, as Novita's reference gives it: task fields in `task`, outputs beside it."""
    task = {"task_id": task_id, "status": status, **{k: payload.pop(k) for k in TASK_FIELDS if k in payload}}
    return {"task": task, **payload}


def image_result(task_id: str, url: str = STILL_URL) -> dict[str, Any]:
    return result(task_id, task_type="TXT_TO_IMG", images=[{"image_url": url, "image_url_ttl": 3600}])


def video_result(task_id: str, url: str = VIDEO_URL) -> dict[str, Any]:
    return result(
        task_id, task_type="KLING_V2.1_I2V_MASTER", videos=[{"video_url": url, "video_url_ttl": 3600}]
    )


class World:
    def __init__(self, **env: str) -> None:
        self.settings = settings_from({**ENV, **env})
        self.db = MemoryFirestore()
        self.pubsub = MemoryPubSub()
        self.storage = MemoryStorage()
        self.media = MediaHost(storage=self.storage)
        self.novita = ScriptedNovita(self.settings)
        self.store = SketchStore(self.db, self.settings.sketches_collection)
        self.results = Results(self.settings, self.store)
        self.queue = StepQueue(self.pubsub, SECRET, self.settings.max_sketch_age_seconds)
        self.breaker = BalanceBreaker(
            self.db, self.settings.sketches_collection, self.settings.balance_breaker_seconds
        )
        self.tools = Tools(
            self.settings,
            self.store,
            self.results,
            self.novita,
            self.queue,
            self.breaker,
            media_client(transport=httpx.MockTransport(self.media)),
            self.storage,
            lambda host, port: ["127.0.0.1"],
        )
        self.worker = Worker(self.store, lambda: self.tools)
        self.recovery = Recovery(self.store, self.results, lambda: self.worker, self.queue)
        self.caps = DailyCaps.of(self.settings)
        self.creator = Creator(
            self.settings,
            self.store,
            self.results,
            self.novita,
            self.queue,
            self.breaker,
            self.caps,
            IdempotencyKeys(self.db, self.settings.sketches_collection),
        )

    def sketch(self, status: Status = Status.IMAGE_PENDING, **fields: Any) -> Sketch:
        """A stored sketch in `status`, with `fields` over a plain create's."""
        now = utcnow()
        made = Sketch.new(new_sketch_id(), CreateSketchRequest(prompt="a walrus"), now, None, now, "task")
        made = made.replace(status=status, **fields)
        stored, _ = self.store.create(made)
        return stored

    def stored(self, sketch_id: str) -> Sketch:
        sketch = self.store.get(sketch_id)
        assert sketch is not None
        return sketch

    def published(self) -> list[Step]:
        """The steps handed on, in order."""
        return [Step.from_json(json.loads(message.data)["step"]) for _, message in self.pubsub.published]

    def published_kinds(self) -> list[str]:
        return [step.kind.value for step in self.published()]

    def run(self, step: Step) -> Any:
        return self.worker.run(step)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
