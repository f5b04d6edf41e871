"""The JSON Novita sends: webhook events and task-result answers, with fresh presigned-style media links."""

from typing import Any

from novita_simulator.config import SimulatorConfig
from novita_simulator.state import SimulatorState
from novita_simulator.task import Task

Entry = dict[str, Any]


def result_entries(
    state: SimulatorState, task: Task, base_url: str, config: SimulatorConfig
) -> tuple[list[Entry], list[Entry]]:
    """Image and video entries, each with a newly issued link that expires after config.media_ttl."""
    ttl: int | str = str(config.media_ttl) if config.ttl_as_string else config.media_ttl
    images: list[Entry] = []
    videos: list[Entry] = []
    for asset in task.media:
        url = f"{base_url}/media/{state.issue_link(asset, config.media_ttl)}"
        if asset.is_video:
            videos.append(
                {
                    "video_url": url,
                    "video_type": asset.media_type,
                    "video_url_ttl": ttl,
                    "duration": task.video_duration,
                }
            )
        else:
            images.append({"image_url": url, "image_type": asset.media_type, "image_url_ttl": ttl})
    return images, videos


def webhook_body(task: Task, images: list[Entry], videos: list[Entry], layout: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "task": {
            "task_id": task.task_id,
            "task_type": task.task_type,
            "status": task.status,
            "reason": task.reason,
            "created_at": int(task.created_at),
            "finished_at": int(task.finished_at or task.created_at),
        },
        "extra": {},
    }
    if layout == "top":
        # Novita's reference: the task-result schema, lists always present
        payload.update(images=images, videos=videos)
    else:
        # the integration guide: results inside extra, only the lists that have entries
        payload["extra"].update(
            {name: entries for name, entries in (("images", images), ("videos", videos)) if entries}
        )
    return {"event_type": "ASYNC_TASK_RESULT", "payload": payload}


def task_result_body(task: Task, images: list[Entry], videos: list[Entry]) -> dict[str, Any]:
    return {
        "task": {
            "task_id": task.task_id,
            "task_type": task.task_type,
            "status": task.status,
            "reason": task.reason,
            "eta": task.eta_seconds(),
            "progress_percent": task.progress_percent(),
        },
        "images": images,
        "videos": videos,
        "extra": {},
    }
