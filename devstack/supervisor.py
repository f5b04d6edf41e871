"""Brings back a function process that dies, on the same port, as Cloud Run starts a new instance
when one is lost: the local stack and the tests that kill processes on purpose use it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from devstack.functions import FunctionServer


class Supervisor:
    def __init__(
        self, servers: Sequence[FunctionServer], say: Callable[[str], None], every: float = 0.2
    ) -> None:
        self._servers = list(servers)
        self._say = say
        self._every = every
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self.restarts = 0

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; after this, a process that ends stays ended (the stack is stopping)."""
        self._stopping.set()
        with self._lock:  # a restart under way finishes first
            pass
        self._thread.join(90)

    def _watch(self) -> None:
        while not self._stopping.wait(self._every):
            for server in self._servers:
                process = server.process
                if process is None or process.poll() is None:
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        return
                    code = process.returncode
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    try:
                        server.start()
                    except (RuntimeError, TimeoutError) as exc:
                        self._say(f"{server.name} ended ({how}) and could not be started again: {exc}")
                        continue
                    self.restarts += 1
                    started = f"started again on port {server.port} as pid {server.pid}"
                    self._say(f"{server.name} ended ({how}); {started}")
