"""The OpenAPI document is versioned (issue 18): ``docs/api/openapi.yaml`` is the
published contract, and the live ``/api/schema/`` may only add to it.

A breaking change (a removed path, operation, field or enum value, a newly required
parameter or field, …: ``tests/support/schema_diff.py``) fails until it is made on
purpose: ``make schema`` rewrites the committed copy, and that diff, committed with a
line in docs/API.md *Changes*, is the announcement.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client

from tests.support.schema_diff import breaking_changes

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "api" / "openapi.yaml"
HOW_TO_UPDATE = (
    "If the change is deliberate, run `make schema` to rewrite docs/api/openapi.yaml, commit it and "
    "describe the change under *Changes* in docs/API.md (clients generated from the old copy break)."
)


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return yaml.safe_load(COMMITTED.read_text())


def _live() -> tuple[bytes, dict[str, Any]]:
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    return response.content, yaml.safe_load(response.content)


def test_live_schema_breaks_nothing_in_the_committed_copy(committed: dict[str, Any]) -> None:
    raw, live = _live()
    broken = breaking_changes(committed, live)
    assert not broken, "Unannounced breaking API change(s):\n  " + "\n  ".join(broken) + "\n" + HOW_TO_UPDATE
    if raw != COMMITTED.read_bytes():
        # Additive: clients keep working, but record it so that a later removal is caught.
        warnings.warn("/api/schema/ has additions not in docs/api/openapi.yaml: run `make schema`", stacklevel=1)


# The comparison itself: each breaking edit of the committed copy is reported, additive ones are not.


def _drop(path: str, method: str | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        if method:
            del doc["paths"][path][method]
        else:
            del doc["paths"][path]

    return edit


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]


def _param(doc: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    return next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name)


BREAKING: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "path removed": (_drop("/api/v1/alerts/"), "/api/v1/alerts/: path removed"),
    "operation removed": (_drop("/api/v1/years/", "post"), "POST /api/v1/years/: operation removed"),
    "response field removed": (
        lambda doc: _schemas(doc)["PipelineDetail"]["properties"].pop("progress"),
        "GET /api/v1/pipelines/{pipeline_id}/ 200 body: field 'progress' removed",
    ),
    "enum value removed": (
        lambda doc: _schemas(doc)["StatusEnum"]["enum"].remove("superseded"),
        "enum value(s) removed: 'superseded'",
    ),
    "parameter newly required": (
        lambda doc: _param(doc, "/api/v1/jobs/", "state").update(required=True),
        "GET /api/v1/jobs/: query parameter 'state' is newly required",
    ),
    "request field newly required": (
        lambda doc: _schemas(doc)["StartNoopRequest"].setdefault("required", []).append("year"),
        "POST /api/v1/pipelines/ request body oneOf StartNoopRequest: field 'year' is newly required",
    ),
    "parameter removed": (
        lambda doc: doc["paths"]["/api/v1/jobs/"]["get"]["parameters"].remove(_param(doc, "/api/v1/jobs/", "state")),
        "GET /api/v1/jobs/: query parameter 'state' removed",
    ),
    "type changed": (
        lambda doc: _schemas(doc)["PipelineDetail"]["properties"]["seq"].update(type="string"),
        "GET /api/v1/pipelines/{pipeline_id}/ 200 body.seq: type integer became string",
    ),
}


@pytest.mark.parametrize("change", list(BREAKING))
def test_a_breaking_edit_is_reported(committed: dict[str, Any], change: str) -> None:
    edit, expected = BREAKING[change]
    new = copy.deepcopy(committed)
    edit(new)
    found = breaking_changes(committed, new)
    assert any(expected in line for line in found), found


ADDITIVE: dict[str, Callable[[dict[str, Any]], None]] = {
    "new path": lambda doc: doc["paths"].__setitem__("/api/v1/new/", doc["paths"]["/api/v1/alerts/"]),
    "new optional parameter": lambda doc: doc["paths"]["/api/v1/jobs/"]["get"]["parameters"].append(
        {"in": "query", "name": "colour", "schema": {"type": "string"}}
    ),
    "new response field": lambda doc: _schemas(doc)["PipelineDetail"]["properties"].__setitem__(
        "colour", {"type": "string"}
    ),
    "new enum value": lambda doc: _schemas(doc)["StatusEnum"]["enum"].append("paused"),
    "new description": lambda doc: doc["info"].__setitem__("description", "changed"),
}


@pytest.mark.parametrize("change", list(ADDITIVE))
def test_an_additive_edit_is_not_breaking(committed: dict[str, Any], change: str) -> None:
    new = copy.deepcopy(committed)
    ADDITIVE[change](new)
    assert breaking_changes(committed, new) == []
