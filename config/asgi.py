"""ASGI entry point: HTTP through Django, WebSockets through Channels.

The Django ASGI app is built before any consumer is imported (consumers import models).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The web process uses a bounded connection pool (config/settings.py, docs/RELIABILITY.md).
# Set only while the settings load: a process this one starts (a test importing this
# module starts Celery workers) must not inherit it.
_pool_by_default = "SLUICE_DB_POOL" not in os.environ
if _pool_by_default:
    os.environ["SLUICE_DB_POOL"] = "true"
try:
    django_asgi_app = get_asgi_application()
finally:
    if _pool_by_default:
        os.environ.pop("SLUICE_DB_POOL", None)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
