"""The ``aggregation_amplified`` alert, read from the trigger-kept suspects (migration
``aggregation_suspects``), reports exactly what the rule over every aggregation does.

Real PostgreSQL: the trigger, its year lock and the GiST probe are the database's.
The reference is the alert's former query (a window over all of the day's
aggregations), written out in SQL here.
"""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from pipelines import alerts, counters
from pipelines.models import Job, JobState, Pipeline
from pipelines.services import JobSpec, job_claim, pipeline_plan
from tests.backoffice.live.conftest import no_dispatch  # noqa: F401 - a fixture
from tests.support.fixtures import small_dag, wait_for

MODULES = ("headcount", "buildings")
YEARS = (2040, 2041)

# The rule, over all of the window's aggregations (the user's modules applied to both
# sides of each pair): doubled in a pipeline, or starting before the latest end among
# the runs of its year that started earlier (a running one ends "now").
REFERENCE = """
WITH agg AS (
    SELECT j.id, j.pipeline_id, j.pipeline_year, j.started_at, j.finished_at
    FROM pipelines_job j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
    WHERE j.job_type = 'aggregation' AND j.created_at >= %(since)s
      AND (%(module)s::text IS NULL OR p.module = %(module)s::text)
)
SELECT id FROM agg WHERE pipeline_id IN (SELECT pipeline_id FROM agg GROUP BY 1 HAVING count(*) > 1)
UNION
SELECT id FROM (
    SELECT id, started_at, max(coalesce(finished_at, statement_timestamp())) OVER (
        PARTITION BY pipeline_year ORDER BY started_at, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS earlier_end
    FROM agg WHERE started_at IS NOT NULL AND pipeline_year IS NOT NULL
) runs WHERE earlier_end > started_at
"""


def _reference(module: str | None) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(REFERENCE, {"since": timezone.now() - timedelta(hours=24), "module": module})
        return {row[0] for row in cursor.fetchall()}


def _reported(module: str | None) -> set[int]:
    jobs = Job.objects.filter(pipeline__module=module) if module else Job.objects.all()
    return set(alerts.alert_jobs("aggregation_amplified", jobs).values_list("pk", flat=True))


def _steps(rng: random.Random, job_id: int, base: Any) -> list[dict[str, Any]]:
    """What the engine (and, rarely, a hand) writes to one aggregation, in order."""
    start = base + timedelta(minutes=rng.uniform(0, 120))
    steps: list[dict[str, Any]] = [{"started_at": start, "finished_at": None, "state": JobState.RUNNING}]
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        roll = rng.random()
        end = start + timedelta(minutes=rng.uniform(0.2, 25))
        if roll < 0.55:  # finish (now or, with the clock of another host, a little ahead)
            steps.append({"finished_at": end, "state": JobState.FINISHED})
            if rng.random() < 0.4:  # ... and its end put later, or cleared, by hand
                steps.append({"finished_at": rng.choice((None, end + timedelta(minutes=rng.uniform(5, 40))))})
        elif roll < 0.75:  # retry: reset, then a later claim
            steps.append({"started_at": None, "finished_at": None, "state": JobState.NOT_STARTED})
            start = end
            steps.append({"started_at": start, "state": JobState.RUNNING})
        elif roll < 0.9:  # taken over by another worker: a new start
            start = start + timedelta(minutes=rng.uniform(0, 10))
            steps.append({"started_at": start})
        else:  # a finish stamped before the start (clock skew between hosts)
            steps.append({"finished_at": start - timedelta(seconds=5), "state": JobState.FINISHED})
    if rng.random() < 0.15:  # created before the alert's window
        steps.append({"created_at": timezone.now() - timedelta(hours=30)})
    return [{"id": job_id, **step} for step in steps]


@pytest.mark.parametrize("seed", range(4))
def test_suspects_give_exactly_the_rule_over_all_aggregations(db: Any, seed: int) -> None:
    rng = random.Random(seed)
    base = timezone.now() - timedelta(hours=3)
    pending: list[list[dict[str, Any]]] = []
    for _ in range(26):
        pipeline = small_dag(width=1, year=rng.choice((*YEARS, None)), module=rng.choice(MODULES))
        ids = list(pipeline.jobs.order_by("id").values_list("pk", flat=True))
        doubled = rng.random() < 0.12
        chosen = ids[-2:] if doubled else ids[-1:]
        Job.objects.filter(pk__in=chosen).update(job_type="aggregation")
        pending += [_steps(rng, pk, base) for pk in chosen]
    # Interleaved across jobs, one UPDATE per step, as concurrent pipelines would write.
    while pending:
        steps = rng.choice(pending)
        step = steps.pop(0)
        Job.objects.filter(pk=step.pop("id")).update(**step)
        if not steps:
            pending.remove(steps)
    # An operator moves one pipeline to the other year: its aggregation follows.
    moved = Pipeline.objects.filter(year=YEARS[0]).order_by("?").first()
    if moved is not None:
        Pipeline.objects.filter(pk=moved.pk).update(year=YEARS[1])

    everything = _reference(None)
    assert _reported(None) == everything
    for module in MODULES:
        assert _reported(module) == _reference(module), module
    # Not vacuous: the histories hold both kinds of pairs and runs that are in none.
    aggregations = Job.objects.filter(job_type="aggregation").count()
    assert 0 < len(everything) < aggregations
    # And the kept suspects hold every pair a full recount finds (sluice_counters --check).
    assert counters.check()[counters.SUSPECTS_TABLE] == []


def test_check_names_missing_suspects_and_rebuild_restores_them(db: Any) -> None:
    """If the table was emptied by hand (or the trigger disabled), the repair command says
    so and refills it; the alert reports the pair again."""
    pipeline = pipeline_plan(kind="test", year=2040, module="headcount", specs=[
        JobSpec("first", "aggregation"), JobSpec("second", "aggregation", depends_on=("first",)),
    ])
    ids = sorted(pipeline.jobs.values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_aggregation_suspect")
    assert not _reported(None)
    assert sorted(counters.check()[counters.SUSPECTS_TABLE]) == [(pk, 0, 1) for pk in ids]
    counters.rebuild()
    assert counters.check()[counters.SUSPECTS_TABLE] == []
    assert _reported(None) == set(ids)


@pytest.mark.parametrize("new_end", ["later", "cleared"])
def test_an_earlier_run_whose_end_moves_past_a_later_start_makes_it_reported(db: Any, new_end: str) -> None:
    """Not at a claim: the pair appears when a finished run's end is put later (or cleared)."""
    now = timezone.now()
    earlier, later = (small_dag(width=0, year=2040, module="headcount").jobs.order_by("id").first() for _ in "ab")
    Job.objects.filter(pk__in=[earlier.pk, later.pk]).update(job_type="aggregation")
    Job.objects.filter(pk=earlier.pk).update(started_at=now - timedelta(minutes=20),
                                            finished_at=now - timedelta(minutes=19))
    Job.objects.filter(pk=later.pk).update(started_at=now - timedelta(minutes=10),
                                          finished_at=now - timedelta(minutes=9))
    assert not _reported(None)
    Job.objects.filter(pk=earlier.pk).update(
        finished_at=now - timedelta(minutes=5) if new_end == "later" else None)
    assert _reported(None) == {later.pk} == _reference(None)


def test_a_pipeline_planned_with_two_aggregations_is_reported(db: Any) -> None:
    pipeline = pipeline_plan(kind="test", year=2040, module="headcount", specs=[
        JobSpec("first", "aggregation"), JobSpec("second", "aggregation", depends_on=("first",)),
    ])
    small_dag(width=1, year=2040, module="headcount")  # one aggregation-free neighbour
    body = alerts.alert_summary(jobs=Job.objects.all(), kinds=["aggregation_amplified"])
    assert body["counts"] == {"aggregation_amplified": 2}
    assert {item["pipeline_id"] for item in body["items"]} == {str(pipeline.pk)}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_dispatch")
def test_two_aggregations_of_a_year_claimed_at_once_are_reported() -> None:
    """Claimed by two workers at the same moment: the second claim's check waits for the
    first one to commit (the year lock), so it sees the first run and the overlap is
    reported. Without the lock each would look while the other's start is uncommitted."""
    first, second = (small_dag(width=0, year=2040, module="headcount") for _ in range(2))
    ids = [p.jobs.order_by("id").values_list("pk", flat=True)[0] for p in (first, second)]
    Job.objects.filter(pk__in=ids).update(job_type="aggregation")
    claimed, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def first_worker() -> None:
        try:
            with transaction.atomic():
                outcome["first"] = job_claim(job_id=ids[0], task_id="t-first", worker="w1").reason
                claimed.set()
                release.wait(30)
        finally:
            connection.close()

    def second_worker() -> None:
        try:
            outcome["second"] = job_claim(job_id=ids[1], task_id="t-second", worker="w2").reason
        finally:
            connection.close()

    threads = [threading.Thread(target=first_worker), threading.Thread(target=second_worker)]
    threads[0].start()
    try:
        assert claimed.wait(30)
        threads[1].start()
        wait_for(_waiting_on_a_lock, timeout=15, message="the second claim waiting for the first to commit")
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert outcome == {"first": "claimed", "second": "claimed"}
    reported = alerts.alert_jobs("aggregation_amplified", Job.objects.all())
    assert list(reported.values_list("pk", flat=True)) == [ids[1]]  # started while the first runs


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        cursor.execute("""SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND wait_event_type = 'Lock'""")
        return cursor.fetchone()[0] > 0
