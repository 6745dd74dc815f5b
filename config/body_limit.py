"""Request bodies are limited before Django reads them (ASGI middleware, see config/asgi.py).

Under ASGI, Django reads the whole body into a temporary file before any view runs, so
a size check in a view comes too late: an anonymous client could make the server spool
gigabytes. This middleware, in front of Django:

- answers 413 at once when ``Content-Length`` exceeds the limit, without reading;
- counts the bytes of a body without ``Content-Length`` (chunked) as they arrive and
  answers 413 as soon as they exceed the limit — Django never receives the chunk that
  crossed it;
- answers 401 to an upload whose sender is not authenticated, without reading its body.

Limits: ``SLUICE_UPLOAD_MAX_BYTES`` (plus multipart overhead) on upload URLs,
``SLUICE_REQUEST_MAX_BYTES`` everywhere else.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.urls import Resolver404, resolve

from backoffice.api.auth import user_from_credentials
from backoffice.api.errors import RETRY_AFTER_SECONDS, service_unavailable

# URL names that take a file upload (multipart): the large limit, and authentication first.
UPLOAD_URL_NAMES = frozenset({"upload-create"})
MULTIPART_OVERHEAD = 64 * 1024


def _is_upload(path: str) -> bool:
    try:
        return resolve(path).url_name in UPLOAD_URL_NAMES
    except Resolver404:
        return False


def _limit(upload: bool) -> int:
    if upload:
        return int(settings.SLUICE_UPLOAD_MAX_BYTES) + MULTIPART_OVERHEAD
    return int(settings.SLUICE_REQUEST_MAX_BYTES)


async def _answer(send: Any, status: int, code: str, detail: str, *headers: tuple[bytes, bytes]) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"), *headers],
    })
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> tuple[int, str, str]:
    return 413, "too_large", f"The request body is larger than the limit of {limit:,} bytes."


def _user_outside_a_request(authorization: str, session_key: str | None) -> Any:
    # No Django request wraps this query, so nothing else recycles the connection: without
    # these, one broken by a PostgreSQL restart failed every later upload (found by
    # schemathesis, issue 18), and a healthy one stayed checked out of the pool.
    close_old_connections()
    try:
        return user_from_credentials(authorization=authorization, session_key=session_key)
    finally:
        close_old_connections()


async def _authenticated(headers: dict[bytes, bytes]) -> bool:
    cookie = SimpleCookie()
    cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    morsel = cookie.get(settings.SESSION_COOKIE_NAME)
    user = await sync_to_async(_user_outside_a_request)(
        headers.get(b"authorization", b"").decode("latin-1"), morsel.value if morsel else None
    )
    return user is not None


class BodyLimitMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        upload = _is_upload(scope["path"])
        limit = _limit(upload)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await _answer(send, 400, "parse_error", "Invalid Content-Length header.")
            if length > limit:
                return await _answer(send, *_too_large(limit))
        if upload and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            try:
                authenticated = await _authenticated(headers)
            except Exception as exc:
                if (unavailable := service_unavailable(exc)) is None:
                    raise
                # The API's JSON 503, not the server's plain-text 500.
                return await _answer(send, 503, *unavailable, (b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
            if not authenticated:
                return await _answer(send, 401, "not_authenticated", "Authentication credentials were not provided.",
                                     (b"www-authenticate", b"Token"))

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django sees a disconnect and stops reading; the 413 is sent below.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return dict(message)

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if exceeded and not started:
            await _answer(send, *_too_large(limit))
