"""A loopback media host for the benchmark: serves the files of one folder from memory.

    python -m bench.media_server --port P --dir FOLDER

It stands in for the storage Novita's presigned image URLs point at, so that the chain can be fed
a still just under 10 MB (the simulator's `image_mode="large"` is over the cap on purpose).
"""

from __future__ import annotations

import argparse
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

FILES: dict[str, bytes] = {}


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
        data = FILES.get(self.path.partition("?")[0].lstrip("/"))
        status, content_type = (200, "image/jpeg") if data is not None else (404, "text/plain")
        body = data if data is not None else b"not found"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

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
