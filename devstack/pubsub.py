"""Google's Pub/Sub emulator, started as one JVM bound to loopback, and the steps' topology on it,
made from the same definitions deploy.sh uses (`shared/pipeline/topology.py`)."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from devstack.emulator import sdk_roots
from devstack.gate import Gate
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until
from shared.pipeline.topology import (
    DEAD_LETTER_ACTION,
    DEAD_LETTER_SUBSCRIPTION,
    DEAD_LETTER_TOPIC,
    STEP_ACTION,
    SUBSCRIPTION,
    TOPIC,
    RetryPolicy,
    subscription_body,
)

JARS_IN_SDK = Path("platform/pubsub-emulator/lib")
# Locally a step comes back within seconds, and ends in the dead letters after five tries: the
# production policy's minutes would make every test of a fault wait for them.
LOCAL_RETRY = RetryPolicy(min_backoff_seconds=1, max_backoff_seconds=4, max_delivery_attempts=5)
# The emulator pushes each subscription's messages from this many loops, however many wait.
EMULATOR_PUSH_LOOPS = 2


def find_jar() -> Path:
    """The emulator jar of the installed Google Cloud SDK (package google-cloud-cli-pubsub-emulator)."""
    if os.environ.get("PUBSUB_EMULATOR_JAR"):
        return Path(os.environ["PUBSUB_EMULATOR_JAR"])
    for root in sdk_roots():
        jars = sorted((root / JARS_IN_SDK).glob("cloud-pubsub-emulator-*.jar"))
        if jars:
            return jars[-1]
    raise FileNotFoundError(
        "Pub/Sub emulator jar not found: install the Debian package google-cloud-cli-pubsub-emulator"
    )


def with_action(url: str, action: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"action": action})) if q)
    return urlunsplit(parts._replace(query=query))


class PubSubEmulator:
    """The emulator on `port`. `gated`: its clients reach it through a gate (`devstack/gate.py`) on
    `host`, which stays shut through a restart until the topologies are made again, so that no
    message is published to a topic whose subscription does not exist yet."""

    def __init__(self, log_path: Path, *, port: int | None = None, gated: bool = False) -> None:
        self.port = port or free_port()
        self._gate = Gate(self.port) if gated else None
        self.host = self._gate.host if self._gate else f"{LOOPBACK}:{self.port}"
        self.url = f"http://{self.host}"
        # The emulator's own address, for its readiness and the topologies, even while gated.
        self._direct = f"http://{LOOPBACK}:{self.port}"
        self._log_path = log_path
        self._proc = None
        # The topologies made on it, so that a restart (the emulator keeps nothing) makes them again.
        self._topologies: dict[str, tuple[str, RetryPolicy]] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 60.0) -> PubSubEmulator:
        cmd = [
            shutil.which("java") or "java",
            "-jar",
            str(find_jar()),
            f"--host={LOOPBACK}",
            f"--port={self.port}",
        ]
        self._proc = start(cmd, env=dict(os.environ), log_path=self._log_path)
        wait_until(answers(self._direct + "/"), timeout, "Pub/Sub emulator", self._proc)
        # On a restart the gate opens only once the topologies are made again (`restart`).
        if self._gate is not None and not self._topologies:
            self._gate.open()
        return self

    def stop(self) -> None:
        if self._gate is not None:
            self._gate.shut()
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def restart(self, downtime: float) -> None:
        """Stop the emulator for `downtime` seconds and bring it back on its port, with its topologies
        (the messages it held are lost, as an outage may lose them)."""
        self.stop()
        time.sleep(downtime)
        self.start()
        for project, (webhook_url, retry) in self._topologies.items():
            self.create_topology(project, webhook_url, retry)
        if self._gate is not None:
            self._gate.open()

    def create_topics(self, project: str) -> None:
        """The steps' topics, without subscriptions (a message published to them is kept by nobody
        until there are some)."""
        with httpx.Client(timeout=10) as http:
            for topic in (TOPIC, DEAD_LETTER_TOPIC):
                answer = http.put(f"{self._direct}/v1/projects/{project}/topics/{topic}", json={})
                if answer.status_code != 409:  # made already
                    answer.raise_for_status()

    def create_topology(self, project: str, webhook_url: str, retry: RetryPolicy = LOCAL_RETRY) -> None:
        """The steps' topics and push subscriptions, pointed at `webhook_url`; made or brought up to date."""
        self._topologies[project] = (webhook_url, retry)
        base = f"{self._direct}/v1/projects/{project}"
        self.create_topics(project)
        with httpx.Client(timeout=10) as http:
            subscriptions = {
                SUBSCRIPTION: subscription_body(
                    project, TOPIC, with_action(webhook_url, STEP_ACTION), retry, dead_letters=True
                ),
                DEAD_LETTER_SUBSCRIPTION: subscription_body(
                    project,
                    DEAD_LETTER_TOPIC,
                    with_action(webhook_url, DEAD_LETTER_ACTION),
                    retry,
                    dead_letters=False,
                ),
            }
            for name, body in subscriptions.items():
                answer = http.put(f"{base}/subscriptions/{name}", json=body)
                if answer.status_code == 409:
                    fields = [key for key in body if key != "topic"]
                    answer = http.patch(
                        f"{base}/subscriptions/{name}",
                        json={"subscription": body, "updateMask": ",".join(fields)},
                    )
                answer.raise_for_status()

    def purge(self, project: str, *subscriptions: str) -> None:
        """Drop every message the subscriptions still hold (a seek to now acknowledges them)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with httpx.Client(timeout=10) as http:
            for name in subscriptions:
                http.post(
                    f"{self.url}/v1/projects/{project}/subscriptions/{name}:seek", json={"time": now}
                ).raise_for_status()

    def subscription(self, project: str, name: str) -> dict[str, object]:
        answer = httpx.get(f"{self.url}/v1/projects/{project}/subscriptions/{name}", timeout=10)
        answer.raise_for_status()
        return dict(answer.json())
