"""The functions' TLS context (shared/runtime.py): the system's hashed root directory when there is
one, else certifi's bundle; either way it verifies, shown by a handshake with a loopback server."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.http import tls_context
from tests.certificates import self_signed_cert

NAME = "roots.test"


def self_signed(name: str, directory: Path) -> Path:
    """A certificate that is its own root, and its key, as PEM files in `directory`; the cert's path."""
    cert, key = self_signed_cert(name)
    (directory / "key.pem").write_bytes(key)
    path = directory / "cert.pem"
    path.write_bytes(cert)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A loopback TLS server for NAME that completes handshakes; its port and its root's PEM."""
    directory = tmp_path_factory.mktemp("tls-server")
    cert = self_signed(NAME, directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, directory / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], cert
    stop.set()
    thread.join(timeout=5)
    listener.close()


def handshake(context: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=NAME),
    ):
        pass


def test_a_hashed_root_directory_is_used_and_verifies(server: tuple[int, Path], tmp_path: Path) -> None:
    port, cert = server
    subject_hash = subprocess.run(
        ["openssl", "x509", "-subject_hash", "-noout", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
    (tmp_path / f"{subject_hash}.0").write_bytes(cert.read_bytes())

    handshake(tls_context(str(tmp_path)), port)


def test_without_one_the_bundle_is_used_and_an_unknown_root_is_refused(
    server: tuple[int, Path], tmp_path: Path
) -> None:
    port, _ = server
    for missing in (tmp_path, tmp_path / "absent"):
        context = tls_context(str(missing))
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 100  # certifi's roots, loaded whole
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(context, port)
