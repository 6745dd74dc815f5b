"""OpenAPI generation tweaks: unique names for nested Input/Output serializers, SSE doc."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema


class AutoSchema(BaseAutoSchema):
    """Names ``FooView.OutputSerializer`` ``FooOutput`` (STYLE: nested serializers per view).

    Without this every view's ``OutputSerializer`` would collide as one ``Output`` component.
    """

    def get_serializer_name(self, serializer: Any, direction: Any) -> str:
        name = super().get_serializer_name(serializer, direction)
        qualname = type(serializer).__qualname__
        if "." in qualname:
            outer = qualname.split(".")[-2].removesuffix("View").removesuffix("Serializer")
            return f"{outer}{name}"
        return name


def add_stream_path(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Document the SSE endpoint (a plain async Django view, invisible to DRF)."""
    result.setdefault("paths", {})["/api/v1/pipelines/{pipeline_id}/stream/"] = {
        "get": {
            "operationId": "api_v1_pipelines_stream_retrieve",
            "summary": "Server-Sent Events of one pipeline",
            "description": (
                "`text/event-stream`: one frame per event (`id: <seq>`, `event: job.update|pipeline.update`, "
                "`data: <the event JSON, as on /events/>`). Honours the `Last-Event-ID` header (or `?after=`), "
                "sends `: ping` comments as keep-alive and ends when the pipeline is done."
            ),
            "tags": ["api"],
            "parameters": [
                {"name": "pipeline_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}},
            ],
            "security": [{"tokenAuth": []}, {"cookieAuth": []}],
            "responses": {
                "200": {
                    "description": "The event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **{
                    str(code): {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
                    for code, text in ((400, "Bad Last-Event-ID"), (401, "Not authenticated"),
                                       (403, "Not allowed"), (404, "No such pipeline"))
                },
            },
        }
    }
    return result
