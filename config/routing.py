"""WebSocket routes: the live feeds (docs/LIVE.md)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from backoffice.consumers import ConsoleConsumer, PipelineConsumer, YearConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/pipelines/", ConsoleConsumer.as_asgi()),
    path("ws/pipelines/<uuid:pipeline_id>/", PipelineConsumer.as_asgi()),
    path("ws/years/<int:year>/", YearConsumer.as_asgi()),
]
