"""Real-browser test plumbing: uvicorn on the test database and Debian's Chromium.

Shared by the live console's and the Data management page's browser tests. Pages are
driven through Playwright's sync API; every wait is on a condition, never a fixed sleep.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, _test_database_url

CHROMIUM = "/usr/bin/chromium"
# Written under the ignored .var/ so a test run never dirties the checkout; the
# pictures in docs/img/ were taken from these and are refreshed by copying them over.
SCREENSHOTS = ROOT / ".var" / "screenshots"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
NO_CHROMIUM = "Debian chromium not installed (apt-get install chromium)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``uvicorn config.asgi:application`` on the test database, restartable on one port.

    ``env`` adds to (or overrides) the server's environment, e.g. ``DJANGO_DEBUG="false"``.
    """

    def __init__(self, name: str = "live", **env: str) -> None:
        self.env = env
        self.port = free_port()
        self.log_path = ROOT / ".var" / "test-logs" / f"{name}-uvicorn.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "DATABASE_URL": _test_database_url(), "DJANGO_DEBUG": "true", "PYTHONPATH": str(ROOT),
               **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("uvicorn")), "config.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            yield b
        finally:
            b.close()


def login(page: Any, base: str, username: str, password: str, *, next_path: str = "/admin/") -> None:
    page.goto(f"{base}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"**{next_path}*", timeout=30000)
