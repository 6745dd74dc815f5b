"""ASGI entry point: HTTP through Django, WebSockets through Channels.

The Django ASGI app is built before any consumer is imported (consumers import models).
"""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Settings differ in the web process (a bounded connection pool, short Redis retries:
# config/settings.py). The flag is set only while the settings load: a process this one
# starts (a test importing this module starts Celery workers) must not inherit it.
os.environ["SLUICE_WEB_PROCESS"] = "true"
try:
    django_asgi_app = get_asgi_application()
finally:
    os.environ.pop("SLUICE_WEB_PROCESS", None)

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter

from backoffice.consumers import ServerSendMiddleware
from backoffice.ws_origin import OriginValidator
from config.body_limit import BodyLimitMiddleware
from config.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        # Body size and upload authentication checked before Django reads any body.
        "http": BodyLimitMiddleware(django_asgi_app),
        # Origin by scheme, host and port (backoffice.ws_origin), before any session lookup.
        # The server's send kept for the live writers (backoffice.consumers.ServerSendMiddleware).
        "websocket": OriginValidator(ServerSendMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)

# Everything alive now (Django, the apps, every import: ~150k objects) lives as long as
# the process. Frozen, it is no longer walked by each full garbage collection, which
# otherwise paused the event loop -- and every live socket -- ~120 ms at a time on this
# VM (10-40 ms frozen; bench/ws_latency.py, docs/LIVE.md).
gc.freeze()
