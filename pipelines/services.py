"""Writes of the pipelines app: planning, job transitions, operator controls, the reaper.

Concurrency rules (read before changing anything here):

1. Lock order is always: pipeline row → job rows → event counter row. Every
   transition locks its pipeline first, so all writes to one DAG are serialised and
   the per-pipeline event sequence is gapless. Work on data (ingest, aggregation)
   takes its own advisory locks *before* reaching the pipeline lock at its commit
   point, and transitions never take data locks, so no cycle can form.
2. Job state changes are compare-and-set (``filter(state=old).update(...)``); zero
   rows means someone else won and the caller backs off.
3. An attempt is identified by ``attempts``: a worker writes only while
   ``state=running AND attempts=<its attempt>``, so a cancelled, recovered or
   taken-over attempt can never write a late result.
4. Celery messages are sent only after commit (``on_commit``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Func, JSONField, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from pipelines import dag, events, registry
from pipelines.models import (
    DONE_STATUSES,
    Job,
    JobResult,
    JobState,
    OperatorAction,
    OperatorActionKind,
    Pipeline,
    PipelineStatus,
    QueueState,
)
from pipelines.registry import Outcome

logger = logging.getLogger(__name__)

Edge = Job.depends_on.through


_S = JobState
# Every job state change goes through ``_Dag.update``, which checks this table.
ALLOWED_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (_S.NOT_STARTED, _S.QUEUED),  # upstream done (promotion), retry of a root
        (_S.QUEUED, _S.RUNNING),  # claim
        (_S.RUNNING, _S.RUNNING),  # takeover after the holding process died
        (_S.RUNNING, _S.QUEUED),  # recover, reaper, transient failure with attempts left
        (_S.RUNNING, _S.FINISHED),  # finish, cancel, attempts exhausted
        (_S.NOT_STARTED, _S.FINISHED),  # cancel, skipped because upstream failed
        (_S.QUEUED, _S.FINISHED),  # cancel, skipped because upstream failed
        (_S.FINISHED, _S.NOT_STARTED),  # retry (a new attempt)
        (_S.QUEUED, _S.NOT_STARTED),  # an upstream job is retried: wait for it again
    }
)


class ConflictError(Exception):
    """The object's state does not allow the operation (HTTP 409)."""

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class IllegalTransition(ConflictError):
    """A change the transition table forbids; the transaction rolls back.

    A conflict, not a crash: should a control ever attempt one, its caller gets a 409
    naming the move instead of a 500, and nothing was written.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "illegal_transition")


# --- helpers --------------------------------------------------------------------------


def _actor_name(actor: Any) -> str:
    if actor is None:
        return "system"
    return str(actor.get_username()) if hasattr(actor, "get_username") else str(actor)


def actor_user(actor: Any) -> Any:
    """The User behind an actor, or None for system/CLI actors given as names."""
    return actor if getattr(actor, "pk", None) is not None else None


def operator_action_record(
    *,
    actor: Any,
    action: str,
    target_type: str,
    target_id: str,
    pipeline: Pipeline | None = None,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> OperatorAction:
    return OperatorAction.objects.create(
        actor=actor_user(actor),
        actor_name=_actor_name(actor),
        action=action,
        target_type=target_type,
        target_id=target_id,
        pipeline=pipeline,
        reason=reason or "",
        detail=detail or {},
    )


def _edges(pipeline_id: Any) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """(depends_on, dependents) adjacency of one pipeline."""
    depends_on: dict[int, list[int]] = defaultdict(list)
    dependents: dict[int, list[int]] = defaultdict(list)
    for child, parent in Edge.objects.filter(from_job__pipeline_id=pipeline_id).values_list(
        "from_job_id", "to_job_id"
    ):
        depends_on[child].append(parent)
        dependents[parent].append(child)
    return depends_on, dependents


def _label(job: Job) -> str:
    return f"{job.job_type}{' ' + job.det if job.det else ''} #{job.pk}"


def _on_commit_dispatch(job_ids: list[int], *, countdown: float | None = None) -> None:
    if not job_ids:
        return
    from pipelines import dispatch

    ids = sorted(set(job_ids))
    transaction.on_commit(lambda: dispatch.send(ids, countdown=countdown), robust=True)


# The live-event counts, projected in SQL so a transition never loads a job's meta
# (which may hold a thousand row errors) just to publish a few numbers.
_COUNTS_SQL = "jsonb_strip_nulls(jsonb_build_object({}))".format(
    ", ".join(f"'{key}', meta->'{key}'" for key in events.COUNT_KEYS)
)


_JOB_COLUMNS = ", ".join(
    f"j.{f.column}" for f in Job._meta.concrete_fields if f.name not in ("meta", "error", "effect_outcome")
)
_JOBS_SQL = (
    f"SELECT {_JOB_COLUMNS}, {_COUNTS_SQL.replace('meta->', 'j.meta->')} AS counts, "
    "EXISTS (SELECT 1 FROM pipelines_queuestate q WHERE q.name = j.queue AND q.paused) AS queue_paused "
    "FROM pipelines_job j WHERE j.pipeline_id = %s ORDER BY j.id"
)
_LOCK_BY_JOB_SQL = (
    "SELECT * FROM pipelines_pipeline WHERE id = (SELECT pipeline_id FROM pipelines_job WHERE id = %s) FOR UPDATE"
)


class _Dag:
    """One pipeline, locked, with all its jobs: the working set of a transition.

    Loaded once after taking the pipeline row lock; every UPDATE made through it is
    applied to the in-memory rows too, so the final status recomputation needs no
    re-read. While the lock is held no other transition can change these jobs (only
    heartbeats write, and they touch ``heartbeat_at`` alone).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        # Raw SQL: this runs twice per job, and compiling the equivalent ORM query
        # (annotations, Exists) cost more than executing it (bench/pipeline_overhead.py).
        self.jobs: dict[int, Job] = {j.pk: j for j in Job.objects.raw(_JOBS_SQL, [pipeline.pk])}
        for job in self.jobs.values():
            job.pipeline = pipeline  # no lazy query when a handler reads ctx.year/module
            if isinstance(job.counts, str):  # type: ignore[attr-defined]
                job.counts = json.loads(job.counts)  # type: ignore[attr-defined]
        self.changed: list[tuple[int, str]] = []
        self._edges: tuple[dict[int, list[int]], dict[int, list[int]]] | None = None

    @classmethod
    def lock(cls, pipeline_id: Any) -> _Dag:
        return cls(Pipeline.objects.select_for_update().get(pk=pipeline_id))

    @classmethod
    def lock_for_job(cls, job_id: int) -> _Dag:
        """Lock the pipeline of ``job_id`` in one statement (FOR UPDATE OF the pipeline only)."""
        rows = list(Pipeline.objects.raw(_LOCK_BY_JOB_SQL, [job_id]))
        if not rows:
            raise Job.DoesNotExist(f"job {job_id} does not exist")
        return cls(rows[0])

    @property
    def edges(self) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        if self._edges is None:
            self._edges = _edges(self.pipeline.pk)
        return self._edges

    def update(
        self, ids: list[int], *, where: Q | None = None, kind: str = "state",
        meta_merge: dict[str, Any] | None = None, **values: Any,
    ) -> list[int]:
        """Compare-and-set UPDATE of ``ids`` (``where`` is the expected old state).

        Returns the ids actually updated. ``where`` is evaluated in SQL (the CAS) and the
        rows that matched are found again in memory by re-checking it there.
        """
        if not ids:
            return []
        if values.get("state") == JobState.FINISHED:
            # Every way a job ends (finish, cancel, skip, give up) shows it ended, not
            # the last phase it reported ("applying" on a finished job reads as stuck).
            values.setdefault("phase", "done")
        qs = Job.objects.filter(pk__in=ids)
        if where is not None:
            qs = qs.filter(where)
        matched = list(qs.values_list("pk", flat=True)) if len(ids) > 1 else ids
        sql_values = dict(values)
        if meta_merge:
            sql_values["meta"] = Func(
                Coalesce(F("meta"), Value({}, JSONField())), Value(meta_merge, JSONField()),
                template="%(expressions)s", arg_joiner=" || ",
            )
        updated = qs.filter(pk__in=matched).update(**sql_values)
        if len(ids) == 1 and updated == 0:
            return []
        if "state" in values:
            # Checked on the rows the CAS actually changed (the in-memory state is
            # theirs: we hold the pipeline lock); raising rolls the transaction back.
            for pk in matched:
                move = (self.jobs[pk].state, values["state"])
                if move not in ALLOWED_TRANSITIONS:
                    raise IllegalTransition(f"job {pk}: {move[0]} → {move[1]} is not allowed")
        for pk in matched:
            job = self.jobs[pk]
            for key, value in values.items():
                setattr(job, key, value)
            if meta_merge:
                job.counts = {**(job.counts or {}), **events.counts_of(meta_merge)}  # type: ignore[attr-defined]
                if "meta" not in job.get_deferred_fields():
                    job.meta = {**(job.meta or {}), **meta_merge}
            self.changed.append((pk, kind))
        return matched

    def save(self, *, kind: str = "state", pipeline_event: bool = False) -> None:
        """Recompute the pipeline's denormalised status and append the events.

        Called last in every transition, under the pipeline lock, so the status can
        never drift from the jobs (SPEC: recomputed on every terminal transition).
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
            "last_error": f"{_label(latest_error)}: {latest_error.status_message}" if latest_error else "",
            "updated_at": now,
            "event_count": pipeline.event_count + n_events,
        }
        if status in (PipelineStatus.RUNNING, *DONE_STATUSES) and pipeline.started_at is None:
            updates["started_at"] = now
        updates["finished_at"] = (pipeline.finished_at or now) if status in DONE_STATUSES else None
        base_pseq = pipeline.event_count
        Pipeline.objects.filter(pk=pipeline.pk).update(**updates)
        for key, value in updates.items():
            setattr(pipeline, key, value)
        events.append(
            pipeline,
            base_pipeline_seq=base_pseq,
            jobs=[(self.jobs[pk], k) for pk, k in changed],
            pipeline_changed=status_changed or pipeline_event,
            kind_for_pipeline=kind if pipeline_event else "state",
        )
        self.changed = []

    def ok_to_run(self, job_id: int) -> bool:
        depends_on, _ = self.edges
        return all(
            self.jobs[d].state == JobState.FINISHED and self.jobs[d].result in dag.OK_RESULTS
            for d in depends_on.get(job_id, ())
        )


def _unfinished_closure(pipeline_id: Any, roots: list[int]) -> list[int]:
    """``roots`` plus their not-yet-finished downstream: the sub-DAG to (re)dispatch."""
    _, dependents = _edges(pipeline_id)
    wanted = set(roots) | dag.downstream(roots, dependents)
    return list(
        Job.objects.filter(pk__in=wanted).exclude(state=JobState.FINISHED).values_list("pk", flat=True)
    )


# --- planning -------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    key: str
    job_type: str
    det: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()


def pipeline_plan(
    *,
    kind: str,
    specs: list[JobSpec],
    year: int | None = None,
    module: str = "",
    created_by: Any = None,
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """Plan a whole DAG in one transaction and dispatch it as one canvas on commit.

    1. Validate: unique keys, known dependencies, registered job types, no cycle.
    2. Insert the pipeline, every job and every edge; jobs without dependencies start
       ``queued``, the rest ``not_started``.
    3. Append the creation events; after commit send the Celery canvas.
    """
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique within a pipeline")
    index = {s.key: i for i, s in enumerate(specs)}
    for s in specs:
        registry.get_handler(s.job_type)
        missing = [d for d in s.depends_on if d not in index]
        if missing:
            raise ValueError(f"job {s.key!r} depends on unknown job(s) {missing}")
    dag.layers(range(len(specs)), {i: [index[d] for d in s.depends_on] for i, s in enumerate(specs)})

    now = timezone.now()
    with transaction.atomic():
        pipeline = Pipeline.objects.create(
            kind=kind,
            year=year,
            module=module,
            created_by=actor_user(created_by),
            params=params or {},
            jobs_total=len(specs),
        )
        jobs = Job.objects.bulk_create(
            [
                Job(
                    pipeline=pipeline,
                    job_type=s.job_type,
                    det=s.det,
                    queue=registry.queue_for(s.job_type),
                    params=s.params,
                    max_attempts=registry.max_attempts_for(s.job_type),
                    state=JobState.NOT_STARTED if s.depends_on else JobState.QUEUED,
                    queued_at=None if s.depends_on else now,
                    status_message="Waiting for upstream jobs" if s.depends_on else "Waiting for a worker",
                )
                for s in specs
            ]
        )
        Edge.objects.bulk_create(
            [
                Edge(from_job_id=jobs[i].pk, to_job_id=jobs[index[d]].pk)
                for i, s in enumerate(specs)
                for d in s.depends_on
            ]
        )
        work = _Dag(pipeline)  # a new row nobody else can see yet: no lock needed
        work.changed = [(j.pk, "state") for j in jobs]
        work.save(kind="created", pipeline_event=True)
        _on_commit_dispatch([j.pk for j in jobs])
    return pipeline


def pipeline_start_noop(
    *, width: int = 3, sleep: float = 0.0, actor: Any = None, year: int | None = None
) -> Pipeline:
    """A 1 → width → 1 DAG of no-op jobs: smoke tests, benchmarks, a worker check."""
    specs = [JobSpec(key="start", job_type="noop", params={"sleep": sleep})]
    specs += [
        JobSpec(key=f"mid{i}", job_type="noop", det=f"part{i}", params={"sleep": sleep}, depends_on=("start",))
        for i in range(width)
    ]
    middle = tuple(f"mid{i}" for i in range(width))
    specs.append(JobSpec(key="end", job_type="noop", params={"sleep": sleep}, depends_on=middle))
    pipeline = pipeline_plan(kind="noop", specs=specs, year=year, created_by=actor)
    operator_action_record(
        actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="pipeline",
        target_id=str(pipeline.pk), pipeline=pipeline, detail={"kind": "noop", "width": width},
    )
    return pipeline


# --- transitions driven by workers ----------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    job: Job | None
    reason: str
    # Set when the job runs under this very message with a fresh heartbeat: look again
    # after this many seconds (when the heartbeat would be stale), do not drop it.
    recheck_in: float | None = None


def job_claim(*, job_id: int, task_id: str, worker: str) -> Claim:
    """queued → running for this delivery, or say why not.

    A redelivery of the *same* Celery message while the job is still ``running`` may
    mean the process that held it died (Celery requeues on worker loss) — or not: the
    broker also redelivers a healthy long job's message (visibility timeout, a
    reconnect), and a duplicate may be sent by hand. Only a stale heartbeat (older than
    ``SLUICE_STALE_AFTER_SECONDS``) proves the owner gone; a fresh one answers "look
    again when it would be stale", so a dead owner is still taken over within that bound
    without waiting for the reaper, and a live one is never aborted.
    """
    now = timezone.now()
    with transaction.atomic():
        try:
            work = _Dag.lock_for_job(job_id)
        except Job.DoesNotExist:
            return Claim(None, "job no longer exists")
        job = work.jobs[job_id]
        if job.state == JobState.NOT_STARTED:
            work.update([job_id], where=Q(state=JobState.NOT_STARTED), dispatch_when_ready=True)
            return Claim(None, "upstream not finished: will be sent again when ready")
        if job.state == JobState.FINISHED:
            return Claim(None, f"already finished ({job.result})")
        if job.queue_paused:  # type: ignore[attr-defined]
            message = f"Waiting: queue {job.queue} is paused"
            if job.status_message != message:
                work.update([job_id], where=Q(state=job.state), kind="message", status_message=message)
                work.save(kind="message")
            return Claim(None, "queue paused")
        takeover = ""
        where = Q(state=JobState.QUEUED)
        if job.state == JobState.RUNNING:
            if job.celery_task_id != task_id:
                return Claim(None, f"already running on {job.worker}")
            age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else float("inf")
            if age < settings.SLUICE_STALE_AFTER_SECONDS:
                return Claim(
                    None, f"running on {job.worker}, heartbeat {age:.1f}s ago: not taken over",
                    recheck_in=settings.SLUICE_STALE_AFTER_SECONDS - age + settings.SLUICE_HEARTBEAT_SECONDS,
                )
            if job.attempts >= job.max_attempts:
                return _fail_exhausted(work, job, "worker lost while running")
            where = Q(state=JobState.RUNNING, attempts=job.attempts)
            takeover = f" (took over from lost worker {job.worker})"
        claimed = work.update(
            [job_id],
            where=where & Q(cancel_requested=False),
            state=JobState.RUNNING,
            attempts=job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            worker=worker[:200],
            celery_task_id=task_id[:64],
            status_message=f"Running on {worker}{takeover}",
            phase="",
            # A new attempt starts from zero: a lost attempt's 60 % is not this one's.
            progress_processed=0,
            progress_total=None,
            dispatch_when_ready=False,
        )
        if not claimed:
            return Claim(None, "lost the claim to another delivery")
        work.save()
    return Claim(job, "claimed")


def _fail_exhausted(work: _Dag, job: Job, why: str) -> Claim:
    if job.effect_committed:
        return _finish_from_effect(work, job, why)
    message = f"Error: {why}; gave up after {job.attempts} attempt(s)"
    work.update(
        [job.pk],
        where=Q(state=job.state, attempts=job.attempts),
        state=JobState.FINISHED,
        result=JobResult.ERROR,
        status_message=message,
        finished_at=timezone.now(),
        heartbeat_at=None,
        error={"type": "WorkerLost", "message": message, "traceback": "", "stage": "worker"},
    )
    _after_finish(work, job.pk, JobResult.ERROR)
    work.save()
    return Claim(None, message)


def _finish_from_effect(work: _Dag, job: Job, why: str) -> Claim:
    """The lost attempt had committed its effect: the job's data is in, so it ends with
    the outcome stored with the effect (what a redelivery would do), never ``error`` —
    a retry of an "error" would apply the effect a second time."""
    job.refresh_from_db(fields=["effect_outcome"])  # deferred by _Dag's query
    outcome = Outcome.from_dict(job.effect_outcome or {"result": JobResult.SUCCESS})
    message = f"{outcome.message or str(outcome.result).capitalize()} ({why} after committing its data)"
    work.update(
        [job.pk],
        where=Q(state=job.state, attempts=job.attempts),
        meta_merge=outcome.meta,
        state=JobState.FINISHED,
        result=outcome.result,
        status_message=message,
        finished_at=timezone.now(),
        heartbeat_at=None,
    )
    _after_finish(work, job.pk, outcome.result)
    work.save()
    return Claim(None, message)


def job_heartbeat(*, job_id: int, attempt: int) -> bool:
    """False when this attempt no longer owns the job (cancelled, recovered, taken over)."""
    return bool(
        Job.objects.filter(pk=job_id, state=JobState.RUNNING, attempts=attempt, cancel_requested=False).update(
            heartbeat_at=timezone.now()
        )
    )


def job_is_current(*, job_id: int, attempt: int) -> bool:
    return Job.objects.filter(
        pk=job_id, state=JobState.RUNNING, attempts=attempt, cancel_requested=False
    ).exists()


def _owned(attempt: int) -> Q:
    return Q(state=JobState.RUNNING, attempts=attempt, cancel_requested=False)


def job_progress(
    *,
    job_id: int,
    attempt: int,
    processed: int,
    total: int | None,
    phase: str | None = None,
    message: str | None = None,
    meta: dict[str, Any] | None = None,
) -> bool:
    values: dict[str, Any] = {
        "progress_processed": processed,
        "progress_total": total,
        "heartbeat_at": timezone.now(),
    }
    if phase is not None:
        values["phase"] = phase[:120]
    if message is not None:
        values["status_message"] = message
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        if not work.update([job_id], where=_owned(attempt), kind="progress", meta_merge=meta, **values):
            return False
        work.save(kind="progress")
    return True


def job_commit_effect(*, job_id: int, attempt: int, outcome: Outcome) -> None:
    """Mark the job's durable effect as committed, inside the effect's transaction.

    Raises ``JobAborted`` (rolling the effect back) when the attempt lost the job.
    """
    from pipelines.engine import JobAborted

    # The pipeline row only (lock order: pipeline → job). ``.exists()`` would drop
    # ``of=`` and lock the job row too, in join order: a deadlock with a transition.
    list(Pipeline.objects.raw(_LOCK_BY_JOB_SQL, [job_id]))
    if not Job.objects.filter(_owned(attempt), pk=job_id).update(
        effect_committed=True, effect_outcome=outcome.as_dict()
    ):
        raise JobAborted(f"job {job_id} attempt {attempt} no longer owns the job; effect rolled back")


def job_finish(*, job_id: int, attempt: int, outcome: Outcome, error: dict[str, Any] | None = None) -> bool:
    """running → finished with the handler's outcome; promotes or skips downstream."""
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        job = work.jobs[job_id]
        values: dict[str, Any] = {
            "state": JobState.FINISHED,
            "result": outcome.result,
            "status_message": outcome.message,
            "error": error,
            "finished_at": timezone.now(),
            "heartbeat_at": None,
        }
        if outcome.result in (JobResult.SUCCESS, JobResult.WARNING) and job.progress_total:
            values["progress_processed"] = job.progress_total
        meta = {**outcome.meta, "superseded_by": outcome.superseded_by} if outcome.superseded_by else outcome.meta
        if not work.update([job_id], where=Q(state=JobState.RUNNING, attempts=attempt), meta_merge=meta, **values):
            return False
        _after_finish(work, job_id, outcome.result, superseded_by=outcome.superseded_by)
        work.save()
    return True


def job_requeue_after_failure(
    *, job_id: int, attempt: int, error: dict[str, Any], countdown: float
) -> bool:
    """A transient failure with attempts left: back to queued, re-sent after a backoff."""
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        if not work.update(
            [job_id],
            where=Q(state=JobState.RUNNING, attempts=attempt),
            state=JobState.QUEUED,
            queued_at=timezone.now(),
            heartbeat_at=None,
            worker="",
            error=error,
            status_message=f"Attempt {attempt} failed ({error['type']}: {error['message'][:200]}); "
            f"retrying in {countdown:.0f}s",
        ):
            return False
        work.save()
        _on_commit_dispatch(_unfinished_closure(work.pipeline.pk, [job_id]), countdown=countdown)
    return True


def _after_finish(
    work: _Dag, job_id: int, result: str, *, skip_result: str = JobResult.SKIPPED, reason: str = "",
    superseded_by: str = "",
) -> None:
    """Promote downstream jobs that became ready, or end the ones that never will.

    A superseded job ends its downstream like a failed one: recomputing from data this
    job did not apply would only redo (or race) the later upload's own pipeline.
    """
    _, dependents = work.edges
    now = timezone.now()
    if result in dag.OK_RESULTS and not superseded_by:
        ready = [
            c for c in dependents.get(job_id, ())
            if work.jobs[c].state == JobState.NOT_STARTED and work.ok_to_run(c)
        ]
        early = [c for c in ready if work.jobs[c].dispatch_when_ready]
        work.update(
            ready, where=Q(state=JobState.NOT_STARTED),
            state=JobState.QUEUED, queued_at=now, status_message="Waiting for a worker", dispatch_when_ready=False,
        )
        if early:
            _on_commit_dispatch(_unfinished_closure(work.pipeline.pk, early))
        return
    origin = work.jobs[job_id]
    verbs: dict[str, str] = {JobResult.CANCELLED: "was cancelled", JobResult.ERROR: "failed"}
    verb = f"was superseded by {superseded_by}" if superseded_by else verbs.get(result, f"ended {result}")
    doomed = [
        j for j in sorted(dag.downstream([job_id], dependents))
        if work.jobs[j].state in (JobState.NOT_STARTED, JobState.QUEUED)
    ]
    work.update(
        doomed,
        where=Q(state__in=[JobState.NOT_STARTED, JobState.QUEUED]),
        state=JobState.FINISHED,
        result=skip_result,
        status_message=reason or f"Skipped: upstream {_label(origin)} {verb}",
        finished_at=now,
        cancel_requested=skip_result == JobResult.CANCELLED,
    )


# --- operator controls ------------------------------------------------------------------


def job_cancel(*, job_id: int, actor: Any = None, reason: str = "") -> Job:
    """Cancel one job: persistent and terminal at once, whether or not a worker is alive.

    A running job is finished ``cancelled`` immediately; its worker notices at its next
    heartbeat or checkpoint and its uncommitted effect rolls back. A job whose effect
    already committed cannot be cancelled any more (409): the data is in.
    """
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        job = work.jobs[job_id]
        if not _cancel_jobs(work, [job_id], actor=actor, reason=reason):
            if job.state == JobState.FINISHED:
                raise ConflictError(f"Job {job_id} already finished ({job.result}).", "already_finished")
            raise ConflictError(
                f"Job {job_id} already committed its data; it can no longer be cancelled.", "effect_committed"
            )
        _after_finish(work, job_id, JobResult.CANCELLED)
        work.save()
        operator_action_record(
            actor=actor, action=OperatorActionKind.CANCEL, target_type="job", target_id=str(job_id),
            pipeline=work.pipeline, reason=reason,
        )
    return job


def pipeline_cancel(*, pipeline_id: Any, actor: Any = None, reason: str = "") -> Pipeline:
    with transaction.atomic():
        work = _Dag.lock(pipeline_id)
        if not _cancel_jobs(work, list(work.jobs), actor=actor, reason=reason):
            raise ConflictError(
                "Nothing to cancel: every job has finished or committed its data.", "nothing_to_cancel"
            )
        work.save()
        operator_action_record(
            actor=actor, action=OperatorActionKind.CANCEL, target_type="pipeline",
            target_id=str(pipeline_id), pipeline=work.pipeline, reason=reason,
        )
    return work.pipeline


def _cancel_jobs(work: _Dag, ids: list[int], *, actor: Any, reason: str) -> list[int]:
    # A committed effect is data already in, whether its attempt is still running or
    # was lost and the job re-queued to finish from it: "cancelled" would be a lie.
    cancellable = Q(state__in=[JobState.NOT_STARTED, JobState.QUEUED, JobState.RUNNING], effect_committed=False)
    return work.update(
        ids,
        where=cancellable,
        state=JobState.FINISHED,
        result=JobResult.CANCELLED,
        cancel_requested=True,
        status_message=f"Cancelled by {_actor_name(actor)}" + (f": {reason}" if reason else ""),
        finished_at=timezone.now(),
        heartbeat_at=None,
    )


_RETRYABLE = (JobResult.ERROR, JobResult.CANCELLED, JobResult.SKIPPED)


def _retry_targets(work: _Dag, job_ids: list[int]) -> list[int]:
    """The jobs a retry of ``job_ids`` starts again.

    1. Them, and every failed or cancelled job upstream of them: a job whose upstream
       failed can never run on its own (its skip was the upstream's failure, not its
       own), so retrying it retries from the failure — what the operator asked for, the
       work happens — instead of leaving a job waiting for an upstream that is already
       over (the wedge of issue 8). Upstream jobs still running or waiting are left
       alone: the job is promoted when they end, or skipped again if they fail.
    2. Everything downstream of those, except jobs that another failure outside the
       retry still blocks (a second cancelled branch of a fan-in): resetting those
       would leave them waiting forever, so they stay skipped until that failure is
       retried too.

    A superseded job blocks like a failed one (its downstream was skipped because its
    data was not applied): the retry runs it again, and it ends superseded again while
    the later upload is the loaded one, instead of recomputing from data it never applied.
    """
    depends_on, dependents = work.edges

    def failed(pk: int) -> bool:
        job = work.jobs[pk]
        return job.result in dag.FAILED_RESULTS or bool((job.counts or {}).get("superseded_by"))  # type: ignore[attr-defined]

    failed_upstream = {pk for pk in dag.downstream(job_ids, depends_on) if failed(pk)}
    starts = set(job_ids) | failed_upstream
    targets = starts | dag.downstream(starts, dependents)
    blocked: dict[int, bool] = {}

    def is_blocked(pk: int) -> bool:
        """Failed, or skipped because of a failure: this job's output will not come."""
        if pk not in blocked:
            job = work.jobs[pk]
            blocked[pk] = failed(pk) or (
                job.result == JobResult.SKIPPED and any(is_blocked(p) for p in depends_on.get(pk, ()))
            )
        return blocked[pk]

    for layer in dag.layers(targets - starts, depends_on):
        for pk in layer:
            if any(p not in targets and is_blocked(p) for p in depends_on.get(pk, ())):
                targets.discard(pk)
    return sorted(targets)


def _reset_for_retry(work: _Dag, job_ids: list[int], *, actor: Any) -> None:
    """A new attempt of the finished jobs among ``job_ids``; then queue the ready ones.

    ``job_ids`` is a closed sub-DAG (``_retry_targets``): unfinished jobs in it are not
    reset (they have no result to clear) but a queued one goes back to waiting, since an
    upstream job of it is about to run again.
    """
    now = timezone.now()
    message = f"Retry requested by {_actor_name(actor)}"
    for pk in job_ids:
        job = work.jobs[pk]
        if job.state != JobState.FINISHED:
            continue
        work.update(
            [pk],
            where=Q(state=JobState.FINISHED),
            state=JobState.NOT_STARTED,
            result=None,
            error=None,
            cancel_requested=False,
            effect_committed=False,
            effect_outcome=None,
            dispatch_when_ready=False,
            progress_processed=0,
            progress_total=None,
            phase="",
            meta={},
            heartbeat_at=None,
            started_at=None,
            finished_at=None,
            worker="",
            max_attempts=job.attempts + settings.SLUICE_MAX_ATTEMPTS,
            status_message=message,
        )
        work.jobs[pk].counts = {}  # type: ignore[attr-defined]
    waiting = [pk for pk in job_ids if work.jobs[pk].state == JobState.QUEUED and not work.ok_to_run(pk)]
    work.update(
        waiting, where=Q(state=JobState.QUEUED), state=JobState.NOT_STARTED, queued_at=None,
        status_message="Waiting for upstream jobs",
    )
    roots = [pk for pk in job_ids if work.jobs[pk].state == JobState.NOT_STARTED and work.ok_to_run(pk)]
    work.update(
        roots, where=Q(state=JobState.NOT_STARTED), state=JobState.QUEUED, queued_at=now,
        status_message="Waiting for a worker",
    )


def pipeline_retry(*, pipeline_id: Any, actor: Any = None, reason: str = "") -> Pipeline:
    """A new attempt of every failed, cancelled or skipped job and everything downstream."""
    with transaction.atomic():
        work = _Dag.lock(pipeline_id)
        if any(j.state == JobState.RUNNING for j in work.jobs.values()):
            raise ConflictError("Jobs of this pipeline are still running; cancel or wait first.", "still_running")
        failed = [pk for pk, j in work.jobs.items() if j.result in _RETRYABLE]
        if not failed:
            raise ConflictError("Nothing to retry: no job failed, was cancelled or skipped.", "nothing_to_retry")
        targets = _retry_targets(work, failed)
        _reset_for_retry(work, targets, actor=actor)
        work.save()
        operator_action_record(
            actor=actor, action=OperatorActionKind.RETRY, target_type="pipeline",
            target_id=str(pipeline_id), pipeline=work.pipeline, reason=reason, detail={"jobs": targets},
        )
        _on_commit_dispatch(targets)
    return work.pipeline


def job_retry(*, job_id: int, actor: Any = None, reason: str = "") -> Job:
    """A new attempt of one failed, cancelled or skipped job and its downstream.

    If the job cannot run because an upstream job failed or was cancelled, that
    upstream job is retried too (``_retry_targets``); the action's detail lists every
    job that was reset.
    """
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        job = work.jobs[job_id]
        if job.result not in _RETRYABLE:
            raise ConflictError(
                f"Only failed, cancelled or skipped jobs can be retried; job {job_id} is "
                f"{job.result or job.state}.",
                "not_retryable",
            )
        targets = _retry_targets(work, [job_id])
        running = [pk for pk in targets if work.jobs[pk].state == JobState.RUNNING]
        if running:
            raise ConflictError(
                f"Job(s) {', '.join(map(str, running))} that this retry would reset are running; "
                "wait for them or cancel them first.",
                "still_running",
            )
        _reset_for_retry(work, targets, actor=actor)
        work.save()
        operator_action_record(
            actor=actor, action=OperatorActionKind.RETRY, target_type="job", target_id=str(job_id),
            pipeline=work.pipeline, reason=reason, detail={"jobs": targets},
        )
        _on_commit_dispatch(targets)
    return job


def job_recover(*, job_id: int, actor: Any = None, reason: str = "", force: bool = False) -> Job:
    """Force a stuck running job back to ``queued`` and re-send it with its downstream.

    Refused while the heartbeat is fresh (the worker is alive) unless ``force``. The old
    attempt, if it was merely slow, loses ownership and cannot write a late result.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.SLUICE_STALE_AFTER_SECONDS)
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        job = work.jobs[job_id]
        if job.state != JobState.RUNNING:
            raise ConflictError(f"Job {job_id} is {job.state}, not running: nothing to recover.", "not_running")
        if not force and job.heartbeat_at and job.heartbeat_at >= stale_before:
            age = (timezone.now() - job.heartbeat_at).total_seconds()
            raise ConflictError(
                f"Job {job_id}'s worker sent a heartbeat {age:.0f}s ago; it is alive. Use force to override.",
                "heartbeat_fresh",
            )
        worker, attempt = job.worker, job.attempts
        _requeue_running(work, job, f"Recovered by {_actor_name(actor)}" + (f": {reason}" if reason else ""))
        operator_action_record(
            actor=actor, action=OperatorActionKind.RECOVER, target_type="job", target_id=str(job_id),
            pipeline=work.pipeline, reason=reason, detail={"worker": worker, "attempt": attempt},
        )
    return job


def _requeue_running(work: _Dag, job: Job, message: str) -> None:
    # The lost attempt's writes require state=running AND attempts=its number: both
    # stop matching here (queued) and after the next claim (attempts + 1).
    work.update(
        [job.pk],
        where=Q(state=JobState.RUNNING, attempts=job.attempts),
        state=JobState.QUEUED,
        queued_at=timezone.now(),
        heartbeat_at=None,
        worker="",
        status_message=f"{message} (was on {job.worker or 'an unknown worker'}); back in the queue",
    )
    work.save()
    _on_commit_dispatch(_unfinished_closure(work.pipeline.pk, [job.pk]))


def queue_pause(*, queue: str, actor: Any = None, reason: str = "") -> QueueState:
    return _queue_set(queue=queue, paused=True, actor=actor, reason=reason)


def queue_resume(*, queue: str, actor: Any = None, reason: str = "") -> QueueState:
    return _queue_set(queue=queue, paused=False, actor=actor, reason=reason)


def _queue_set(*, queue: str, paused: bool, actor: Any, reason: str) -> QueueState:
    if queue not in settings.SLUICE_QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(settings.SLUICE_QUEUES)}")
    with transaction.atomic():
        state, _ = QueueState.objects.select_for_update().get_or_create(name=queue)
        if state.paused == paused:
            raise ConflictError(f"Queue {queue} is already {'paused' if paused else 'running'}.", "no_change")
        state.paused = paused
        state.changed_by = _actor_name(actor)
        state.save(update_fields=["paused", "changed_by", "changed_at"])
        operator_action_record(
            actor=actor, action=OperatorActionKind.PAUSE if paused else OperatorActionKind.RESUME,
            target_type="queue", target_id=queue, reason=reason,
        )
        if not paused:
            waiting = list(Job.objects.filter(queue=queue, state=JobState.QUEUED).values_list("pk", "pipeline_id"))
            by_pipeline: dict[Any, list[int]] = defaultdict(list)
            for pk, pid in waiting:
                by_pipeline[pid].append(pk)
            for pid, ids in by_pipeline.items():
                _on_commit_dispatch(_unfinished_closure(pid, ids))
    return state


# --- the reaper ---------------------------------------------------------------------------


def _recover_lost(work: _Dag, job: Job, why: str, message: str) -> bool:
    """Requeue a running job whose attempt is gone (True), or fail it once attempts ran out."""
    if job.attempts >= job.max_attempts:
        _fail_exhausted(work, job, why)
        return False
    _requeue_running(work, job, message)
    operator_action_record(
        actor=None, action=OperatorActionKind.RECOVER, target_type="job", target_id=str(job.pk),
        pipeline=work.pipeline, reason=why,
    )
    return True


def job_process_lost(*, task_id: str, reason: str) -> int | None:
    """The worker's pool process running delivery ``task_id`` died: recover its job now.

    Called by the worker's main process (``pipelines.tasks.JobRequest``), which sees the
    child die at once; without it the job waits for its heartbeat to go stale and the
    reaper (``SLUICE_STALE_AFTER_SECONDS`` + ``SLUICE_REAPER_INTERVAL_SECONDS``).
    Returns the recovered job's id, or None when the delivery no longer owns a job.
    """
    job_id = Job.objects.filter(state=JobState.RUNNING, celery_task_id=task_id).values_list("pk", flat=True).first()
    if job_id is None:
        return None
    with transaction.atomic():
        work = _Dag.lock_for_job(job_id)
        job = work.jobs[job_id]
        if job.state != JobState.RUNNING or job.celery_task_id != task_id:
            return None  # finished, cancelled or taken over meanwhile
        why = f"worker process died on {job.worker} ({reason})"
        _recover_lost(work, job, why, f"Recovered at once: its worker process died ({reason})")
    return job_id


@dataclass
class ReapReport:
    recovered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    redispatched: list[int] = field(default_factory=list)


def reap(*, queue_depths: dict[str, int] | None = None) -> ReapReport:
    """Run by beat: nothing stays ``running`` or ``queued`` forever.

    1. Running jobs whose heartbeat is stale: back to ``queued`` and re-sent while
       attempts remain, else finished ``error`` with the reason.
    2. Queued jobs (queue not paused) whose publish failed are sent again after
       ``SLUICE_UNSENT_GRACE_SECONDS``.
    3. Queued jobs waiting longer than ``SLUICE_REDISPATCH_AFTER_SECONDS`` whose
       message is in no queue and reserved by no worker (read from Redis; if the
       queues are too long to read: whose queue is empty) — the message was lost
       (Redis restarted, chord never fired) — are sent again.
    Duplicates are harmless: the claim is a compare-and-set.
    """
    report = ReapReport()
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.SLUICE_STALE_AFTER_SECONDS)
    stale = Job.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=stale_before)
    for job_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            work = _Dag.lock_for_job(job_id)
            job = work.jobs[job_id]
            if job.state != JobState.RUNNING or job.heartbeat_at is None or job.heartbeat_at >= stale_before:
                continue  # it beat or finished while we were getting the lock
            age = (now - job.heartbeat_at).total_seconds()
            why = f"worker {job.worker} stopped sending heartbeats ({age:.0f}s)"
            if _recover_lost(work, job, why, f"Recovered automatically: no heartbeat for {age:.0f}s"):
                report.recovered.append(job_id)
            else:
                report.failed.append(job_id)

    paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    waiting = Job.objects.filter(state=JobState.QUEUED).exclude(queue__in=paused)
    by_pipeline: dict[Any, list[int]] = defaultdict(list)
    # Never sent: the publish failed (``dispatch.send`` cleared ``dispatched_at``) or the
    # process died between commit and publish. Re-sent after a short grace, whatever the
    # queues hold.
    unsent_before = now - timedelta(seconds=settings.SLUICE_UNSENT_GRACE_SECONDS)
    for pk, pid in waiting.filter(dispatched_at__isnull=True, queued_at__lt=unsent_before).values_list(
        "pk", "pipeline_id"
    ):
        by_pipeline[pid].append(pk)
    # Sent, but the message is gone (Redis restarted, a chord never fired).
    lost_before = now - timedelta(seconds=settings.SLUICE_REDISPATCH_AFTER_SECONDS)
    candidates = list(
        waiting.filter(dispatched_at__lt=lost_before)
        .filter(Q(queued_at__lt=lost_before) | Q(queued_at__isnull=True))
        .values_list("pk", "pipeline_id", "queue")
    )
    if candidates:
        # Lost = in no queue and reserved by no worker, read from Redis itself; where
        # the queues are too long to read, an empty queue is the sign.
        in_broker = _job_ids_in_broker() if queue_depths is None else None
        if in_broker is not None:
            lost = [(pk, pid) for pk, pid, _queue in candidates if pk not in in_broker]
        else:
            depths = queue_depths if queue_depths is not None else _queue_depths()
            lost = [(pk, pid) for pk, pid, queue in candidates if depths.get(queue, 0) == 0]
        for pk, pid in lost:
            by_pipeline[pid].append(pk)
    from pipelines import dispatch

    for pid, ids in by_pipeline.items():
        if dispatch.send(_unfinished_closure(pid, ids)):
            report.redispatched.extend(ids)
    return report


def _job_ids_in_broker() -> set[int] | None:
    from pipelines import dispatch

    try:
        return dispatch.job_ids_in_broker()
    except Exception:
        logger.warning("could not read the queues' messages", exc_info=True)
        return None


def _queue_depths() -> dict[str, int]:
    from pipelines import dispatch

    try:
        return dispatch.queue_depths()
    except Exception:
        logger.warning("could not read queue depths", exc_info=True)
        return {q: 1 for q in settings.SLUICE_QUEUES}


def purge_old(*, days: int | None = None) -> int:
    """Delete finished pipelines (with their jobs and events) older than the retention."""
    cutoff = timezone.now() - timedelta(days=days or settings.SLUICE_RETENTION_DAYS)
    deleted, _ = Pipeline.objects.filter(status__in=DONE_STATUSES, finished_at__lt=cutoff).delete()
    return deleted
