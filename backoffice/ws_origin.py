"""WebSocket handshakes only from an allowed page: Origin compared by scheme, host and port.

Browsers send cookies with a cross-site WebSocket handshake, so a foreign page could
open the live feeds as the logged-in user (cross-site WebSocket hijacking). An Origin is
allowed when it is exactly this server's own origin (the Host the client connected to,
on a host in ``ALLOWED_HOSTS``, with the scheme the connection really has), or exactly
one of ``SLUICE_WS_ALLOWED_ORIGINS`` (default: ``DJANGO_CSRF_TRUSTED_ORIGINS``).
A refused handshake is closed before it is accepted (HTTP 403 to the browser).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

Origin = tuple[str, str, int]
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value: str) -> Origin | None:
    """``("https", "sluice.example.org", 443)`` for an origin or URL; None if it is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def _secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    # Behind a TLS proxy, trust its header exactly as Django does for HTTP requests.
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        return headers.get(name, b"").decode("latin-1").split(",")[0].strip() == proxy[1]
    return False


def _own_origin(scope: dict[str, Any], headers: dict[bytes, bytes]) -> Origin | None:
    host_header = headers.get(b"host", b"").decode("latin-1")
    domain, port = split_domain_port(host_header)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed_hosts):
        return None
    scheme = "https" if _secure(scope, headers) else "http"
    return scheme, domain.strip("[]"), int(port) if port else DEFAULT_PORTS[scheme]


def origin_allowed(scope: dict[str, Any]) -> bool:
    headers = dict(scope.get("headers") or [])
    origin = parse_origin(headers.get(b"origin", b"").decode("latin-1"))
    if origin is None:
        return False  # no Origin (or "null"): not a page we served
    configured = {parse_origin(o) for o in settings.SLUICE_WS_ALLOWED_ORIGINS}
    return origin in configured or origin == _own_origin(scope, headers)


class OriginValidator:
    """ASGI middleware in front of the WebSocket router."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)
