"""Atomic replace under failure, concurrent uploads of one module-year, duplicates and
re-runs, and live progress of a big file."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from django.db import connection

from ingestion import selectors, services
from ingestion.models import DataEntry, Upload
from pipelines.models import Job, JobEvent
from pipelines.services import pipeline_cancel
from tests.ingestion.conftest import YEAR, jobs_of, read_csv, sample, upload_bytes, worker_busy
from tests.support.fixtures import read_stored, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

HEADER = "unit_id,det,category,fte,comment\n"
FACTORS = {r["category"]: float(r["kg_co2e_per_unit"]) for r in read_csv(sample("headcount", "factors"))}
UNITS = sorted({r["unit_id"] for r in read_csv(sample("headcount", "data_entries"))})


def headcount_file(seed: int, *, extra_rows: int = 0, marker_at: int | None = None) -> bytes:
    """Every unit x known category, plus ``extra_rows`` rows of categories without factor."""
    rnd = random.Random(seed)
    lines = [HEADER]
    n = 0
    for unit in UNITS:
        for cat in ("professor", "postdoc", "phd_student", "technician"):
            n += 1
            lines.append(f"{unit},staff,{cat},{rnd.randint(1, 400) / 4},{'explode' if n == marker_at else ''}\n")
    for i in range(extra_rows):
        lines.append(f"{UNITS[i % len(UNITS)]},students,unlisted_{i},{rnd.randint(1, 40)},\n")
    return "".join(lines).encode()


def expected_totals(data: bytes) -> dict[str, float]:
    totals: dict[str, float] = {}
    for r in read_csv(data):
        if r["category"] in FACTORS:
            totals[r["unit_id"]] = totals.get(r["unit_id"], 0.0) + float(r["fte"]) * FACTORS[r["category"]]
        else:
            totals.setdefault(r["unit_id"], 0.0)
    return totals


def snapshot() -> list[tuple[Any, ...]]:
    return list(DataEntry.objects.filter(year=YEAR, module="headcount").order_by("id").values_list())


def test_failure_injected_mid_load_leaves_previous_data_exactly_as_it_was(
    configured_year: Any, load: Any
) -> None:
    # Given headcount data and factors are loaded
    assert load("headcount", "factors").status == "success"
    assert load("headcount", "data_entries").status == "success"
    before = snapshot()
    totals_before = selectors.year_totals(year=YEAR, module="headcount")
    # And the database fails on the 600th row the next load inserts (after the old
    # rows were deleted in the same transaction)
    with connection.cursor() as cur:
        cur.execute("""
            CREATE FUNCTION test_fail_mid_load() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.comment = 'explode' THEN
                    RAISE EXCEPTION 'injected failure at source row %', NEW.source_row;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_fail_mid_load BEFORE INSERT ON ingestion_dataentry
                FOR EACH ROW EXECUTE FUNCTION test_fail_mid_load();
        """)
    try:
        # When a new file is uploaded
        pipeline = load("headcount", "data_entries", headcount_file(1, marker_at=600))
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER test_fail_mid_load ON ingestion_dataentry; DROP FUNCTION test_fail_mid_load()")

    # Then the ingest failed in its apply stage, saying why, and nothing downstream ran
    jobs = jobs_of(pipeline)
    assert jobs["ingest"].result == "error"
    assert jobs["ingest"].error["stage"] == "apply"
    assert "injected failure at source row 600" in jobs["ingest"].error["message"]
    assert all(j.result == "skipped" for k, j in jobs.items() if k != "ingest")
    # And the previous data and totals are exactly as they were
    assert snapshot() == before
    assert selectors.year_totals(year=YEAR, module="headcount") == totals_before


def test_two_uploads_of_one_module_year_at_once_both_finish_and_the_later_wins(
    configured_year: Any, load: Any, wait_for_pipeline: Any
) -> None:
    # Given factors are loaded, and two different data files
    assert load("headcount", "factors").status == "success"
    first, second = headcount_file(11, extra_rows=40_000), headcount_file(22, extra_rows=40_000)

    # When both are uploaded at once (the worker runs both ingests in parallel)
    _, pipe_a = upload_bytes(first, module="headcount")
    upload_b, pipe_b = upload_bytes(second, module="headcount")
    done_a = wait_for_pipeline(pipe_a.pk, timeout=120)
    done_b = wait_for_pipeline(pipe_b.pk, timeout=120)

    # Then both pipelines finish without error or deadlock: the later one applied, the
    # earlier one too, or (when the later committed first) it says it was superseded
    assert done_b.status == "success"
    if done_a.status == "superseded":
        assert done_a.phase == f"superseded by upload #{upload_b.pk}"
    for done in (done_a, done_b):
        results = [(j.job_type, j.det, j.result, j.status_message) for j in done.jobs.all()]
        assert done.status in ("success", "superseded"), results
        assert not any("deadlock" in (j.status_message or "").lower() for j in done.jobs.all())
        # with exactly one aggregation each
        assert Job.objects.filter(pipeline=done, job_type="aggregation").count() == 1
    # And the data is the later upload's, whatever order the ingests committed in
    assert set(DataEntry.objects.filter(year=YEAR, module="headcount").values_list("upload_id", flat=True)) == {
        upload_b.pk
    }
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == len(read_csv(second))
    # And the totals are the later file's
    got = {u["unit_id"]: u["kg_co2e"] for u in selectors.year_totals(year=YEAR, module="headcount")["units"]}
    expected = expected_totals(second)
    assert got.keys() == expected.keys()
    for unit, kg in expected.items():
        assert got[unit] == pytest.approx(kg, rel=1e-9)
    # And the totals were not recomputed needlessly: a coalesced aggregation says so
    aggregations = Job.objects.filter(pipeline__in=[done_a, done_b], job_type="aggregation")
    recomputed = [j for j in aggregations if "coalesced_with_pipeline" not in j.meta]
    assert 1 <= len(recomputed) <= 2


def test_the_same_file_uploaded_again_is_recognised_and_loaded_once(configured_year: Any, load: Any) -> None:
    # Given a sample loaded once
    first = load("headcount", "data_entries")
    rows = DataEntry.objects.filter(year=YEAR, module="headcount").count()
    # When the very same file is uploaded again
    again = load("headcount", "data_entries")
    # Then the upload and the job say it is the same file, and there is one copy
    upload_1 = Upload.objects.get(pipeline=first)
    upload_2 = Upload.objects.get(pipeline=again)
    assert upload_2.duplicate_of_id == upload_1.pk and upload_2.sha256 == upload_1.sha256
    ingest = jobs_of(again)["ingest"]
    assert ingest.meta["duplicate_of_upload"] == upload_1.pk
    assert ingest.status_message.startswith(f"Same file as upload #{upload_1.pk} (loaded again). ")
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == rows

    # When the stored file is re-run
    rerun = services.upload_rerun(upload_id=upload_1.pk, actor=None)
    wait_for(lambda: Job.objects.filter(pipeline=rerun).exclude(state="finished").count() == 0, timeout=60)
    # Then it loads again into one copy, from the stored raw file
    assert jobs_of(rerun)["ingest"].result == "success"
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == rows
    assert read_stored(upload_1.stored_name) == sample("headcount", "data_entries").read_bytes()


def test_a_big_file_reports_real_progress_in_a_few_dozen_events(configured_year: Any) -> None:
    # Given a 400,000-row file
    data = headcount_file(5, extra_rows=400_000)
    seen: list[tuple[int, int | None]] = []
    stop = threading.Event()
    # When it is ingested while someone watches the job
    _, pipeline = upload_bytes(data, module="headcount")

    def watch() -> None:
        while not stop.is_set():
            job = Job.objects.filter(pipeline=pipeline, job_type="csv_ingest").first()
            if job is not None and job.state == "running":
                seen.append((job.progress_processed, job.progress_total))
            stop.wait(0.05)
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wait_for(lambda: Job.objects.get(pipeline=pipeline, job_type="csv_ingest").state == "finished", timeout=90)
        wait_for(lambda: not Job.objects.filter(pipeline=pipeline).exclude(state="finished").exists(), timeout=90)
    finally:
        stop.set()
        watcher.join()
    ingest = Job.objects.get(pipeline=pipeline, job_type="csv_ingest")
    # Then it finished with real counts and a real row total
    assert ingest.result == "success"
    assert ingest.meta["rows_loaded"] == len(UNITS) * 4 + 400_000
    assert ingest.progress_total == ingest.meta["rows_total"]
    assert all(t == ingest.progress_total for _, t in seen if t), seen[:20]
    # And the progress events name the phases in order and are a few dozen, not one per row
    events = JobEvent.objects.filter(job=ingest, kind="progress").order_by("seq")
    phases = [e.payload["job"]["progress"]["phase"] for e in events]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == ["loading", "validating", "applying"]
    assert len(phases) <= 60


def test_cancelling_a_running_ingest_leaves_the_previous_data(configured_year: Any, load: Any) -> None:
    # Given loaded data, and a big upload being ingested
    assert load("headcount", "data_entries").status == "success"
    before = snapshot()
    _, pipeline = upload_bytes(headcount_file(9, extra_rows=600_000), module="headcount")
    wait_for(lambda: Job.objects.get(pipeline=pipeline, job_type="csv_ingest").state == "running", timeout=60)

    # When an operator cancels the pipeline mid-run
    pipeline_cancel(pipeline_id=pipeline.pk, actor=None, reason="wrong file")
    wait_for(lambda: Job.objects.filter(pipeline=pipeline).exclude(state="finished").count() == 0, timeout=60)

    # Then every job ended cancelled and the previous data is exactly as it was
    assert set(Job.objects.filter(pipeline=pipeline).values_list("result", flat=True)) == {"cancelled"}
    # (once the worker has noticed and stopped: it must not still be mid-statement when
    # the test database is truncated after this test)
    wait_for(lambda: not worker_busy(), timeout=60)
    assert snapshot() == before


def test_recalculate_pipeline_recomputes_emissions_and_totals(configured_year: Any, load: Any,
                                                              wait_for_pipeline: Any) -> None:
    # Given a module with data and factors
    assert load("headcount", "factors").status == "success"
    assert load("headcount", "data_entries").status == "success"
    totals = selectors.year_totals(year=YEAR, module="headcount")
    # When a recalculation is started by hand
    pipeline = services.pipeline_start_recalculate(year=YEAR, module="headcount", actor=None)
    done = wait_for_pipeline(pipeline.pk, timeout=60)
    # Then one recalc per DET and one aggregation ran, and the totals are the same numbers
    assert done.status == "success" and (done.year, done.module) == (YEAR, "headcount")
    assert sorted(Job.objects.filter(pipeline=done).values_list("job_type", flat=True)) == [
        "aggregation", "emission_recalc", "emission_recalc"
    ]
    again = selectors.year_totals(year=YEAR, module="headcount")
    assert again["modules"][0]["kg_co2e"] == pytest.approx(totals["modules"][0]["kg_co2e"], rel=1e-12)
    assert again["modules"][0]["pipeline_id"] == str(done.pk)
