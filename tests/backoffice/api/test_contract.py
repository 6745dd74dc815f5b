"""The API validates exactly what ``/api/schema/`` documents (issue 18).

Each case is one the document calls invalid (the API must answer 400 naming the
parameter or key) or valid (the API must accept it), together with the document's
own words for it, so the two cannot drift apart again.
"""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator

from ingestion.models import Year

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def _parameter(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    operation = document["paths"][f"/api/v1/{path}"]["get"]
    return next(p["schema"] for p in operation["parameters"] if p["name"] == name)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("pipelines/?year=0.5", "year"),
        ("jobs/?year=0.5", "year"),
        ("jobs/stats/?year=0.5", "year"),
        ("pipelines/?year=", "year"),
        ("jobs/?state=", "state"),
        ("pipelines/?has_errors=maybe", "has_errors"),
        ("pipelines/?since=", "since"),
        ("alerts/?kind=", "kind"),
        ("years/2025/totals/?unit=", "unit"),
        ("years/2025/totals/?module=", "module"),
        ("pipelines/active/?year=", "year"),
        ("pipelines/active/?year=-1", "year"),
        ("pipelines/?page_size=0", "page_size"),
        ("jobs/?page_size=", "page_size"),
        ("pipelines/?cursor=", "cursor"),
        ("pipelines/?cursor=cD0yMDI1", "cursor"),
        # Found by schemathesis: an integer with a decimal point, and a parameter given twice.
        ("pipelines/?year=2025.0", "year"),
        ("pipelines/active/?year=0.0", "year"),
        ("pipelines/active/?year=false&year=2025", "year"),
        ("jobs/?state=queued&state=running", "state"),
        ("jobs/?job_type=%00x", "job_type"),  # the document's pattern: no U+0000 (PostgreSQL cannot hold it)
    ],
)
def test_a_parameter_the_document_calls_invalid_is_a_400_naming_it(
    client_for: Any, make_pipeline: Any, url: str, name: str
) -> None:
    Year.objects.create(year=2025, is_open=True)
    make_pipeline()
    response = client_for("viewer").get(f"/api/v1/{url}")
    assert response.status_code == 400, response.content
    assert name in response.json()["errors"]


def test_the_document_states_the_parameter_rules(document: dict[str, Any]) -> None:
    # The same declarations that refuse the values above, as a client generator reads them.
    for path in ("pipelines/", "jobs/", "jobs/stats/", "pipelines/active/"):
        assert _parameter(document, path, "year") == {"type": "integer", "minimum": 0, "maximum": 9999}
    assert _parameter(document, "pipelines/", "has_errors") == {"type": "boolean"}
    assert _parameter(document, "jobs/stats/", "since") == {"type": "string", "format": "date-time"}
    assert _parameter(document, "pipelines/", "page_size")["minimum"] == 1
    assert _parameter(document, "alerts/", "kind")["minLength"] == 1
    assert _parameter(document, "years/{year}/totals/", "unit")["minLength"] == 1
    assert "pattern" in _parameter(document, "jobs/", "cursor")


@pytest.mark.parametrize(
    "url",
    [
        "pipelines/?has_errors=false&year=2025",
        "pipelines/?since=0001-01-01T00:00:00%2B05:00",  # before year 1 in UTC: still a valid bound
        "jobs/?until=9999-12-31T23:59:59-05:00",
        "pipelines/?page_size=1000",  # more than the maximum reads as the maximum
        "pipelines/?cursor=0f",
        "pipelines/?cursor=3b1765000000000000",
        "jobs/?module=&q=",
    ],
)
def test_a_value_the_document_calls_valid_is_accepted(client_for: Any, make_pipeline: Any, url: str) -> None:
    make_pipeline()
    assert client_for("viewer").get(f"/api/v1/{url}").status_code == 200


def test_cursor_links_match_the_documented_pattern_and_page_through(
    client_for: Any, make_pipeline: Any, document: dict[str, Any]
) -> None:
    import re

    for _ in range(3):
        make_pipeline()
    client = client_for("viewer")
    first = client.get("/api/v1/pipelines/", {"page_size": 2}).json()
    cursor = re.search(r"cursor=([^&]+)", first["next"]).group(1)  # type: ignore[union-attr]
    assert re.search(_parameter(document, "pipelines/", "cursor")["pattern"], cursor)
    second = client.get(first["next"]).json()
    seen = [p["id"] for p in first["results"] + second["results"]]
    assert len(seen) == len(set(seen)) == 3


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({}, "non_field_errors"),
        ({"is_open": 0}, "is_open"),
        ({"is_open": "true"}, "is_open"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_year_patch_the_document_refuses_is_a_400(client_for: Any, body: dict[str, Any], key: str) -> None:
    Year.objects.create(year=2033, config={"modules": ["headcount"], "module_settings": {}})
    response = client_for("operator").patch("/api/v1/years/2033/", body, format="json")
    assert response.status_code == 400, response.content
    assert key in response.json()["errors"]
    assert Year.objects.get(pk=2033).is_open is False


def test_year_patch_document_says_json_object_with_at_least_one_key(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/v1/years/{year}/"]["patch"]["requestBody"]
    assert list(body["content"]) == ["application/json"]
    assert body["required"] is True
    schema = document["components"]["schemas"][body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]]
    assert schema["minProperties"] == 1
    assert schema["additionalProperties"] is False


def test_a_form_encoded_patch_is_refused_as_the_document_says(client_for: Any) -> None:
    Year.objects.create(year=2033, config={"modules": ["headcount"], "module_settings": {}})
    response = client_for("operator").patch("/api/v1/years/2033/", {"is_open": "false"}, format="multipart")
    assert response.status_code == 415
    response = client_for("operator").post("/api/v1/years/", {"year": "2034"}, format="multipart")
    assert response.status_code == 415
    assert not Year.objects.filter(pk=2034).exists()


def test_control_reason_must_be_a_string(client_for: Any, make_pipeline: Any) -> None:
    pipeline = make_pipeline()
    response = client_for("operator").post(f"/api/v1/pipelines/{pipeline.pk}/cancel/", {"reason": 0}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()["errors"]


@pytest.mark.parametrize(
    ("body", "status", "missing"),
    [
        ({"kind": "recalculate", "module": "headcount"}, 400, "year"),
        ({"kind": "recalculate", "year": 2025}, 400, "module"),
        ({"kind": "unit_sync"}, 400, "year"),
        ({"kind": "noop", "year": "2025"}, 400, "year"),
        ({}, 400, "kind"),
        ({"kind": "noop"}, 202, None),
    ],
)
def test_pipeline_start_needs_the_fields_of_its_kind(
    client_for: Any, document: dict[str, Any], body: dict[str, Any], status: int, missing: str | None
) -> None:
    response = client_for("operator").post("/api/v1/pipelines/", body, format="json")
    assert response.status_code == status, response.content
    if missing:
        assert missing in response.json()["errors"]
    # The document says the same: one variant per kind, each with its required fields.
    schemas = document["components"]["schemas"]
    variants = {name: schemas[name]["required"] for name in ("StartRecalculateRequest", "StartUnitSyncRequest")}
    assert variants == {"StartRecalculateRequest": ["kind", "module", "year"], "StartUnitSyncRequest": ["kind", "year"]}
    assert schemas["PipelineStartInputRequest"]["discriminator"]["propertyName"] == "kind"


def test_live_messages_are_documented_components(document: dict[str, Any]) -> None:
    # SSE frames: event name, id (the seq) and data (JSON of one LiveEvent).
    stream = document["paths"]["/api/v1/pipelines/{pipeline_id}/stream/"]["get"]
    frame = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert frame["properties"]["event"]["enum"] == ["job.update", "pipeline.update"]
    assert frame["properties"]["data"]["x-content-schema"] == {"$ref": "#/components/schemas/LiveEvent"}
    schemas = document["components"]["schemas"]
    assert set(schemas["LiveEvent"]["discriminator"]["mapping"]) == {"job.update", "pipeline.update"}
    assert set(schemas["WebSocketMessage"]["discriminator"]["mapping"]) == {
        "job.update", "pipeline.update", "snapshot", "replayed"
    }
    assert "TypeEnum" in schemas  # the published name of the event type enum is kept


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?after=-7.2e-302", {"HTTP_LAST_EVENT_ID": "5"}),  # each one given is checked, not only the one used
        ("?after=1.0", {}),
        ("", {"HTTP_LAST_EVENT_ID": "+5"}),
        ("", {"HTTP_LAST_EVENT_ID": ""}),
    ],
)
def test_a_stream_position_the_document_calls_invalid_is_a_400(
    client_for: Any, make_pipeline: Any, query: str, headers: dict[str, str]
) -> None:
    pipeline = make_pipeline()
    response = client_for("viewer").get(f"/api/v1/pipelines/{pipeline.pk}/stream/{query}", **headers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_an_unmatched_api_url_with_a_newline_is_a_json_404(client_for: Any) -> None:
    # Found by schemathesis: ``%0A`` in a path parameter slipped past the JSON catch-all.
    response = client_for("operator").post("/api/v1/pipelines/%C3%9A%0A/retry/", {}, format="json")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"config": {"modules": ["headcount"], "module_settings": {"headcount": {"label": "a\x00b"}}}},
        {"config": {"modules": ["headcount"], "module_settings": {"headcount": {"a\x00": 1}}}},
    ],
)
def test_a_nul_character_in_a_json_body_is_a_400_not_a_500(client_for: Any, body: dict[str, Any]) -> None:
    # Found by schemathesis: PostgreSQL cannot store U+0000, so the year's config was a 500.
    Year.objects.create(year=2033, config={"modules": ["headcount"], "module_settings": {}})
    response = client_for("operator").patch("/api/v1/years/2033/", body, format="json")
    assert response.status_code == 400, response.content
    assert "headcount" in response.json()["errors"]["config"]["module_settings"]
    assert Year.objects.get(pk=2033).config["module_settings"] == {}


def test_request_strings_are_documented_without_nul(document: dict[str, Any]) -> None:
    assert _parameter(document, "jobs/", "job_type")["pattern"] == "^[^\\u0000]*$"
    schemas = document["components"]["schemas"]
    reason = schemas["ControlInputRequest"]["properties"]["reason"]  # oneOf: the text, or "" (allow_blank)
    assert reason["oneOf"][0]["pattern"] == "^[^\\u0000]*$"
