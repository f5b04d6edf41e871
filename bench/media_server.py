"""A loopback media host for the benchmark: serves the files of one folder from memory.

    python -m bench.media_server --port P --dir FOLDER

It stands in for the storage Novita's presigned URLs point at: a still just under 10 MB (the
simulator's `image_mode="large"` is over the cap on purpose), a typical still, a 50 MB video.
`?rate=N` serves a file at N bytes per second (a slow host); `GET /_stats` counts the transfers
under way and the bytes served, so that the bench knows when nothing is downloading any more.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs

FILES: dict[str, bytes] = {}
TYPES = {"jpg": "image/jpeg", "png": "image/png", "mp4": "video/mp4"}
# A throttled body goes out in blocks this small, each after its share of the time has passed.
PACED_BLOCK = 16 * 1024


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.served_bytes = 0
        self.requests: dict[str, int] = {}

    def begin(self, name: str) -> None:
        with self._lock:
            self.active += 1
            self.requests[name] = self.requests.get(name, 0) + 1

    def end(self, sent: int) -> None:
        with self._lock:
            self.active -= 1
            self.served_bytes += sent

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"active": self.active, "served_bytes": self.served_bytes, "requests": dict(self.requests)}


COUNTERS = Counters()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bench-media"
    timeout = 60
    disable_nagle_algorithm = True  # headers and body go out in two sends: no delayed-ACK stall

    def do_GET(self) -> None:
        self._answer(head_only=False)

    def do_HEAD(self) -> None:
        self._answer(head_only=True)

    def _answer(self, head_only: bool) -> None:
        path, _, query = self.path.partition("?")
        name = path.lstrip("/")
        if name == "_stats":
            self._send(200, "application/json", json.dumps(COUNTERS.snapshot()).encode(), head_only)
            return
        data = FILES.get(name)
        if data is None:
            self._send(404, "text/plain", b"not found", head_only)
            return
        rate = int(parse_qs(query).get("rate", ["0"])[0] or 0)
        COUNTERS.begin(name)
        sent = 0
        try:
            kind = TYPES.get(name.rpartition(".")[2], "application/octet-stream")
            sent = self._send(200, kind, data, head_only, rate)
        finally:
            COUNTERS.end(sent)

    def _send(self, status: int, content_type: str, body: bytes, head_only: bool, rate: int = 0) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head_only:
            return 0
        if rate <= 0:
            self.wfile.write(body)
            return len(body)
        view = memoryview(body)
        started = time.monotonic()
        sent = 0
        try:
            while sent < len(body):
                block = view[sent : sent + PACED_BLOCK]
                self.wfile.write(block)
                sent += len(block)
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:  # the client went away (a step that gave up, a purge)
            self.close_connection = True
        return sent

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in args.dir.iterdir():
        if path.is_file():
            FILES[path.name] = path.read_bytes()
    ThreadingHTTPServer.request_queue_size = 128  # socketserver's listen(5) drops SYNs under load
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    stopping = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    print(f"bench media server on http://{args.host}:{args.port}/ serving {sorted(FILES)}", flush=True)
    stopping.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
