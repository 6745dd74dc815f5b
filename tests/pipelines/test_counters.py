"""The trigger-kept job counters (``pipelines.counters``) equal a direct count of the jobs.

The first test runs real pipelines on the session's real Celery worker through every
ending the engine has (success, warning, failure with a skipped downstream, cancel
while running, retry after a failure), then compares every kept count with the slow,
direct ``GROUP BY`` — and what ``/jobs/stats/`` and the console's cards show with
the same figures computed straight from the jobs. The supersede ending is checked
in tests/ingestion/test_superseded.py (it needs an ingest).
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from pipelines import counters, services
from pipelines.models import Job, Pipeline
from pipelines.services import JobSpec
from tests.conftest import wait_until


def plan(*, width: int, year: int | None = None, module: str = "") -> Pipeline:
    """A 1 -> width DAG; in a rolled-back test transaction its messages are never sent."""
    specs = [JobSpec("start", "noop")]
    specs += [JobSpec(f"mid{i}", "noop", det=f"part{i}", depends_on=("start",)) for i in range(width)]
    return services.pipeline_plan(kind="test", specs=specs, year=year, module=module)


def _no_drift() -> bool:
    return not any(counters.check().values())


def _direct_stats(jobs: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for field in ("state", "result", "job_type", "queue"):
        rows = jobs.order_by().values(field).annotate(n=Count("id"))
        out[field] = {(r[field] if r[field] is not None else "none"): r["n"] for r in rows}
    return out


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_counters_equal_the_jobs_after_real_pipelines_end_every_way(
    celery_worker: Any, wait_for_pipeline: Any, effect_table: Any, admin_client: Any
) -> None:
    # Given pipelines that end in every way the engine knows, run by a real worker
    ok = services.pipeline_start_noop(width=2)
    warned = services.pipeline_plan(kind="test", year=2031, module="energy", specs=[JobSpec("a", "test_warn")])
    failed = services.pipeline_plan(
        kind="test", year=2031, module="travel",
        specs=[JobSpec("a", "noop"), JobSpec("bad", "test_fail", depends_on=("a",)),
               JobSpec("end", "noop", depends_on=("bad",))],
    )
    retried = services.pipeline_plan(
        kind="test", year=2032, module="energy",
        specs=[JobSpec("a", "test_fail_once"), JobSpec("b", "noop", depends_on=("a",))],
    )
    cancelled = services.pipeline_plan(
        kind="test", year=2032, module="travel",
        specs=[JobSpec("a", "test_effect", params={"sleep": 3}), JobSpec("b", "noop", depends_on=("a",))],
    )
    running = cancelled.jobs.order_by("id").first()
    wait_until(lambda: Job.objects.get(pk=running.pk).progress_processed >= 1, message="the job to run")
    assert _no_drift(), "counts differ while jobs are queued and running"
    services.pipeline_cancel(pipeline_id=cancelled.pk, actor="op", reason="stop")
    assert wait_for_pipeline(retried.pk).status == "failed"
    services.pipeline_retry(pipeline_id=retried.pk, actor="op")
    statuses = {p: wait_for_pipeline(p.pk, timeout=60).status for p in (ok, warned, failed, retried, cancelled)}
    assert list(statuses.values()) == ["success", "success", "partial", "success", "cancelled"]
    jobs = Job.objects.all()
    assert set(jobs.values_list("result", flat=True)) >= {"success", "warning", "error", "skipped", "cancelled"}

    # Then every kept count equals the direct count
    assert counters.check() == {"pipelines_job_tally": [], "pipelines_job_finish_tally": [],
                                "pipelines_aggregation_suspect": []}
    # And the API's stats show the direct figures, whole and narrowed
    body = admin_client.get("/api/v1/jobs/stats/").json()
    direct = _direct_stats(jobs)
    assert (body["by_state"], body["by_result"], body["by_job_type"], body["by_queue"]) == (
        direct["state"], direct["result"], direct["job_type"], direct["queue"])
    assert body["total"] == jobs.count()
    narrowed = admin_client.get("/api/v1/jobs/stats/", {"year": 2032, "module": "travel"}).json()
    assert narrowed["by_result"] == _direct_stats(jobs.filter(pipeline__year=2032, pipeline__module="travel"))["result"]
    # And compaction changes no figure
    counters.compact()
    assert _no_drift()
    assert admin_client.get("/api/v1/jobs/stats/").json()["by_result"] == direct["result"]


@pytest.mark.django_db
def test_finished_counts_equal_the_direct_window_count_at_every_edge() -> None:
    now = timezone.now()
    pipelines = [plan(width=3, year=2030, module=m) for m in ("energy", "travel")]
    jobs = [j for p in pipelines for j in p.jobs.order_by("id")]
    # Finished at many offsets: inside whole hours, at the window's partial edge hours,
    # in the current hour and in the future (a clock ahead); one retried (result reset).
    offsets = [timedelta(hours=h, minutes=m) for h, m in [(0, 1), (0, 59), (1, 0), (2, 30), (23, 59), (24, 1),
                                                          (30, 0), (-1, 0)]]
    for job, ago, result in zip(jobs, offsets, ["success", "error", "warning", "error", "success", "error",
                                                "cancelled", "success"], strict=True):
        Job.objects.filter(pk=job.pk).update(state="finished", result=result, finished_at=now - ago)
    Job.objects.filter(pk=jobs[1].pk).update(state="queued", result=None)  # retried: finished_at kept, result gone
    for since in [now - timedelta(hours=24), now - timedelta(hours=1), now - timedelta(minutes=30),
                  now - timedelta(hours=26, minutes=7), now + timedelta(hours=2)]:
        for modules in [None, {"energy"}, set()]:
            scoped = Job.objects.all() if modules is None else Job.objects.filter(pipeline__module__in=modules)
            direct = {(r["result"] or "none"): r["n"] for r in scoped.filter(finished_at__gte=since)
                      .order_by().values("result").annotate(n=Count("id"))}
            assert counters.finished_counts(jobs=scoped, since=since, modules=modules) == direct, (since, modules)


@pytest.mark.django_db
def test_deletes_in_any_order_and_moves_keep_the_counts() -> None:
    kept, purged, raw = plan(width=2, year=2030, module="energy"), plan(width=1), plan(width=1, year=2031)
    Job.objects.filter(pipeline=purged).update(state="finished", result="success", finished_at=timezone.now())
    Pipeline.objects.filter(pk=purged.pk).delete()  # the ORM: jobs first, then the pipeline
    with connection.cursor() as cursor:  # a raw purge: the pipeline first (the foreign key is deferred)
        cursor.execute("DELETE FROM pipelines_jobevent WHERE pipeline_id = %s", [raw.pk])
        cursor.execute("DELETE FROM pipelines_pipeline WHERE id = %s", [raw.pk])
        cursor.execute("DELETE FROM pipelines_job_depends_on WHERE from_job_id IN "
                       "(SELECT id FROM pipelines_job WHERE pipeline_id = %s)", [raw.pk])
        cursor.execute("DELETE FROM pipelines_job WHERE pipeline_id = %s", [raw.pk])
    Pipeline.objects.filter(pk=kept.pk).update(year=2029, module="travel")
    assert set(Job.objects.values_list("pipeline_year", flat=True)) == {2029}
    assert _no_drift()
    assert sum(c.n for c in counters.job_counts(year=2029, module="travel")) == 3
    assert counters.job_counts(year=2030) == []


@pytest.mark.django_db
def test_check_reports_drift_and_rebuild_repairs_it() -> None:
    plan(width=2, year=2030, module="energy")
    with connection.cursor() as cursor:  # what a hand edit (or a disabled trigger) would leave
        cursor.execute("INSERT INTO pipelines_job_tally VALUES (2030, 'energy', 'noop', 'default', 'queued', NULL, 5)")
    out = StringIO()
    with pytest.raises(CommandError, match="--rebuild"):
        call_command("sluice_counters", "--check", stdout=out)
    assert "kept 6, jobs 1" in out.getvalue()
    call_command("sluice_counters", "--rebuild", stdout=StringIO())
    assert _no_drift()
    assert sum(c.n for c in counters.job_counts()) == Job.objects.count() == 3
