"""OpenAPI generation tweaks: unique names for nested Input/Output serializers, filter
parameters of non-list views, object constraints declared on serializers, SSE doc."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework.views import APIView

from backoffice.api.serializers import LIVE_EVENTS, WEBSOCKET_MESSAGES

# A string the API stores or filters on cannot hold U+0000 (PostgreSQL refuses it; DRF and
# Django forms answer 400): request strings and query parameters say so.
NUL_FREE = "^[^\\u0000]*$"


class AutoSchema(BaseAutoSchema):
    """Names ``FooView.OutputSerializer`` ``FooOutput`` (each view nests its own serializers).

    Without this every view's ``OutputSerializer`` would collide as one ``Output`` component.
    """

    def get_serializer_name(self, serializer: Any, direction: Any) -> str:
        name = super().get_serializer_name(serializer, direction)
        qualname = type(serializer).__qualname__
        if "." in qualname:
            outer = qualname.split(".")[-2].removesuffix("View").removesuffix("Serializer")
            return f"{outer}{name}"
        return name

    def get_filter_backends(self) -> list[Any]:
        # A view declaring a ``filterset_class`` documents its filters even when it does
        # not answer a list (``/jobs/stats/``): the same FilterSet validates them.
        if self.method == "GET" and getattr(self.view, "filterset_class", None) is not None:
            return list(getattr(self.view, "filter_backends", []))
        return list(super().get_filter_backends())

    def _get_request_for_media_type(self, serializer: Any, direction: str = "request") -> Any:
        # A body that must name at least one key, or pick a variant, is never optional:
        # drf-spectacular only looks at ``required`` properties.
        schema, required = super()._get_request_for_media_type(serializer, direction)
        if isinstance(serializer, PolymorphicProxySerializer) or getattr(serializer, "min_properties", None):
            required = True
        return schema, required

    def _map_serializer_field(self, field: Any, direction: Any, bypass_extensions: bool = False) -> dict[str, Any]:
        # A request string cannot hold U+0000: say so where it has no stricter rule of its own.
        schema: dict[str, Any] = super()._map_serializer_field(field, direction, bypass_extensions)
        plain_string = schema.get("type") == "string" and not {"enum", "pattern", "format"} & set(schema)
        if direction == "request" and plain_string:
            schema = {**schema, "pattern": NUL_FREE}
        return schema

    def _map_basic_serializer(self, serializer: Any, direction: Any) -> dict[str, Any]:
        # Object-level rules a serializer enforces itself (``StrictObjectMixin``) go in the
        # document next to its fields, from the same class attributes.
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)
        if direction == "request":
            if getattr(serializer, "min_properties", 0):
                schema["minProperties"] = serializer.min_properties
            if getattr(serializer, "reject_unknown_keys", False):
                schema["additionalProperties"] = False
        return schema


def add_stream_path(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Document the SSE endpoint (a plain async Django view, invisible to DRF)."""
    result.setdefault("paths", {})["/api/v1/pipelines/{pipeline_id}/stream/"] = {
        "get": {
            "operationId": "v1_pipelines_stream_retrieve",
            "summary": "Server-Sent Events of one pipeline",
            "description": (
                "`text/event-stream`: one frame per event (`id: <seq>`, `event: job.update|pipeline.update`, "
                "`data: <the event JSON, as on /events/>`). Honours the `Last-Event-ID` header (or `?after=`), "
                "sends `: ping` comments as keep-alive and ends when the pipeline is done."
            ),
            "tags": ["v1"],  # with the other operations: one client module
            "parameters": [
                {"name": "pipeline_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "integer", "minimum": 0}},
            ],
            "security": [{"tokenAuth": []}, {"cookieAuth": []}],
            "responses": {
                "200": {
                    "description": "The event stream: one SSE event per stored event (see LiveEvent)",
                    "content": {"text/event-stream": {"schema": {
                        "type": "object",
                        "required": ["id", "event", "data"],
                        "properties": {
                            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's seq"},
                            "event": {"type": "string", "enum": list(LIVE_EVENTS)},
                            # OpenAPI 3.0 has no contentSchema: the JSON inside is named by extension.
                            "data": {
                                "type": "string", "description": "JSON: one LiveEvent",
                                "x-content-media-type": "application/json",
                                "x-content-schema": {"$ref": "#/components/schemas/LiveEvent"},
                            },
                        },
                    }}},
                },
                **{
                    str(code): {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
                    for code, text in ((400, "Bad Last-Event-ID"), (401, "Not authenticated"),
                                       (403, "Not allowed"), (404, "No such pipeline"),
                                       (500, "Unexpected error (JSON, with the request id that is in the log)"),
                                       (503, "PostgreSQL or Redis is unreachable; retry after Retry-After seconds"))
                },
            },
        }
    }
    return result


def add_live_components(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Register the SSE and WebSocket message shapes as components (no DRF view returns them).

    Resolved by the same AutoSchema as every response, from the serializers in
    ``backoffice.api.serializers``; runs before the enum hook so their enums are named alike.
    """
    auto = AutoSchema()
    auto.registry = generator.registry
    auto.method, auto.path, auto.view = "GET", "/", APIView()
    auto.view.request = None  # type: ignore[assignment]  # no request: a public schema
    for name, members in (("LiveEvent", LIVE_EVENTS), ("WebSocketMessage", WEBSOCKET_MESSAGES)):
        proxy = PolymorphicProxySerializer(component_name=name, serializers=members, resource_type_field_name="type")
        auto.resolve_serializer(proxy, "response")
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for key, schema in generator.registry.build({}).get("schemas", {}).items():
        schemas.setdefault(key, schema)
    result["components"]["schemas"] = dict(sorted(schemas.items()))
    return result


# --- OpenAPI links (issue 18) ----------------------------------------------------------------
# Which answer feeds which next call ("create a year → follow its pipeline → its jobs →
# their errors, cancel, retry"): clients and schemathesis's stateful phase chain calls
# through them. Each app declares the links of its own operations next to its views;
# ``add_links`` writes them into the responses and refuses a link to an unknown operation.

_LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """One OpenAPI link; a parameter named ``query__x`` is the query parameter ``x``."""
    named = {key.replace("__", ".", 1) if "__" in key else key: value for key, value in parameters.items()}
    return {"operationId": operation_id, "parameters": named, "description": description}


def declare_links(operation_id: str, status: int, links: dict[str, dict[str, Any]]) -> None:
    _LINKS.setdefault((operation_id, str(status)), {}).update(links)


def pipeline_links(pipeline_id: str) -> dict[str, dict[str, Any]]:
    """Follow a pipeline whose id the answer carries at ``pipeline_id`` (a runtime expression)."""
    return {
        "GetPipeline": link("v1_pipelines_retrieve", "The pipeline's DAG and progress", pipeline_id=pipeline_id),
        "PipelineEvents": link("v1_pipelines_events_retrieve", "Its event history", pipeline_id=pipeline_id),
        "PipelineJobs": link("v1_jobs_list", "Its jobs", query__pipeline=pipeline_id),
        "CancelPipeline": link("v1_pipelines_cancel_create", "Cancel it", pipeline_id=pipeline_id),
        "RetryPipeline": link("v1_pipelines_retry_create", "Retry its failed jobs", pipeline_id=pipeline_id),
    }


def job_links(job_id: str) -> dict[str, dict[str, Any]]:
    """Follow a job whose id the answer carries at ``job_id`` (a runtime expression)."""
    return {
        "GetJob": link("v1_jobs_retrieve", "The job's detail", job_id=job_id),
        "JobErrors": link("v1_jobs_errors.csv_retrieve", "Its row errors as CSV", job_id=job_id),
        "CancelJob": link("v1_jobs_cancel_create", "Cancel it", job_id=job_id),
        "RetryJob": link("v1_jobs_retry_create", "Retry it", job_id=job_id),
        "RecoverJob": link("v1_jobs_recover_create", "Recover it from a lost worker", job_id=job_id),
    }


def add_links(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    operations = {
        op["operationId"]: op
        for item in result.get("paths", {}).values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }
    for (source, status), links in sorted(_LINKS.items()):
        targets = {source} | {entry["operationId"] for entry in links.values()}
        missing = sorted(targets - operations.keys())
        if missing:
            raise ValueError(f"OpenAPI links of {source} name unknown operations: {', '.join(missing)}")
        response = operations[source]["responses"][status]
        response["links"] = dict(sorted({**response.get("links", {}), **links}.items()))
    return result


def add_nul_free_query_strings(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Query parameters are strings the API filters on: none may hold U+0000 (a 400)."""
    for item in result.get("paths", {}).values():
        for op in item.values():
            for param in op.get("parameters", []) if isinstance(op, dict) else []:
                schema = param.get("schema", {})
                plain = schema.get("type") == "string" and not {"enum", "pattern", "format"} & set(schema)
                if param.get("in") == "query" and plain:
                    param["schema"] = {**schema, "pattern": NUL_FREE}
    return result
