"""Request bodies are limited before Django reads them (config/body_limit.py).

Driven through the real ASGI application: in process with a transport that counts the
body chunks the server pulls, and over TCP against a uvicorn subprocess.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT, _test_database_url
from tests.support.fixtures import wait_for

UPLOAD_PATH = "/api/v1/years/2030/modules/headcount/uploads/"


class Transport:
    """Plays the ASGI server: hands out a body in chunks and records what comes back."""

    def __init__(self, *, chunks: int = 0, chunk_size: int = 16 * 1024, forbid_reading: bool = False) -> None:
        self.chunks, self.chunk_size, self.forbid_reading = chunks, chunk_size, forbid_reading
        self.pulled = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        assert not self.forbid_reading, "the server read a body it should have refused unread"
        if self.pulled >= self.chunks:
            await asyncio.Event().wait()  # body done: the client waits for the answer (no disconnect)
        self.pulled += 1
        return {"type": "http.request", "body": b"x" * self.chunk_size, "more_body": self.pulled < self.chunks}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")


def _scope(path: str, *, method: str = "POST", headers: list[tuple[bytes, bytes]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 5000), "server": ("localhost", 80),
    }


async def _call(scope: dict[str, Any], transport: Transport) -> Transport:
    from config.asgi import application

    await application(scope, transport.receive, transport.send)
    return transport


async def test_a_chunked_body_is_cut_off_at_the_limit(settings: Any) -> None:
    settings.SLUICE_REQUEST_MAX_BYTES = 64 * 1024
    # 100 chunks of 16 KiB (1.6 MB) without Content-Length, to a small endpoint
    transport = await _call(_scope("/healthz"), Transport(chunks=100))
    assert transport.status == 413
    # The fifth chunk crossed 64 KiB: nothing after it was pulled, nothing over the limit buffered.
    assert transport.pulled == 5
    assert b"too_large" in transport.sent[-1]["body"]


async def test_a_body_under_the_limit_reaches_django(settings: Any) -> None:
    settings.SLUICE_REQUEST_MAX_BYTES = 64 * 1024
    transport = await _call(_scope("/api/v1/auth/token/"), Transport(chunks=2))
    assert transport.pulled == 2 and transport.status == 400  # Django parsed it: not a valid form


async def test_an_over_limit_content_length_is_refused_unread() -> None:
    two_gib = str(2 * 1024**3).encode()
    for path in (UPLOAD_PATH, "/healthz"):
        transport = await _call(_scope(path, headers=[(b"content-length", two_gib)]), Transport(forbid_reading=True))
        assert transport.status == 413, path


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_upload_is_refused_unread(users: Any) -> None:
    headers = [(b"content-length", b"10000000"), (b"content-type", b"multipart/form-data; boundary=x")]
    for credentials in ([], [(b"authorization", b"Token not-a-token")], [(b"cookie", b"sessionid=forged")]):
        transport = await _call(_scope(UPLOAD_PATH, headers=headers + credentials), Transport(forbid_reading=True))
        assert transport.status == 401
    # With a real token the body is read and the view decides.
    token = await sync_to_async(lambda: Token.objects.create(user=users["operator"]).key)()
    authorised = [(b"authorization", f"Token {token}".encode()), (b"content-type", b"multipart/form-data; boundary=x")]
    transport = await _call(_scope(UPLOAD_PATH, headers=authorised), Transport(chunks=3))
    assert transport.pulled == 3 and transport.status not in (401, 413)


# --- the same over TCP, against uvicorn -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(transactional_db: Any) -> Iterator[tuple[str, int]]:
    port = _free_port()
    log_path = ROOT / ".var" / "test-logs" / "body-limit-uvicorn.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "PYTHONPATH": str(ROOT),
           "SLUICE_REQUEST_MAX_BYTES": str(256 * 1024)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("uvicorn")), "config.asgi:application", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return proc.poll() is not None

        wait_for(up, timeout=30, interval=0.1, message="uvicorn to listen")
        assert proc.poll() is None, log_path.read_text()
        yield "127.0.0.1", port
        proc.terminate()
        proc.wait(timeout=10)


def _status(sock: socket.socket) -> int:
    sock.settimeout(10)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed without a response"
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_uvicorn_refuses_a_2_gib_anonymous_upload_before_the_body(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(
            f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {2 * 1024**3}\r\n\r\n".encode()
        )
        assert _status(sock) == 413  # answered with no body byte sent
    with socket.create_connection(server) as sock:
        sock.sendall(
            f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {50 * 1024**2}\r\n\r\n".encode()
        )
        assert _status(sock) == 401  # under the limit, but nobody is logged in


def test_uvicorn_cuts_off_a_chunked_30_mb_post(server: tuple[str, int]) -> None:
    chunk = b"x" * 64 * 1024
    sent = 0
    with socket.create_connection(server) as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 30 * 1024**2:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed the connection mid-body
        assert _status(sock) == 413
    # The server stopped reading near its 256 KiB limit (plus what the kernel's socket
    # buffers took in), not after 30 MB.
    assert sent < 20 * 1024**2, sent
