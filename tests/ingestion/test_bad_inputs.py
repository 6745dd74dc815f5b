"""A corpus of bad inputs: each gives a clear error (at upload time, before any job)
or the expected row errors (from the ingest job), and nothing is half-written."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from ingestion import selectors, services
from ingestion.models import DataEntry, RowError, Upload, Year
from pipelines.models import Pipeline
from tests.ingestion.conftest import YEAR, jobs_of, upload_bytes

HEADER = b"unit_id,det,category,fte,comment\n"
GOOD = b"ENG-0001,staff,professor,2.5,\n"


# --- refused at upload time: no upload row, no pipeline, no job -----------------------------

REFUSED = [
    # (id, bytes, filename, status, code, text the message must contain)
    ("wrong header", b"unit,det,category,ftee\nENG-0001,staff,professor,1\n", "h.csv", 400, "bad_header",
     "missing required column(s): unit_id, fte"),
    ("unknown column", b"unit_id,det,category,fte,colour\nENG-0001,staff,professor,1,red\n", "h.csv", 400,
     "bad_header", "unknown column(s): 'colour'"),
    ("duplicate column", b"unit_id,det,category,fte,fte\nENG-0001,staff,professor,1,1\n", "h.csv", 400,
     "bad_header", "duplicate column(s): fte"),
    ("latin-1 bytes", HEADER + GOOD + "ENG-0007,staff,professor,1,été\n".encode("latin-1"), "l.csv", 400,
     "bad_encoding", "line 3: not valid UTF-8 (byte 0xe9)"),
    ("latin-1 far into the file", HEADER + GOOD * 40000 + "ENG-0007,staff,x,1,café\n".encode("latin-1"),
     "l.csv", 400, "bad_encoding", "line 40002: not valid UTF-8"),
    ("nul bytes", HEADER + b"ENG-0001,staff,pro\x00fessor,1,\n", "n.csv", 400, "bad_encoding", "line 2: NUL byte"),
    ("utf-16", "unit_id,det,category,fte\n".encode("utf-16"), "u.csv", 400, "bad_encoding", "UTF-16"),
    ("truncated utf-8", HEADER + GOOD + b"ENG-0001,staff,x,1,\xc3", "t.csv", 400, "bad_encoding",
     "middle of a UTF-8 character"),
    ("empty file", b"", "e.csv", 400, "empty_file", "the file is empty"),
    ("header only", HEADER, "h.csv", 400, "no_rows", "header but no data rows"),
    ("tab separated", b"unit_id\tdet\tcategory\tfte\nENG-0001\tstaff\tprofessor\t1\n", "t.csv", 400,
     "bad_delimiter", "tab-separated"),
    ("excel workbook", b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 100, "book.csv", 415, "not_csv",
     "Excel workbook"),
    ("not a csv name", HEADER + GOOD, "data.xlsx", 415, "not_csv", "not a CSV file"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("data", "filename", "status", "code", "text"),
                         [pytest.param(*case[1:], id=case[0]) for case in REFUSED])
def test_bad_file_is_refused_at_upload_before_any_job(
    data: bytes, filename: str, status: int, code: str, text: str
) -> None:
    # Given a year
    Year.objects.create(year=YEAR, configured_at=timezone.now())
    # When a bad file is uploaded
    with pytest.raises(services.UploadRejected) as refused:
        upload_bytes(data, module="headcount", filename=filename)
    # Then it is refused with a clear message, and nothing was created
    assert (refused.value.status, refused.value.code) == (status, code)
    assert text in refused.value.message
    assert not Upload.objects.exists()
    assert not Pipeline.objects.exists()


@pytest.mark.django_db
def test_file_over_the_size_limit_is_refused_with_413(settings: Any) -> None:
    Year.objects.create(year=YEAR, configured_at=timezone.now())
    settings.SLUICE_UPLOAD_MAX_BYTES = 10_000
    with pytest.raises(services.UploadRejected) as refused:
        upload_bytes(HEADER + GOOD * 1000, module="headcount")
    assert refused.value.status == 413 and "10,000 bytes" in refused.value.message
    assert not Upload.objects.exists()


@pytest.mark.django_db
def test_unknown_or_unsynced_year_unknown_module_or_target_is_refused() -> None:
    with pytest.raises(services.UploadRejected) as no_year:
        upload_bytes(HEADER + GOOD, module="headcount")
    assert no_year.value.status == 404
    year = Year.objects.create(year=YEAR)
    with pytest.raises(services.UploadRejected) as not_synced:
        upload_bytes(HEADER + GOOD, module="headcount")
    assert (not_synced.value.status, not_synced.value.code) == (409, "year_not_configured")
    year.configured_at = timezone.now()
    year.save()
    with pytest.raises(services.UploadRejected) as no_module:
        upload_bytes(HEADER + GOOD, module="cafeteria")
    assert no_module.value.status == 404 and "cafeteria" in no_module.value.message
    with pytest.raises(services.UploadRejected) as no_target:
        upload_bytes(HEADER + GOOD, module="headcount", target="totals")
    assert no_target.value.status == 400


# --- found by the ingest job: row errors, or a file error naming the line --------------------

ROWS = [
    # (id, body after the header, expected result, expected first row error or message part)
    ("ragged row, too few fields", b"ENG-0001,staff,professor\n" + GOOD, "warning",
     {"row": 1, "column": None, "reason": "expected 5 fields, found 3"}),
    ("ragged row, too many fields", GOOD + b"ENG-0007,staff,professor,1,,extra\n", "warning",
     {"row": 2, "column": None, "reason": "expected 5 fields, found 6"}),
    ("quoted newline", GOOD + b'ENG-0007,staff,"prof\nessor",1,\n', "warning",
     {"row": 2, "column": None, "reason": "lines 3 to 4 were read as one record: a quote opened on line 3 closes "
                                          "only on line 4 (or never); all 2 lines are rejected — check the quotes"}),
    ("unbalanced quote swallows the rest", GOOD + b'ENG-0007,staff,"professor,1,\nENG-0013,staff,x,1,\n',
     "warning", {"row": 2, "column": None,
                 "reason": "lines 3 to 4 were read as one record: a quote opened on line 3 closes only on line 4 "
                           "(or never); all 2 lines are rejected — check the quotes"}),
    ("duplicate key", GOOD + b"ENG-0007,staff,professor,1,\n" + GOOD, "warning",
     {"row": 3, "column": "category", "reason": "duplicate of row 1 (same unit_id, det, category)"}),
    ("unknown unit", GOOD + b"NOPE-9,staff,professor,1,\n", "warning",
     {"row": 2, "column": "unit_id", "reason": 'unknown unit "NOPE-9"'}),
    ("negative quantity", GOOD + b"ENG-0007,staff,professor,-3,\n", "warning",
     {"row": 2, "column": "fte", "reason": 'must be ≥ 0, got "-3"'}),
    ("non-numeric quantity", GOOD + b"ENG-0007,staff,professor,two,\n", "warning",
     {"row": 2, "column": "fte", "reason": 'not a number: "two"'}),
    ("overflowing number", GOOD + b"ENG-0007,staff,professor,1e400,\n", "warning",
     {"row": 2, "column": "fte", "reason": 'not a number: "1e400"'}),
    ("above the maximum", GOOD + b"ENG-0007,staff,professor,20000,\n", "warning",
     {"row": 2, "column": "fte", "reason": 'must be ≤ 10000, got "20000"'}),
    ("unknown det", GOOD + b"ENG-0007,robots,professor,1,\n", "warning",
     {"row": 2, "column": "det", "reason": 'unknown value "robots" (allowed: staff, students)'}),
    ("missing required value", GOOD + b",staff,professor,1,\n", "warning",
     {"row": 2, "column": "unit_id", "reason": "missing (required)"}),
    ("every row rejected", b"ENG-0001,staff,professor,x,\nENG-0007,staff,professor,y,\n", "error",
     "No rows loaded: all 2 rows rejected — first: row 1, fte: not a number"),
    ("a million blank lines", b"\n" * 1_000_000, "error",
     "No rows loaded: the file has no data rows (1,000,000 blank lines skipped)"),
    # PostgreSQL's own CSV parser (the fast path) takes long fields in its stride: the
    # column's length rule rejects the row.
    ("a huge single field", GOOD + b'ENG-0007,staff,"' + b"x" * 300_000 + b'",1,\n', "warning",
     {"row": 2, "column": "category", "reason": "longer than 200 characters"}),
    ("an over-long line", GOOD + b"ENG-0007,staff," + b"y" * 2_000_000 + b",1,\n", "warning",
     {"row": 2, "column": "category", "reason": "longer than 200 characters"}),
    # A blank line sends the file to the Python parser, which caps fields and lines.
    ("a huge field in a file with a blank line", GOOD + b'\nENG-0007,staff,"' + b"x" * 300_000 + b'",1,\n',
     "error", "Nothing loaded: line 4: field larger than field limit (131072)"),
    ("an over-long line in a file with a blank line", GOOD + b"\nENG-0007,staff," + b"y" * 2_000_000 + b",1,\n",
     "error", "Nothing loaded: line 4: longer than 1,048,576 characters"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
@pytest.mark.parametrize(("body", "result", "expected"), [pytest.param(*case[1:], id=case[0]) for case in ROWS])
def test_bad_rows_give_row_errors_and_nothing_half_written(
    configured_year: Any, load: Any, body: bytes, result: str, expected: Any
) -> None:
    # Given the module's sample data is loaded
    assert load("headcount", "data_entries").status in ("success", "partial")
    before = list(DataEntry.objects.filter(year=YEAR, module="headcount").order_by("id").values())
    assert len(before) > 1000

    # When a file with bad content is uploaded
    pipeline = load("headcount", "data_entries", HEADER + body)
    ingest = jobs_of(pipeline)["ingest"]

    # Then the ingest job says what happened
    assert ingest.result == result, ingest.status_message
    after = list(DataEntry.objects.filter(year=YEAR, module="headcount").order_by("id").values())
    if result == "error":
        assert expected in ingest.status_message
        assert "previous data is unchanged" in ingest.status_message or "Nothing loaded" in ingest.status_message
        # and the previous data is exactly as it was
        assert after == before
    else:
        errors = list(selectors.job_row_errors(job_id=ingest.pk))
        assert errors[0] == expected
        assert ingest.meta["row_errors"][0] == expected
        # (a record that swallowed lines is one error row, and all its lines are rejected)
        assert ingest.meta["rows_rejected"] >= len({e["row"] for e in errors}) >= 1
        meta = ingest.meta
        assert meta["rows_loaded"] + meta["rows_rejected"] + meta["rows_skipped"] == meta["rows_total"]
        assert ingest.status_message.startswith(f"{ingest.meta['rows_loaded']:,} rows loaded, ")
        assert f"first: row {expected['row']}" in ingest.status_message
        # and the data is exactly the file's valid rows, nothing else
        assert len(after) == ingest.meta["rows_loaded"] >= 1
        assert {r["upload_id"] for r in after} == {ingest.meta["upload_id"]}
        assert RowError.objects.filter(job_id=ingest.pk).count() == ingest.meta["row_errors_total"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_all_row_errors_are_kept_beyond_the_first_thousand(configured_year: Any, load: Any) -> None:
    # Given a file with 2,500 bad rows and one good one
    bad = b"".join(b"ENG-0001,staff,cat%d,minus,\n" % i for i in range(2500))
    pipeline = load("headcount", "data_entries", HEADER + GOOD + bad)
    ingest = jobs_of(pipeline)["ingest"]
    # Then the job keeps the first 1,000 and every one of them can be exported
    assert ingest.result == "warning"
    assert ingest.meta["rows_rejected"] == 2500
    assert len(ingest.meta["row_errors"]) == 1000
    exported = list(selectors.job_row_errors(job_id=ingest.pk))
    assert len(exported) == 2500
    assert [e["row"] for e in exported] == list(range(2, 2502))
    assert ingest.status_message == '1 rows loaded, 2,500 rejected — first: row 2, fte: not a number: "minus"'


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_bad_factor_rows_are_rejected_and_missing_factors_marked_stale(configured_year: Any, load: Any) -> None:
    # Given the sample factors are loaded
    assert load("headcount", "factors").status == "success"
    # When a factors file repeats a key, has a negative factor and omits the others
    body = (b"det,category,kg_co2e_per_unit,source\nstaff,professor,1900,new\n"
            b"staff,professor,1800,again\nstaff,postdoc,-1,oops\n")
    pipeline = load("headcount", "factors", body)
    ingest = jobs_of(pipeline)["ingest"]
    # Then the good row is upserted, the bad ones named, the rest marked stale
    assert ingest.result == "warning"
    errors = list(selectors.job_row_errors(job_id=ingest.pk))
    assert errors == [
        {"row": 2, "column": "category", "reason": "duplicate of row 1 (same det, category)"},
        {"row": 3, "column": "kg_co2e_per_unit", "reason": 'must be ≥ 0, got "-1"'},
    ]
    assert ingest.meta["factors_upserted"] == 1
    assert ingest.meta["factors_stale"] == 7
    assert "7 factors missing from this file marked stale" in ingest.status_message


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_semicolon_file_with_bom_decimal_commas_spaces_and_capitals_loads_normalised(
    configured_year: Any, load: Any
) -> None:
    body = ("\ufeffunit_id;det;category;fte;comment\nENG-0001;staff;professor;2,5;été\n"
            " ENG-0007 ; Staff;  Professor ;\t1,25 ; trimmed \n").encode()
    pipeline = load("headcount", "data_entries", body)
    assert jobs_of(pipeline)["ingest"].result == "success", jobs_of(pipeline)["ingest"].status_message
    entries = DataEntry.objects.filter(year=YEAR, module="headcount").order_by("source_row")
    assert [(e.unit_id, e.det, e.category, e.activity, e.comment) for e in entries] == [
        ("ENG-0001", "staff", "professor", 2.5, "été"),
        ("ENG-0007", "staff", "professor", 1.25, "trimmed"),
    ]




@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_values_valid_only_once_normalised_and_free_text_that_needs_it_are_normalised_before_judging(
    configured_year: Any, load: Any
) -> None:
    # Given a file where normalising (trim, lower-case) decides validity and duplicates:
    # free text that passes its checks as written, and values that pass only once normal
    body = (HEADER.decode() + "ENG-0001,staff,professor,2.5,\n"
            "ENG-0001,staff,Professor ,3,\n"        # row 2: a duplicate of row 1 once lower-cased
            "ENG-0007,staff,   ,1,\n"                # row 3: a category of blanks is missing
            "ENG-0007,staff,Économie,1, kept \n"     # row 4: non-ASCII capitals lower-cased
            " ENG-0007 ,STAFF, Postdoc, 4 ,\n"      # row 5: valid once trimmed
            "ENG-0007,staff,phd_student, x1 ,\n"     # row 6: still bad once trimmed, named trimmed
            ).encode()
    # When it is ingested
    pipeline = load("headcount", "data_entries", body)
    ingest = jobs_of(pipeline)["ingest"]

    # Then each row is judged on its normalised values
    assert ingest.result == "warning", ingest.status_message
    errors = [(e["row"], e["column"], e["reason"]) for e in selectors.job_row_errors(job_id=ingest.pk)]
    assert errors == [
        (2, "category", "duplicate of row 1 (same unit_id, det, category)"),
        (3, "category", "missing (required)"),
        (6, "fte", 'not a number: "x1"'),
    ]
    entries = DataEntry.objects.filter(year=YEAR, module="headcount").order_by("source_row")
    assert [(e.source_row, e.unit_id, e.det, e.category, e.activity, e.comment) for e in entries] == [
        (1, "ENG-0001", "staff", "professor", 2.5, ""),
        (4, "ENG-0007", "staff", "économie", 1.0, "kept"),
        (5, "ENG-0007", "staff", "postdoc", 4.0, ""),
    ]
