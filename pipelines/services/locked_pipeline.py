"""One pipeline, locked, with all its jobs: the working set every transition runs in.

Concurrency rules (read before changing anything in ``pipelines.services``):

1. Lock order is always: pipeline row → job rows → event counter row. Every
   transition locks its pipeline first (``LockedPipeline.lock``), so all writes to one
   pipeline's jobs are serialised and its event sequence is gapless. Work on data
   (ingest, aggregation) takes its own advisory locks *before* reaching the pipeline
   lock at its commit point, and transitions never take data locks, so no cycle forms.
2. Job rows change only through ``LockedPipeline.apply`` (or, for the writes that must
   not wait for the lock — heartbeats — through ``pipelines.transitions.where``
   directly): a compare-and-set UPDATE checked against the transition table before it
   runs. Zero rows means someone else won and the caller backs off.
3. An attempt is identified by ``attempts``: a worker writes only while
   ``state=running AND attempts=<its attempt>``, so a cancelled, recovered or
   taken-over attempt can never write a late result.
4. Celery messages are sent only after commit (``dispatch_on_commit``).
5. One database trigger takes a lock of its own: when an aggregation's ``started_at``
   is set (its claim or take-over), the ``aggregation_amplified`` suspects trigger
   (migration ``0011_aggregation_suspects``) takes a transaction-scoped advisory lock on
   the year (``0x5110, year``), so two aggregations of one year claimed at once see
   each other. It comes after the pipeline and job row locks and before the event
   counter row; a claim takes no other lock after it, so no cycle forms.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from typing import Any

from django.db import transaction
from django.db.models import F, Func, JSONField, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_noop
from psycopg import sql

from pipelines import dag, dispatch, events, messages, transitions
from pipelines.messages import WAITING_WORKER, msg, result_message
from pipelines.models import DONE_STATUSES, Job, JobResult, JobState, Pipeline, PipelineStatus
from pipelines.transitions import IllegalTransition, Transition

Edge = Job.depends_on.through
Adjacency = tuple[dict[int, list[int]], dict[int, list[int]]]


def edges_of(pipeline_id: Any) -> Adjacency:
    """(depends_on, dependents) adjacency of one pipeline."""
    depends_on: dict[int, list[int]] = defaultdict(list)
    dependents: dict[int, list[int]] = defaultdict(list)
    # In edge order: the order downstream jobs are promoted in, and so their events
    # (the SQL path, ``sluice_job_finish``, walks the edges the same way).
    for child, parent in Edge.objects.filter(from_job__pipeline_id=pipeline_id).order_by("id").values_list(
        "from_job_id", "to_job_id"
    ):
        depends_on[child].append(parent)
        dependents[parent].append(child)
    return depends_on, dependents


def job_label(job: Job) -> str:
    return f"{job.job_type}{' ' + job.det if job.det else ''} #{job.pk}"


def dispatch_on_commit(
    job_ids: list[int], *, countdown: float | None = None, plan: dispatch.Plan | None = None
) -> None:
    if not job_ids:
        return
    ids = sorted(set(job_ids))
    transaction.on_commit(lambda: dispatch.send(ids, countdown=countdown, plan=plan), robust=True)


def unfinished_closure(pipeline_id: Any, roots: list[int]) -> list[int]:
    """``roots`` plus their not-yet-finished downstream: the sub-DAG to (re)dispatch."""
    _, dependents = edges_of(pipeline_id)
    wanted = set(roots) | dag.downstream(roots, dependents)
    return list(
        Job.objects.filter(pk__in=wanted).exclude(state=JobState.FINISHED).values_list("pk", flat=True)
    )


@functools.cache
def _jobs_sql(count_keys: tuple[str, ...]) -> str:
    """The job rows of one pipeline with their live-event counts, projected in SQL so a
    transition never loads a job's meta (which may hold a thousand row errors) just to
    publish a few numbers. Composed by psycopg (identifiers and literals quoted by the
    library), kept as the string ``Job.objects.raw`` takes; one per set of registered
    count keys (the keys are known once the apps are ready, not at import)."""
    columns = sql.SQL(", ").join(
        sql.Identifier("j", f.column)
        for f in Job._meta.concrete_fields
        if f.column and f.name not in ("meta", "error", "effect_outcome")
    )
    counts = sql.SQL(", ").join(sql.SQL("{key}, j.meta->{key}").format(key=sql.Literal(key)) for key in count_keys)
    return sql.SQL(
        "SELECT {columns}, jsonb_strip_nulls(jsonb_build_object({counts})) AS counts, "
        "EXISTS (SELECT 1 FROM pipelines_queuestate q WHERE q.name = j.queue AND q.paused) AS queue_paused "
        "FROM pipelines_job j WHERE j.pipeline_id = %s ORDER BY j.id"
    ).format(columns=columns, counts=counts).as_string()


LOCK_BY_JOB_SQL = (
    "SELECT * FROM pipelines_pipeline WHERE id = (SELECT pipeline_id FROM pipelines_job WHERE id = %s) FOR UPDATE"
)


class LockedPipeline:
    """A pipeline row held ``FOR UPDATE`` and all its jobs, loaded once.

    Every UPDATE made through :meth:`apply` is applied to the in-memory rows too, so the
    final status recomputation (:meth:`record_changes`) needs no re-read. While the lock
    is held no other transition can change these jobs (heartbeats write
    ``heartbeat_at`` alone), so the in-memory rows are the rows.
    """

    def __init__(self, pipeline: Pipeline, *, planned: list[Job] | None = None) -> None:
        self.pipeline = pipeline
        if planned is not None:
            # Rows this transaction just inserted (planning): nothing to read back.
            for job in planned:
                job.counts = events.counts_of(job.meta or {})  # type: ignore[attr-defined]
            self.jobs: dict[int, Job] = {j.pk: j for j in planned}
        else:
            # Raw SQL: this runs twice per job, and compiling the equivalent ORM query
            # (annotations, Exists) cost more than executing it (bench/pipeline_overhead.py).
            self.jobs = {j.pk: j for j in Job.objects.raw(_jobs_sql(events.count_keys()), [pipeline.pk])}
        for job in self.jobs.values():
            job.pipeline = pipeline  # no lazy query when a handler reads ctx.year/module
            if isinstance(job.counts, str):  # type: ignore[attr-defined]
                job.counts = json.loads(job.counts)  # type: ignore[attr-defined]
        self.changed: list[tuple[int, str]] = []  # (job id, event kind) to append
        self._edges: Adjacency | None = None

    @classmethod
    def lock(cls, pipeline_id: Any) -> LockedPipeline:
        return cls(Pipeline.objects.select_for_update().get(pk=pipeline_id))

    @classmethod
    def lock_for_job(cls, job_id: int) -> LockedPipeline:
        """Lock the pipeline of ``job_id`` in one statement (FOR UPDATE OF the pipeline only)."""
        rows = list(Pipeline.objects.raw(LOCK_BY_JOB_SQL, [job_id]))
        if not rows:
            raise Job.DoesNotExist(f"job {job_id} does not exist")
        return cls(rows[0])

    @property
    def edges(self) -> Adjacency:
        if self._edges is None:
            self._edges = edges_of(self.pipeline.pk)
        return self._edges

    def ok_to_run(self, job_id: int) -> bool:
        depends_on, _ = self.edges
        return all(
            self.jobs[d].state == JobState.FINISHED and self.jobs[d].result in dag.OK_RESULTS
            for d in depends_on.get(job_id, ())
        )

    def note_planned(self, job_ids: list[int]) -> None:
        """Jobs just inserted by planning (``transitions.PLAN``): each gets its first event."""
        self.changed += [(pk, "state") for pk in job_ids]

    def apply(
        self, transition: Transition, ids: list[int], *, attempt: int | None = None,
        meta_merge: dict[str, Any] | None = None, **values: Any,
    ) -> list[int]:
        """Make ``transition`` on those of ``ids`` it applies to; returns their ids.

        1. The table refuses a column or state the transition does not write
           (``IllegalTransition``), before anything is written.
        2. The rows it applies to are picked from the locked in-memory rows
           (``transitions.holds``): from-state, guard, the caller's attempt.
        3. One compare-and-set UPDATE of those rows with the same condition in SQL
           (``transitions.where``); ``meta_merge`` is merged into ``meta`` by the database.
        """
        if not ids:
            return []
        values = transitions.prepare(transition, values, attempt=attempt)
        if "status_message" in values:
            # A ``Message`` is stored as English text plus its key and parameters.
            values.update(messages.columns(values["status_message"]))
        if meta_merge and "meta" not in transition.writes:
            raise IllegalTransition(f"{transition.name} may not write meta")
        matched = [pk for pk in ids if transitions.holds(transition, self.jobs[pk], attempt=attempt)]
        if not matched:
            return []
        sql_values = dict(values)
        if meta_merge:
            sql_values["meta"] = Func(
                Coalesce(F("meta"), Value({}, JSONField())), Value(meta_merge, JSONField()),
                template="%(expressions)s", arg_joiner=" || ",
            )
        updated = (
            Job.objects.filter(transitions.where(transition, attempt=attempt), pk__in=matched).update(**sql_values)
        )
        if updated == 0:
            return []  # the row moved without the pipeline lock: someone else won
        if updated != len(matched):
            # Some rows but not all: which ones is unknown, so nothing of it may stand.
            raise RuntimeError(f"{transition.name}: jobs {matched} changed outside the pipeline lock")
        for pk in matched:
            job = self.jobs[pk]
            for key, value in values.items():
                setattr(job, key, value)
            if "meta" in values:
                job.counts = events.counts_of(values["meta"] or {})  # type: ignore[attr-defined]
            if meta_merge:
                job.counts = {**(job.counts or {}), **events.counts_of(meta_merge)}  # type: ignore[attr-defined]
                if "meta" not in job.get_deferred_fields():
                    job.meta = {**(job.meta or {}), **meta_merge}
            if transition.event_kind is not None:
                self.changed.append((pk, transition.event_kind))
        return matched

    def record_changes(self, *, pipeline_event: str | None = None) -> None:
        """Recompute the pipeline's denormalised status and append the events.

        Called last in every transition, under the pipeline lock, so the status can
        never drift from the jobs (it is recomputed on every terminal transition). A
        ``pipeline.update`` event is appended when the status changed, or with the
        kind ``pipeline_event`` when given (planning: ``created``).
        """
        pipeline = self.pipeline
        jobs = list(self.jobs.values())
        snaps = [
            dag.JobSnapshot(
                id=j.pk, job_type=j.job_type, state=j.state, result=j.result, det=j.det,
                processed=j.progress_processed, total=j.progress_total, phase=j.phase,
                superseded_by=str((j.counts or {}).get("superseded_by") or ""),  # type: ignore[attr-defined]
            )
            for j in jobs
        ]
        status = dag.pipeline_status(snaps)
        percent, phase = dag.pipeline_progress(snaps)
        now = timezone.now()
        errors = [j for j in jobs if j.result == JobResult.ERROR]
        latest_error = max(errors, key=lambda j: j.finished_at or now, default=None)
        status_changed = status != pipeline.status
        seen: set[tuple[int, str]] = set()
        changed = [c for c in self.changed if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]
        n_events = len(changed) + (1 if status_changed or pipeline_event else 0)
        updates: dict[str, Any] = {
            "status": status,
            "progress_percent": percent,
            "phase": phase[:200],
            "jobs_total": len(jobs),
            "jobs_finished": sum(1 for j in jobs if j.state == JobState.FINISHED),
            "error_count": len(errors),
            "warning_count": sum(1 for j in jobs if j.result == JobResult.WARNING),
            # What the SQL path moves with each transition instead of recounting.
            "jobs_queued": sum(1 for j in jobs if j.state == JobState.QUEUED),
            "jobs_running": sum(1 for j in jobs if j.state == JobState.RUNNING),
            "success_count": sum(1 for j in jobs if j.result == JobResult.SUCCESS),
            "cancelled_count": sum(1 for j in jobs if j.result == JobResult.CANCELLED),
            "superseded_count": sum(1 for s in snaps if s.superseded_by and s.state == JobState.FINISHED),
            "last_error": f"{job_label(latest_error)}: {latest_error.status_message}" if latest_error else "",
            "updated_at": now,
            "last_pipeline_seq": pipeline.last_pipeline_seq + n_events,
        }
        if status in (PipelineStatus.RUNNING, *DONE_STATUSES) and pipeline.started_at is None:
            updates["started_at"] = now
        updates["finished_at"] = (pipeline.finished_at or now) if status in DONE_STATUSES else None
        base_pseq = pipeline.last_pipeline_seq
        Pipeline.objects.filter(pk=pipeline.pk).update(**updates)
        for key, value in updates.items():
            setattr(pipeline, key, value)
        events.append(
            pipeline,
            base_pipeline_seq=base_pseq,
            jobs=[(self.jobs[pk], kind) for pk, kind in changed],
            pipeline_changed=status_changed or bool(pipeline_event),
            kind_for_pipeline=pipeline_event or "state",
        )
        self.changed = []

    def settle_downstream(self, job_id: int, result: str, *, superseded_by: str = "",
                          skip_downstream: str = "") -> None:
        """After ``job_id`` ended: promote downstream jobs that became ready, or skip the
        ones that never will.

        A superseded job ends its downstream like a failed one: recomputing from data this
        job did not apply would only redo (or race) the later upload's own pipeline. A job
        that says its downstream has nothing to do (``skip_downstream``) ends it skipped.
        """
        _, dependents = self.edges
        now = timezone.now()
        if result in dag.OK_RESULTS and not superseded_by and not skip_downstream:
            ready = [
                c for c in dependents.get(job_id, ())
                if self.jobs[c].state == JobState.NOT_STARTED and self.ok_to_run(c)
            ]
            early = [c for c in ready if self.jobs[c].dispatch_when_ready]
            self.apply(
                transitions.PROMOTE, ready,
                queued_at=now, status_message=WAITING_WORKER, dispatch_when_ready=False,
            )
            if early:
                dispatch_on_commit(unfinished_closure(self.pipeline.pk, early))
            return
        upstream = job_label(self.jobs[job_id])
        if skip_downstream:
            skipped = msg(gettext_noop("Skipped: %(reason)s"), reason=skip_downstream)
        elif superseded_by:
            skipped = msg(gettext_noop("Skipped: upstream %(job)s was superseded by %(winner)s"), job=upstream,
                          winner=superseded_by)
        elif result == JobResult.CANCELLED:
            skipped = msg(gettext_noop("Skipped: upstream %(job)s was cancelled"), job=upstream)
        elif result == JobResult.ERROR:
            skipped = msg(gettext_noop("Skipped: upstream %(job)s failed"), job=upstream)
        else:
            skipped = msg(gettext_noop("Skipped: upstream %(job)s ended %(result)s"), job=upstream,
                          result=result_message(result))
        self.apply(
            transitions.SKIP, sorted(dag.downstream([job_id], dependents)),
            result=JobResult.SKIPPED,
            status_message=skipped,
            finished_at=now,
            cancel_requested=False,
        )
