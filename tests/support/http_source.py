"""A local HTTP server for source tests: fixtures, slow answers, 5xx, cut-off and huge bodies.

Runs in a thread of the test process (stdlib ``http.server``); the worker subprocess
fetches from it over loopback like from any remote endpoint. Each route says how it
answers; every request's headers are recorded so tests can check what was sent.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "text/csv; charset=utf-8"
    # Status per request in order (then 200): (500, 500) fails twice, then answers.
    statuses: tuple[int, ...] = ()
    always_status: int | None = None
    delay: float = 0.0  # before anything is sent: a read timeout
    truncate_to: int | None = None  # declare the full length, send this many bytes, hang up
    declare_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    trickle: float = 0.0  # seconds between 16 KB pieces of the body (a long download)
    etag: str = ""
    last_modified: str = ""
    headers_seen: list[dict[str, str]] = field(default_factory=list)


class SourceServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = defaultdict(int)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                n = server.hits[self.path]
                server.hits[self.path] += 1
                route.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                if route.delay:
                    time.sleep(route.delay)
                status = route.always_status or (route.statuses[n] if n < len(route.statuses) else 200)
                if status != 200:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if (route.etag and self.headers.get("If-None-Match") == route.etag) or (
                    route.last_modified and self.headers.get("If-Modified-Since") == route.last_modified
                ):
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", route.content_type)
                if route.declare_length:
                    self.send_header("Content-Length", str(len(route.body)))
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.last_modified:
                    self.send_header("Last-Modified", route.last_modified)
                self.end_headers()
                body = route.body if route.truncate_to is None else route.body[: route.truncate_to]
                try:
                    if route.trickle:
                        for start in range(0, len(body), 16384):
                            self.wfile.write(body[start:start + 16384])
                            self.wfile.flush()
                            time.sleep(route.trickle)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (size limit): what the test wants

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="source-server", daemon=True)
        self.thread.start()

    def add(self, path: str, **kwargs: Any) -> Route:
        route = Route(**kwargs)
        self.routes[path] = route
        return route

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
