"""The playground: a small page where a person signs in as a guest, types a prompt and watches the
sketch happen, live from its Firestore document, as the app does."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devstack.auth import API_KEY
from devstack.functions import ROOT
from devstack.node import node_command
from devstack.processes import LOOPBACK

PAGE = Path(__file__).with_name("index.html")
SCRIPT = Path(__file__).with_name("app.js")


@dataclass(frozen=True)
class PageConfig:
    """Where the page finds the stack: written into the page as JSON."""

    create_sketch: str
    auth_emulator_host: str
    firestore_emulator_host: str
    project: str
    collection: str

    def to_json(self) -> str:
        config = {
            "createSketch": self.create_sketch,
            "authEmulatorHost": self.auth_emulator_host,
            "firestoreEmulatorHost": self.firestore_emulator_host,
            "projectId": self.project,
            "collection": self.collection,
            "apiKey": API_KEY,
        }
        # Inside <script>: no "</" may close the element early.
        return json.dumps(config).replace("<", "\\u003c")


def bundle() -> bytes:
    """app.js and the parts of the Firebase JS SDK it imports, as one ES module: a browser cannot
    resolve npm's bare module names. Built in memory at every start, so an edit to app.js shows on
    the next start and two stacks never write one file; esbuild takes well under a second."""
    cmd = [
        *node_command("esbuild/bin/esbuild"),
        str(SCRIPT),
        "--bundle",
        "--format=esm",
        "--target=es2022",
        "--log-level=warning",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"esbuild could not bundle {SCRIPT.name}: {done.stderr.decode(errors='replace')}")
    return done.stdout


class Playground:
    """Serves the page and its bundled script on loopback."""

    def __init__(self, config: PageConfig, port: int = 0) -> None:
        files = {
            "/": (
                "text/html; charset=utf-8",
                PAGE.read_bytes().replace(b"{{CONFIG}}", config.to_json().encode()),
            ),
            "/app.js": ("text/javascript; charset=utf-8", bundle()),
        }
        files["/index.html"] = files["/"]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = files.get(self.path.split("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                content_type, body = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    def start(self) -> Playground:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
