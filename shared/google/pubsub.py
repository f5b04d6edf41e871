"""Publishing to Pub/Sub over its REST API (v1), through `shared.google.api`.

The Pub/Sub SDK's import took 290-330 ms here (`python -X importtime -c 'import google.cloud.pubsub_v1'`),
as long as the rest of a cold start; a publish is one POST.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.google.api import GoogleApi

PRODUCTION_URL = "https://pubsub.googleapis.com"
# Pub/Sub takes at most 1,000 messages (and 10 MB) per publish call.
MAX_BATCH = 1000


@dataclass(frozen=True)
class Message:
    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)


class PubSub:
    """Topics of one project."""

    def __init__(self, api: GoogleApi, project: str, *, base_url: str = PRODUCTION_URL) -> None:
        self._api = api
        self.project = project
        self._url = f"{base_url.rstrip('/')}/v1"

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Publish `messages` to the topic named `topic`; their message ids, in order."""
        ids: list[str] = []
        for start in range(0, len(messages), MAX_BATCH):
            batch = [
                {"data": base64.b64encode(m.data).decode("ascii"), "attributes": dict(m.attributes)}
                for m in messages[start : start + MAX_BATCH]
            ]
            response = self._api.call(
                "POST", f"{self._url}/{self.topic(topic)}:publish", json={"messages": batch}
            )
            ids += [str(i) for i in response.json()["messageIds"]]
        return ids
