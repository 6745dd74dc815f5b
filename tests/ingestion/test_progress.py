"""Progress tells the truth to the end: an ingest's percentage covers every phase, and
every finished job reads "done" (real worker, real PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.models import JobEvent
from tests.ingestion.conftest import jobs_of, read_csv, sample, upload_bytes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _data_file(rows: int) -> bytes:
    units = sorted({r["unit_id"] for r in read_csv(sample("headcount", "data_entries"))})
    lines = ["unit_id,det,category,fte,comment\n"]
    lines += [f"{units[i % len(units)]},staff,professor,{1 + i % 7},\n" for i in range(rows)]
    return "".join(lines).encode()


def test_ingest_percentage_covers_every_phase_and_finished_jobs_read_done(
    configured_year: Any, load: Any, wait_for_pipeline: Any, client: Any, admin_user: Any
) -> None:
    # Given factors, and a data file being ingested
    assert load("headcount", "factors").status == "success"
    _, pipeline = upload_bytes(_data_file(30_000), module="headcount")
    done = wait_for_pipeline(pipeline.pk, timeout=90)
    assert done.status == "success"
    ingest = jobs_of(done)["ingest"]

    # Then the ingest's live percentage, as every client saw it, went up through every
    # phase and reached 100 only once the job was finished
    seen = [
        (e.payload["job"]["state"], e.payload["job"]["progress"]["phase"], e.payload["job"]["progress"]["percent"])
        for e in JobEvent.objects.filter(job=ingest).order_by("seq")
    ]
    running = [(phase, pct) for state, phase, pct in seen if state == "running" and pct is not None]
    percents = [pct for _, pct in running]
    assert percents == sorted(percents), seen
    assert all(pct < 100 for pct in percents), seen
    at = {phase: pct for phase, pct in reversed(running)}  # the first percentage of each phase
    assert at["loading"] < at["validating"] < at["applying"] < 100, seen
    # And it moved inside validation (statement by statement) and inside the apply's
    # transaction (slice by slice of its insert), not only when each phase began
    for phase in ("validating", "applying"):
        assert len({pct for p, pct in running if p == phase}) >= 2, (phase, seen)
    assert seen[-1] == ("finished", "done", 100.0)

    # And every finished job (ingest, recalcs, aggregation) reads "done", in the API too
    client.force_login(admin_user)
    for job in done.jobs.all():
        assert job.phase == "done", (job.job_type, job.phase)
        body = client.get(f"/api/v1/jobs/{job.pk}/").json()
        assert body["progress"]["phase"] == "done" and body["progress"]["percent"] == 100.0
