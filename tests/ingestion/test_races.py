"""Uploads racing in one module-year: totals never mix two files (issue 12.4), and two
identical files uploaded at once are flagged as duplicates of each other (12.6)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ingestion import selectors, services
from ingestion.models import ModuleState, Total, Upload
from pipelines import dispatch
from pipelines.models import Job, Pipeline
from tests.ingestion.conftest import YEAR, jobs_of, read_csv, sample, upload_bytes
from tests.support.fixtures import read_stored
from workers.runner import execute_job

pytestmark = pytest.mark.django_db(transaction=True)

HEADER = "unit_id,det,category,fte,comment\n"
FACTORS = {
    (r["det"], r["category"]): float(r["kg_co2e_per_unit"]) for r in read_csv(sample("headcount", "factors"))
}
UNITS = sorted({r["unit_id"] for r in read_csv(sample("headcount", "data_entries"))})[:40]


def two_det_file(seed: int) -> bytes:
    """Rows of both DETs of headcount (staff and students), every category with a factor."""
    rnd = random.Random(seed)
    lines = [HEADER]
    for unit in UNITS:
        for det, category in FACTORS:
            lines.append(f"{unit},{det},{category},{rnd.randint(1, 400) / 4},\n")
    return "".join(lines).encode()


def module_total(data: bytes) -> float:
    return sum(float(r["fte"]) * FACTORS[(r["det"], r["category"])] for r in read_csv(data))


def published_total() -> float | None:
    row = Total.objects.filter(year=YEAR, module="headcount", unit_id="").first()
    return row.kg_co2e if row else None


def run(job: Job) -> None:
    """Deliver one job in this process, as a worker would (the test picks the order)."""
    execute_job(job_id=job.pk, task_id=f"test-{job.pk}-{job.attempts}", worker="race-test")
    job.refresh_from_db()
    assert job.state == "finished", (job.result, job.status_message)


def run_pipeline(pipeline: Pipeline) -> None:
    while queued := list(Job.objects.filter(pipeline=pipeline, state="queued").order_by("id")):
        for job in queued:
            run(job)


def recalc(pipeline: Pipeline, det: str) -> Job:
    return Job.objects.get(pipeline=pipeline, job_type="emission_recalc", det=det)


@pytest.fixture
def in_process_year(monkeypatch: Any) -> Callable[[Pipeline], None]:
    """A configured year with factors, every job run in this process (nothing dispatched)."""
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)
    _, sync = services.year_create(year=YEAR, actor=None)
    run_pipeline(sync)
    with open(sample("headcount", "factors"), "rb") as f:
        _, factors = services.upload_create(
            year=YEAR, module="headcount", target="factors", file=f, filename="factors.csv", actor=None
        )
    run_pipeline(factors)
    return run_pipeline


def test_an_aggregation_whose_recalcs_read_two_uploads_publishes_one_file(in_process_year: Any) -> None:
    # Given file A is loaded and its totals published
    file_a, file_b = two_det_file(1), two_det_file(2)
    _, first = upload_bytes(file_a, module="headcount")
    in_process_year(first)
    assert published_total() == pytest.approx(module_total(file_a))

    # When A is uploaded again (pipeline P) and, between P's two recalcs, B is applied
    _, p = upload_bytes(file_a, module="headcount")
    run(jobs_of(p)["ingest"])
    run(recalc(p, "staff"))  # reads A
    _, q = upload_bytes(file_b, module="headcount")
    run(jobs_of(q)["ingest"])  # B applied
    run(recalc(p, "students"))  # reads B
    mixed = recalc(p, "staff").meta["kg_co2e"] + recalc(p, "students").meta["kg_co2e"]
    assert mixed != pytest.approx(module_total(file_a)) and mixed != pytest.approx(module_total(file_b))
    aggregate = jobs_of(p)["aggregate"]
    run(aggregate)

    # Then P's aggregation publishes B's totals (the data in place), not the mix, and
    # says it recomputed the DET that had read A
    aggregate.refresh_from_db()
    assert published_total() == pytest.approx(module_total(file_b)), aggregate.status_message
    assert aggregate.meta["kg_co2e"] == pytest.approx(module_total(file_b))
    assert aggregate.meta["refreshed_dets"] == ["staff"]
    assert "staff recomputed from the current data" in aggregate.status_message
    units = {u["unit_id"]: u["kg_co2e"] for u in selectors.year_totals(year=YEAR, module="headcount")["units"]}
    assert sum(units.values()) == pytest.approx(module_total(file_b))
    assert selectors.module_incomplete_reasons(year=YEAR, module="headcount") == []

    # And B's own pipeline ends with the same totals, current
    in_process_year(q)
    assert published_total() == pytest.approx(module_total(file_b))
    assert selectors.module_incomplete_reasons(year=YEAR, module="headcount") == []


@pytest.mark.worker
def test_concurrent_uploads_on_a_real_worker_publish_only_whole_file_totals(
    configured_year: Any, load: Any, wait_for_pipeline: Any
) -> None:
    # Given factors, and two files whose totals differ
    assert load("headcount", "factors").status == "success"
    files = [two_det_file(11), two_det_file(22)]
    whole = [module_total(f) for f in files]

    # When 12 uploads alternating the two files are made at once
    pipelines = [upload_bytes(files[i % 2], module="headcount")[1] for i in range(12)]
    for p in pipelines:
        wait_for_pipeline(p.pk, timeout=180)

    # Then every total an aggregation published is one whole file's, never a mix
    aggregations = Job.objects.filter(pipeline__in=pipelines, job_type="aggregation", result="success")
    published = [j.meta["kg_co2e"] for j in aggregations if "coalesced_with_pipeline" not in j.meta]
    assert published, "at least one aggregation published"
    for kg in published:
        assert kg == pytest.approx(whole[0]) or kg == pytest.approx(whole[1]), (kg, whole)
    # And the totals in place are those of the data in place, and current
    state = ModuleState.objects.get(year=YEAR, module="headcount")
    in_place = Upload.objects.get(pk=state.data_upload_id)
    assert published_total() == pytest.approx(whole[files.index(read_stored(in_place.stored_name))])
    assert selectors.module_incomplete_reasons(year=YEAR, module="headcount") == []


@pytest.mark.worker
def test_identical_files_uploaded_at_once_are_flagged_as_duplicates(configured_year: Any) -> None:
    # Given one file, uploaded by 8 clients at the same instant
    data = two_det_file(3)
    start = threading.Barrier(8)
    made: list[int] = []
    errors: list[BaseException] = []

    def upload() -> None:
        from django.db import connection

        try:
            start.wait()
            made.append(upload_bytes(data, module="headcount")[0].pk)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors

    # Then exactly one is the original and every other names an earlier identical upload
    uploads = list(Upload.objects.filter(pk__in=made).order_by("id"))
    assert len(uploads) == 8
    assert uploads[0].duplicate_of_id is None
    for later in uploads[1:]:
        assert later.duplicate_of_id is not None and later.duplicate_of_id < later.pk
    # (and the ingest jobs say so)
    for later in uploads[1:]:
        ingest = Job.objects.get(pipeline_id=later.pipeline_id, job_type="csv_ingest")
        assert ingest.params["duplicate_of_upload"] == later.duplicate_of_id
