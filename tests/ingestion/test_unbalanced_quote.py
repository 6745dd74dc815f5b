"""An unbalanced quote swallows the lines after it into one record: every physical
line is still accounted for (loaded, rejected or skipped), and the row error names the
line range the broken record spans (issue 8.4)."""

from __future__ import annotations

from typing import Any

import pytest

from ingestion import selectors
from ingestion.models import DataEntry, Upload
from tests.ingestion.conftest import YEAR, jobs_of, read_csv, sample

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

HEADER = b"unit_id,det,category,fte,comment\n"
UNITS = sorted({r["unit_id"] for r in read_csv(sample("headcount", "data_entries"))})
PAIRS = [(det, category) for det, cats in (("staff", ("professor", "researcher", "postdoc", "phd_student",
         "technician", "administrative")), ("students", ("bachelor", "master"))) for category in cats]


def good_rows(n: int) -> list[bytes]:
    rows = [f"{u},{d},{c},1.5,ok\n".encode() for u in UNITS for d, c in PAIRS]
    assert len(rows) >= n
    return rows[:n]


def _check_accounting(pipeline: Any, data_lines: int) -> dict[str, Any]:
    ingest = jobs_of(pipeline)["ingest"]
    meta = ingest.meta
    assert meta["rows_total"] == data_lines, ingest.status_message
    assert meta["rows_loaded"] + meta["rows_rejected"] + meta["rows_skipped"] == data_lines
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == meta["rows_loaded"]
    assert Upload.objects.get(pipeline=pipeline).row_count == data_lines
    return meta


def test_a_quote_never_closed_rejects_every_line_it_swallowed(configured_year: Any, load: Any) -> None:
    # Given a 1,491-row file whose second record opens a quote that never closes
    rows = good_rows(1491)
    rows[1] = b'ENG-0001,staff,"professor,1,opened here\n'
    body = HEADER + b"".join(rows)

    # When it is loaded
    pipeline = load("headcount", "data_entries", body)

    # Then row 1 is loaded, and all 1,490 lines from line 3 to the end are rejected, by name
    meta = _check_accounting(pipeline, 1491)
    assert meta["rows_loaded"] == 1 and meta["rows_rejected"] == 1490
    errors = list(selectors.job_row_errors(job_id=jobs_of(pipeline)["ingest"].pk))
    assert len(errors) == 1 and errors[0]["row"] == 2
    assert errors[0]["reason"].startswith("lines 3 to 1492 were read as one record: a quote opened on line 3")
    assert "1,490 rejected" in jobs_of(pipeline)["ingest"].status_message


def test_the_sample_with_a_stray_quote_in_its_second_record_accounts_for_every_line(
    configured_year: Any, load: Any
) -> None:
    # Given the 1,491-row sample whose second record (line 3) opens a quote in its
    # comment; the next quote, in line 9's comment, closes it (the issue's file)
    lines = sample("headcount", "data_entries").read_bytes().split(b"\n")
    assert lines[2].endswith(b",from invoices\r") and b'"' in lines[8] and not any(b'"' in x for x in lines[3:8])
    lines[2] = lines[2].replace(b",from invoices", b',"from invoices')

    # When it is loaded
    pipeline = load("headcount", "data_entries", b"\n".join(lines))

    # Then lines 3-9 are one row error naming them, all 7 counted as rejected, every
    # other row loaded, and rows after it keep their numbers (row N is line N + 1)
    meta = _check_accounting(pipeline, 1491)
    assert meta["rows_rejected"] == 7 and meta["rows_loaded"] == 1484, jobs_of(pipeline)["ingest"].status_message
    error = next(iter(selectors.job_row_errors(job_id=jobs_of(pipeline)["ingest"].pk)))
    assert error["row"] == 2 and error["reason"].startswith("lines 3 to 9 were read as one record")
    loaded_rows = set(DataEntry.objects.filter(year=YEAR, module="headcount").values_list("source_row", flat=True))
    assert {1, 9, 1491} <= loaded_rows and not loaded_rows & set(range(2, 9))
