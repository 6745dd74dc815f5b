"""Years, modules, uploads and totals endpoints (no worker: pipelines are planned, not run)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone

from config.storage import s3_storage
from ingestion.models import Upload, Year
from pipelines.models import OperatorAction, Pipeline
from tests.backoffice.api.conftest import GRANTED_MODULE, OTHER_MODULE

pytestmark = pytest.mark.django_db

HEADER = "unit_id,det,category,fte,comment\n"


@pytest.fixture
def media(tmp_path: Any, settings: Any) -> Any:
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def csv_file(text: str = HEADER + "ENG-0001,staff,researcher,1.5,x\n", name: str = "data.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_modules_and_template(client_for: Any) -> None:
    client = client_for("norole")  # the registry is public to any authenticated user
    modules = client.get("/api/v1/modules/").json()
    keys = {m["key"] for m in modules}
    assert {"headcount", "buildings", "professional_travel", "equipment", "purchases"} <= keys
    headcount = next(m for m in modules if m["key"] == "headcount")
    assert any(c["name"] == "fte" for c in headcount["targets"]["data_entries"])
    template = client.get("/api/v1/modules/headcount/template/data_entries.csv")
    assert template.status_code == 200 and template.content.decode().startswith("unit_id,")
    assert client.get("/api/v1/modules/nope/template/data_entries.csv").status_code == 404
    assert client.get("/api/v1/modules/headcount/template/nope.csv").status_code == 404
    assert client_for(None).get("/api/v1/modules/").status_code == 401


def test_year_create_list_detail(client_for: Any) -> None:
    operator = client_for("operator")
    response = operator.post("/api/v1/years/", {"year": 2031}, format="json")
    assert response.status_code == 201
    assert Pipeline.objects.get(pk=response.json()["pipeline_id"]).kind == "unit_sync"
    assert response.json()["year"]["is_open"] is False
    again = operator.post("/api/v1/years/", {"year": 2031}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "year_exists"
    assert operator.post("/api/v1/years/", {"year": "abc"}, format="json").status_code == 400
    assert operator.post("/api/v1/years/", {"year": 1200}, format="json").status_code == 400
    assert [y["year"] for y in client_for("viewer").get("/api/v1/years/").json()] == [2031]
    # Without back-office permission: open years only; a closed year is invisible.
    assert client_for("norole").get("/api/v1/years/").json() == []
    assert client_for("norole").get("/api/v1/years/2031/").status_code == 404
    detail = client_for("viewer").get("/api/v1/years/2031/").json()
    assert detail["year"] == 2031 and detail["can_open"] is False
    assert len(detail["active_pipeline_ids"]) == 1
    granted = client_for("granted").get("/api/v1/years/2031/").json()
    assert {m["module"] for m in granted["modules"]} == {GRANTED_MODULE}
    assert client_for("viewer").get("/api/v1/years/1999/").status_code == 404


@pytest.mark.parametrize(("who", "status"), [("viewer", 403), ("granted", 403), ("norole", 403), (None, 401)])
def test_year_create_forbidden(who: str | None, status: int, client_for: Any) -> None:
    assert client_for(who).post("/api/v1/years/", {"year": 2032}, format="json").status_code == status


def test_year_open_incomplete_is_409_with_reasons(client_for: Any) -> None:
    Year.objects.create(year=2033, config={"modules": ["headcount"]})
    operator = client_for("operator")
    response = operator.patch("/api/v1/years/2033/", {"is_open": True}, format="json")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "year_incomplete" and "headcount" in body["reasons"]
    assert operator.patch("/api/v1/years/2033/", {}, format="json").status_code == 400
    bad = operator.patch("/api/v1/years/2033/", {"config": {"modules": ["nope"]}}, format="json")
    assert bad.status_code == 400
    ok = operator.patch("/api/v1/years/2033/", {"config": {"modules": ["headcount", "buildings"]}}, format="json")
    assert ok.status_code == 200
    assert client_for("viewer").patch("/api/v1/years/2033/", {"is_open": True}, format="json").status_code == 403


def test_totals(client_for: Any) -> None:
    Year.objects.create(year=2034)
    body = client_for("viewer").get("/api/v1/years/2034/totals/", {"module": "headcount"}).json()
    assert body == {"year": 2034, "kg_co2e": 0, "modules": [], "units": []}
    assert client_for("viewer").get("/api/v1/years/2099/totals/").status_code == 404


def test_upload_accepted(client_for: Any, media: Any) -> None:
    Year.objects.create(year=2035, configured_at=timezone.now())
    response = client_for("granted").post(
        f"/api/v1/years/2035/modules/{GRANTED_MODULE}/uploads/", {"file": csv_file(), "target": "data_entries"}
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert set(body) >= {"upload_id", "pipeline_id", "job_ids"}
    assert len(body["job_ids"]) >= 2
    upload = Upload.objects.get(pk=body["upload_id"])
    assert OperatorAction.objects.filter(action="upload", target_id=str(upload.pk)).exists()
    meta = client_for("viewer").get(f"/api/v1/uploads/{upload.pk}/").json()
    assert meta["original_name"] == "data.csv" and meta["pipeline_id"] == body["pipeline_id"]
    raw = client_for("viewer").get(f"/api/v1/uploads/{upload.pk}/file/")
    assert b"".join(raw.streaming_content).startswith(b"unit_id,")
    assert client_for("granted").get(f"/api/v1/uploads/{upload.pk}/").status_code == 200
    assert client_for("viewer").get("/api/v1/uploads/999999/").status_code == 404
    rerun = client_for("operator").post(f"/api/v1/uploads/{upload.pk}/rerun/")
    assert rerun.status_code == 202


def test_upload_bad_header_is_400_at_once(client_for: Any, media: Any) -> None:
    Year.objects.create(year=2036, configured_at=timezone.now())
    response = client_for("operator").post(
        f"/api/v1/years/2036/modules/{OTHER_MODULE}/uploads/",
        {"file": csv_file("building_id\n", name="b.csv"), "target": "data_entries"},
    )
    assert response.status_code == 400  # header checked at once
    body = response.json()
    assert body["code"] == "bad_header" and "unit_id" in body["detail"]


def test_upload_errors(client_for: Any, media: Any) -> None:
    Year.objects.create(year=2037, configured_at=timezone.now())
    url = f"/api/v1/years/2037/modules/{GRANTED_MODULE}/uploads/"
    operator = client_for("operator")
    assert operator.post(url, {"target": "data_entries"}).status_code == 400
    assert operator.post(url, {"file": csv_file(), "target": "bogus"}).status_code == 400
    not_csv = operator.post(url, {"file": SimpleUploadedFile("x.xlsx", b"PK\x03\x04zip"), "target": "data_entries"})
    assert not_csv.status_code == 415 and not_csv.json()["code"] == "not_csv"
    json_body = operator.post(url, {"target": "data_entries"}, format="json")
    assert json_body.status_code == 415
    with override_settings(SLUICE_UPLOAD_MAX_BYTES=1024):
        big = operator.post(url, {"file": csv_file(HEADER + "ENG-0001,staff,researcher,1.5,x\n" * 100),
                                  "target": "data_entries"})
    assert big.status_code == 413 and big.json()["code"] == "too_large"
    assert operator.post("/api/v1/years/1999/modules/headcount/uploads/",
                         {"file": csv_file(), "target": "data_entries"}).status_code == 404
    assert client_for("viewer").post(url, {"file": csv_file(), "target": "data_entries"}).status_code == 403
    other = f"/api/v1/years/2037/modules/{OTHER_MODULE}/uploads/"
    assert client_for("granted").post(other, {"file": csv_file(), "target": "data_entries"}).status_code == 403


def test_start_recalculate_pipeline(client_for: Any) -> None:
    Year.objects.create(year=2038)
    response = client_for("granted").post(
        "/api/v1/pipelines/", {"kind": "recalculate", "year": 2038, "module": GRANTED_MODULE}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["pipeline"]["kind"] == "recalculate"
    forbidden = client_for("granted").post(
        "/api/v1/pipelines/", {"kind": "recalculate", "year": 2038, "module": OTHER_MODULE}, format="json"
    )
    assert forbidden.status_code == 403
    unknown = client_for("operator").post(
        "/api/v1/pipelines/", {"kind": "recalculate", "year": 1999, "module": "headcount"}, format="json"
    )
    assert unknown.status_code == 404
    sync = client_for("operator").post("/api/v1/pipelines/", {"kind": "unit_sync", "year": 2038}, format="json")
    assert sync.status_code == 202


def test_upload_before_unit_sync_is_409(client_for: Any, media: Any) -> None:
    Year.objects.create(year=2039)
    response = client_for("operator").post(
        f"/api/v1/years/2039/modules/{GRANTED_MODULE}/uploads/", {"file": csv_file(), "target": "data_entries"}
    )
    assert response.status_code == 409 and response.json()["code"] == "year_not_configured"


def test_upload_while_the_file_storage_is_unreachable_is_503_and_nothing_is_created(
    client_for: Any, settings: Any
) -> None:
    Year.objects.create(year=2035, configured_at=timezone.now())
    # The S3 backend pointed at a port where nothing listens: the storage is down
    storage = s3_storage(bucket="sluice", endpoint_url="http://127.0.0.1:9", connect_timeout=0.5, read_timeout=1,
                         max_attempts=1)
    storage["OPTIONS"].update(access_key="k", secret_key="s")
    settings.STORAGES = {**settings.STORAGES, "default": storage}
    response = client_for("granted").post(
        f"/api/v1/years/2035/modules/{GRANTED_MODULE}/uploads/", {"file": csv_file(), "target": "data_entries"}
    )
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "storage_unavailable" and response["Retry-After"]
    assert not Upload.objects.exists() and not Pipeline.objects.exists()
