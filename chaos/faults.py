"""Carrying the schedule out on a running stack: the simulator's steady faults for the whole fault
phase, and each episode at its time, in a thread of its own (a restart takes seconds). Every
process is found by its PID: a function's instance is its process group (the supervisor's), its
worker the newest child of that process (`FunctionServer.worker_pid`).

Each episode, as it was carried out, is a line of `faults.jsonl` in the run's folder.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from chaos.schedule import CALM, EPISODES, STEADY, Episode, EpisodeKind, Function, Plan, after
from devstack.functions import FunctionServer
from devstack.stack import LocalStack


class HarnessError(Exception):
    """The run itself failed (an emulator that did not come back): nothing can be said of the machine."""


class Injector:
    def __init__(self, stack: LocalStack, plan: Plan, journal: Path) -> None:
        assert stack.simulator is not None, "a chaos run drives the simulator"
        self._stack = stack
        self._plan = plan
        self._journal = journal
        self._simulator = stack.simulator
        self._servers: dict[Function, FunctionServer] = {
            "create_sketch": stack.create,
            "novita_webhook": stack.webhook,
            "steps": stack.steps,
        }
        self._stopping = threading.Event()
        self._write = threading.Lock()
        # Episodes of one kind never overlap, even one that overruns its slot.
        self._kinds: dict[EpisodeKind, threading.Lock] = {kind: threading.Lock() for kind in EPISODES}
        self._running: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._loop, name="chaos-schedule", daemon=True)
        self._started = 0.0
        self.errors: list[str] = []

    def start(self, started: float) -> Injector:
        """Turn the steady faults on and run the schedule, its times counted from `started`."""
        self._started = started
        self._simulator.configure(**STEADY, fault_seed=self._plan.seed)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the fault phase: no new episode, the simulator's windows closed at once, a restart
        under way finished; then the simulator calm."""
        self._stopping.set()
        self._thread.join()
        for thread in self._running:
            thread.join()
        self._simulator.configure(**CALM)
        if self.errors:
            raise HarnessError("; ".join(self.errors))

    def _loop(self) -> None:
        for episode in self._plan.episodes:
            if self._stopping.wait(max(0.0, self._started + episode.at - time.monotonic())):
                return
            thread = threading.Thread(
                target=self._run, args=(episode,), name=f"chaos-{episode.kind}", daemon=True
            )
            thread.start()
            self._running.append(thread)

    def _run(self, episode: Episode) -> None:
        with self._kinds[episode.kind]:
            began = time.monotonic() - self._started
            try:
                outcome = self._carry_out(episode)
            except Exception as exc:  # recorded, and the run fails as a harness error
                outcome = f"error: {exc!r}"
                self.errors.append(f"{episode.kind} at {began:.1f} s: {exc!r}")
            ended = time.monotonic() - self._started
        line = {
            "planned": episode.at,
            "began": round(began, 2),
            "ended": round(ended, 2),
            "kind": episode.kind,
            "target": episode.target,
            "seconds": episode.seconds,
            "settings": episode.settings,
            "outcome": outcome,
        }
        with self._write, self._journal.open("a") as journal:
            journal.write(json.dumps(line) + "\n")

    def _carry_out(self, episode: Episode) -> str:
        if episode.kind in ("kill_worker", "kill_instance"):
            assert episode.target is not None
            return self._kill(self._servers[episode.target], whole=episode.kind == "kill_instance")
        if episode.kind == "restart_firestore":
            self._stack.restart_firestore(episode.seconds)
        elif episode.kind == "restart_pubsub":
            self._stack.restart_pubsub(episode.seconds)
        elif episode.kind == "restart_storage":
            self._stack.restart_storage(episode.seconds)
        else:
            self._simulator.configure(**episode.settings)
            try:
                self._stopping.wait(episode.seconds)
            finally:
                self._simulator.configure(**after(episode.kind))
        return "done"

    @staticmethod
    def _kill(server: FunctionServer, *, whole: bool) -> str:
        process = server.process
        if process is None or process.poll() is not None:
            return "no instance to kill: it is being started again"
        try:
            if whole:
                os.killpg(process.pid, signal.SIGKILL)
                return f"killed the process group {process.pid}"
            worker = server.worker_pid()
            if worker == process.pid:
                return "no worker to kill: gunicorn is starting one"
            os.kill(worker, signal.SIGKILL)
            return f"killed the worker {worker} of {process.pid}"
        except ProcessLookupError:
            return "already gone"
