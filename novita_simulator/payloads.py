"""The JSON Novita sends: webhook events, task-result answers and Seedream's synchronous answer, with
fresh presigned-style media links."""

import base64
from typing import Any, Literal

from novita_simulator.config import SimulatorConfig
from novita_simulator.media import MediaAsset
from novita_simulator.state import MEDIA_PREFIX, SimulatorState
from novita_simulator.task import Task

Entry = dict[str, Any]


def media_url(state: SimulatorState, base_url: str, asset: MediaAsset, ttl_seconds: int) -> str:
    return f"{base_url}{MEDIA_PREFIX}{state.issue_link(asset, ttl_seconds)}"


def result_entries(
    state: SimulatorState, task: Task, base_url: str, config: SimulatorConfig
) -> tuple[list[Entry], list[Entry]]:
    """Image and video entries, each with a newly issued link that expires after config.media_ttl."""
    # the reference's examples give TTLs as strings; the guide's as numbers
    as_string = config.ttl_as_string or config.personality == "reference"
    ttl: int | str = str(config.media_ttl) if as_string else config.media_ttl
    images: list[Entry] = []
    videos: list[Entry] = []
    for asset in task.media:
        url = media_url(state, base_url, asset, config.media_ttl)
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


def webhook_body(
    task: Task, images: list[Entry], videos: list[Entry], config: SimulatorConfig
) -> dict[str, Any]:
    if config.personality == "reference":
        # "The schema of the payload fields is exactly the same as the response from the Task Result API."
        return {"event_type": "ASYNC_TASK_RESULT", "payload": task_result_body(task, images, videos)}
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
    if config.layout == "top":
        # the reference's place for results, in the guide's event
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


def seedream_body(
    state: SimulatorState,
    base_url: str,
    still: MediaAsset,
    response_format: Literal["url", "b64_json"],
    ttl_seconds: int,
) -> dict[str, list[str]]:
    """Seedream 3.0's answer: the image as a link or as base64, in the array the format names; no TTL."""
    if response_format == "b64_json":
        return {"image_urls": [], "binary_data_base64": [base64.b64encode(still.data).decode("ascii")]}
    return {"image_urls": [media_url(state, base_url, still, ttl_seconds)], "binary_data_base64": []}
