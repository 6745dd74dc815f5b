"""WebSocket routes: the live feeds (docs/LIVE.md)."""

from __future__ import annotations

from typing import Any

from django.urls import path, re_path

from backoffice.consumers import ConsoleConsumer, NotFoundConsumer, PipelineConsumer, YearConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/pipelines/", ConsoleConsumer.as_asgi()),
    path("ws/pipelines/<uuid:pipeline_id>/", PipelineConsumer.as_asgi()),
    path("ws/years/<int:year>/", YearConsumer.as_asgi()),
    # Anything else: closed with 4404 instead of the router's "No route found" error.
    re_path(r"", NotFoundConsumer.as_asgi()),
]
