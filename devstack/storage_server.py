"""The Cloud Storage emulator (PyPI's `gcp-storage-emulator`) as the local stack runs it:

    python -m devstack.storage_server <gcp-storage-emulator's arguments>

It is the emulator unchanged but for two things:

- its listen backlog: 128 instead of socketserver's 5. The emulator serves one request at a time,
  and with a backlog of 5 a burst of uploads (32 chain steps at once) overflowed its listen queue;
  every dropped connection cost its client a 1 s SYN retransmit that Cloud Storage itself never causes;
- SIGTERM stops it between two requests, as Ctrl-C does: by default it would end the process in the
  middle of one, and on disk (`--data-dir`) a half-written object table loses every object.
"""

from __future__ import annotations

import signal
import socketserver
import sys
from types import FrameType

from gcp_storage_emulator.__main__ import main


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    socketserver.TCPServer.request_queue_size = 128
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main(sys.argv[1:]))
