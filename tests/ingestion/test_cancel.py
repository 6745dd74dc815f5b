"""Cancel stops an ingest inside its running statement, and the data stays as it was
(real worker subprocess, real PostgreSQL)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection

from ingestion.models import DataEntry, ModuleState
from pipelines.models import Job
from pipelines.services import job_cancel
from tests.ingestion.conftest import YEAR, jobs_of, read_csv, sample, upload_bytes, worker_busy
from tests.support.fixtures import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

UNITS = sorted({r["unit_id"] for r in read_csv(sample("headcount", "data_entries"))})
# The statement the test catches running: the apply's insert into the data entries,
# inside the job's effect transaction (where a cancel could leave the most half-written).
APPLY_INSERT = "INSERT INTO ingestion_dataentry"


def _big_file(rows: int) -> bytes:
    lines = ["unit_id,det,category,fte,comment\n"]
    lines += [f"{UNITS[i % len(UNITS)]},students,cat_{i},{1 + i % 40},\n" for i in range(rows)]
    return "".join(lines).encode()


def _running(pattern: str) -> list[int]:
    """Backends of other sessions on the test database running a statement containing ``pattern``."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND pid <> pg_backend_pid() AND strpos(query, %s) > 0",
            [pattern],
        )
        return [pid for (pid,) in cur.fetchall()]


def _entries() -> list[tuple[Any, ...]]:
    return list(DataEntry.objects.filter(year=YEAR, module="headcount").order_by("source_row")
                .values_list("upload_id", "source_row", "unit_id", "category", "activity"))


# A database slow to insert: 10 ms every 100th row, so the apply's insert of the file
# below takes over 30 s unless something stops it.
SLOW_INSERT = """
CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.source_row % 100 = 0 THEN PERFORM pg_sleep(0.01); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_slow_insert BEFORE INSERT ON ingestion_dataentry
    FOR EACH ROW EXECUTE FUNCTION test_slow_insert();
"""


def test_cancel_stops_a_running_insert_within_seconds_and_keeps_the_old_data(
    configured_year: Any, load: Any
) -> None:
    # Given a module-year with data loaded
    assert load("headcount", "data_entries").status == "success"
    before = _entries()
    state_before = ModuleState.objects.values_list("data_upload_id", "data_version").get(year=YEAR, module="headcount")

    # And a 300k-row file whose ingest is inside its apply's insert, a statement that
    # would run for over 30 s
    with connection.cursor() as cur:
        cur.execute(SLOW_INSERT)
    try:
        _, pipeline = upload_bytes(_big_file(300_000), module="headcount")
        ingest = jobs_of(pipeline)["ingest"]
        pids = wait_for(lambda: _running(APPLY_INSERT), timeout=120, interval=0.02,
                        message="the ingest never reached its insert")
        time.sleep(0.5)  # well inside it

        # When an operator cancels the ingest
        asked = time.monotonic()
        job_cancel(job_id=ingest.pk, actor=None, reason="wrong file")

        # Then the statement stops within a few seconds (the watcher polls every 0.5 s
        # and cancels the backend), not when the insert would have ended
        wait_for(lambda: not set(pids) & set(_running(APPLY_INSERT)), timeout=60, interval=0.02)
        stopped_after = time.monotonic() - asked
    finally:
        wait_for(lambda: not worker_busy(), timeout=60)
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER test_slow_insert ON ingestion_dataentry; DROP FUNCTION test_slow_insert()")
    assert stopped_after < 10, f"the insert ran on for {stopped_after:.1f}s after the cancel"

    # And the job reads cancelled, with no error written over it
    ingest.refresh_from_db()
    assert (ingest.state, ingest.result, ingest.error) == ("finished", "cancelled", None)
    # And the module-year's data is exactly the old data: nothing lost, nothing half-written
    assert _entries() == before
    assert ModuleState.objects.values_list("data_upload_id", "data_version").get(
        year=YEAR, module="headcount") == state_before
    # And the worker is free: the next upload goes through
    assert load("headcount", "data_entries").status == "success"
    assert Job.objects.filter(pipeline=pipeline).exclude(state="finished").count() == 0
