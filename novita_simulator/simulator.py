"""NovitaSimulator: the in-process handle tests use to start, steer, inspect and stop the simulator."""

import threading
from types import TracebackType
from typing import Any, Self

from novita_simulator.background import BackgroundThreads
from novita_simulator.config import SimulatorConfig
from novita_simulator.runner import TaskRunner
from novita_simulator.server import ApiContext, SimulatorHTTPServer
from novita_simulator.state import SimulatorState
from novita_simulator.still_fetcher import StillFetcher
from novita_simulator.webhooks import WebhookDispatcher

WILDCARD_HOSTS = ("", "0.0.0.0")
# how often serve_forever looks for shutdown; small so stop() is quick
SHUTDOWN_POLL_SECONDS = 0.05


class NovitaSimulator:
    """Binds its port on construction, so base_url is known before start()."""

    def __init__(
        self,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimulatorConfig | None = None,
    ) -> None:
        self._state = SimulatorState(config or SimulatorConfig())
        self._stopping = threading.Event()
        self._threads = BackgroundThreads()
        self._dispatcher = WebhookDispatcher(self._state, self._threads, self._stopping)
        self._server = SimulatorHTTPServer((host, port))
        bound_port = self._server.server_address[1]
        # links handed out must be reachable, which a wildcard address is not
        self.base_url = f"http://{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{bound_port}"
        runner = TaskRunner(self._state, self._dispatcher, self._threads, self._stopping, self.base_url)
        self._stills = StillFetcher(self._state, self.base_url)
        self._server.context = ApiContext(
            api_key, self.base_url, self._state, runner, self._stills, self._stopping
        )
        self._serving: threading.Thread | None = None

    def start(self) -> Self:
        if self._serving is None:
            self._serving = threading.Thread(
                target=self._server.serve_forever,
                args=(SHUTDOWN_POLL_SECONDS,),
                name="novita-simulator",
                daemon=True,
            )
            self._serving.start()
        return self

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change SimulatorConfig fields; raises ValueError for unknown fields or bad values."""
        return self._state.configure(changes)

    @property
    def config(self) -> SimulatorConfig:
        return self._state.config

    def stats(self) -> dict[str, Any]:
        return self._state.stats()

    def ledger(self) -> dict[str, Any]:
        """Every paid call since the last reset, in order, and the refused ones counted (see ledger)."""
        return self._state.ledger()

    def reset(self) -> None:
        """Forget tasks, links and counters, and restore the config the simulator was built with."""
        self._state.reset()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once no task is running and no webhook delivery is under way."""
        return self._state.wait_idle(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._serving is not None:
            self._server.shutdown()
            self._serving.join(timeout)
        self._server.server_close()
        self._server.close_connections()
        self._threads.join(timeout)
        self._dispatcher.close()
        self._stills.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
