"""Year exports (issue 15): through the API, on a real worker, opened with another library
(the csv module, openpyxl) than the one that wrote them; access; retention."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openpyxl
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from rest_framework.test import APIClient

from ingestion.models import Export, Total, Year
from pipelines import retention
from pipelines.models import Pipeline
from tests.ingestion.conftest import YEAR, sample
from tests.support.fixtures import UserFactory, standard_roles

EVIL = "=HYPERLINK(\"http://evil.example\",\"x\")"


def client(user: Any) -> APIClient:
    c = APIClient()
    c.force_login(user)
    return c


def headcount_with_formula() -> bytes:
    """The headcount sample plus one row whose comment a spreadsheet would run."""
    data = sample("headcount", "data_entries").read_bytes().rstrip(b"\n")
    return data + f'\nENG-0001,staff,technician,1.5,"{EVIL.replace(chr(34), chr(34) * 2)}"\n'.encode()


def start_export(api: APIClient, fmt: str, wait_for_pipeline: Callable[..., Pipeline]) -> dict[str, Any]:
    response = api.post(f"/api/v1/years/{YEAR}/exports/", {"format": fmt}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    done = wait_for_pipeline(body["pipeline_id"], timeout=60)
    assert done.status == "success", done.last_error
    detail = api.get(f"/api/v1/exports/{body['export_id']}/").json()
    assert detail["status"] == "success" and detail["percent"] == 100.0
    return detail


def download(api: APIClient, detail: dict[str, Any]) -> bytes:
    response = api.get(detail["file_url"])
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == detail["sha256"] == response["X-Content-SHA256"]
    assert len(body) == detail["size"]
    assert f"sluice-{YEAR}-results-{detail['id']}.{detail['format']}" in response["Content-Disposition"]
    return body


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_year_exports_to_csv_and_xlsx_with_its_totals_entries_and_safe_cells(
    configured_year: Year, load: Callable[..., Pipeline], wait_for_pipeline: Callable[..., Pipeline]
) -> None:
    # Given a year with headcount data (one comment is a formula) and its factors
    assert load("headcount", "factors").status == "success"
    assert load("headcount", "data_entries", headcount_with_formula()).status == "success"
    totals = {(t.module, t.unit_id): t.kg_co2e for t in Total.objects.filter(year=YEAR)}
    entries = len(headcount_with_formula().splitlines()) - 1
    standard_roles()
    operator = client(UserFactory(roles=("operator",)))

    # When an operator exports it to CSV
    detail = start_export(operator, "csv", wait_for_pipeline)
    rows = list(csv.DictReader(io.StringIO(download(operator, detail).decode("utf-8-sig"))))

    # Then every total and every entry is there, with its emissions, and the formula is text
    assert detail["rows"] == len(rows) == len(totals) + entries
    exported = {(r["module"], r["unit_id"]): float(r["kg_co2e"]) for r in rows if r["record"] != "entry"}
    assert exported == pytest.approx(totals)
    entry_rows = [r for r in rows if r["record"] == "entry"]
    assert len(entry_rows) == entries
    assert sum(float(r["kg_co2e"]) for r in entry_rows) == pytest.approx(totals[("headcount", "")])
    evil = [r for r in entry_rows if r["comment"].endswith('"x")')]
    assert [r["comment"] for r in evil] == ["'" + EVIL]
    assert float(evil[0]["kg_co2e"]) == pytest.approx(1.5 * 1400)

    # When it exports to XLSX: the same rows on two sheets, numbers as numbers, text as text
    detail = start_export(operator, "xlsx", wait_for_pipeline)
    book = openpyxl.load_workbook(io.BytesIO(download(operator, detail)), read_only=True)
    assert book.sheetnames == ["Totals", "Data entries"]
    sheet_totals = list(book["Totals"].iter_rows(values_only=True))
    sheet_entries = list(book["Data entries"].iter_rows(values_only=True))
    assert sheet_totals[0][:5] == ("record", "year", "module", "unit_id", "kg_co2e")
    assert {(r[2], r[3] or ""): r[4] for r in sheet_totals[1:]} == pytest.approx(totals)
    assert len(sheet_entries) - 1 == entries
    header = sheet_entries[0]
    comment, kg = header.index("comment"), header.index("kg_co2e")
    assert ["'" + EVIL] == [r[comment] for r in sheet_entries[1:] if (r[comment] or "").endswith('"x")')]
    assert all(isinstance(r[kg], int | float) for r in sheet_entries[1:])  # numbers, not text

    # And retention removes an old export with its stored file
    export = Export.objects.get(pk=detail["id"])
    assert default_storage.exists(export.stored_name)
    Pipeline.objects.filter(kind="export").update(finished_at=timezone.now() - timedelta(days=400))
    state = retention.purge(cutoff=retention.cutoff_for())
    assert state.deleted["exports"] == 2
    assert not Export.objects.exists() and not default_storage.exists(export.stored_name)
    assert operator.get(detail["file_url"]).status_code == 404


@pytest.mark.django_db
def test_only_unrestricted_users_see_exports_and_only_operators_start_them() -> None:
    # Given a year and an export planned by an operator (no worker: it stays queued)
    standard_roles()
    Year.objects.create(year=YEAR, config={})
    operator = client(UserFactory(roles=("operator",)))
    created = operator.post(f"/api/v1/years/{YEAR}/exports/", {"format": "xlsx"}, format="json").json()
    url = f"/api/v1/exports/{created['export_id']}/"

    # A viewer reads its status but may not start one; the file is not there yet (409)
    viewer = client(UserFactory(roles=("viewer",)))
    assert viewer.get(url).json()["status"] == "not_started"
    assert viewer.get(url).json()["file_url"] is None
    assert viewer.get(url + "file/").status_code == 409
    assert viewer.post(f"/api/v1/years/{YEAR}/exports/", {"format": "csv"}, format="json").status_code == 403
    # A module-restricted operator neither sees it nor starts one (an export spans every module)
    granted = client(UserFactory(roles=("module operator",), modules=("headcount",)))
    assert granted.get(url).status_code == 404
    assert granted.get(url + "file/").status_code == 404
    assert granted.post(f"/api/v1/years/{YEAR}/exports/", {"format": "csv"}, format="json").status_code == 403
    # Bad input names the field; an unknown year is a 404
    bad = operator.post(f"/api/v1/years/{YEAR}/exports/", {"format": "pdf"}, format="json")
    assert bad.status_code == 400 and "format" in bad.json()["errors"]
    assert operator.post("/api/v1/years/2031/exports/", {"format": "csv"}, format="json").status_code == 404
