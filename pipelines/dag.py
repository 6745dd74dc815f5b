"""Pure functions over a pipeline's jobs: status, progress, ordering.

No database access here, so the rules that decide what users see are unit-testable and
shared by the REST, SSE and WebSocket paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipelines.models import JobResult, JobState, PipelineStatus, job_done

OK_RESULTS = frozenset({JobResult.SUCCESS, JobResult.WARNING, JobResult.SKIPPED})
FAILED_RESULTS = frozenset({JobResult.ERROR, JobResult.CANCELLED})


@dataclass(frozen=True)
class JobSnapshot:
    id: int
    job_type: str
    state: str
    result: str | None = None
    det: str = ""
    processed: int = 0
    total: int | None = None
    phase: str = ""
    superseded_by: str = ""


def pipeline_status(jobs: Iterable[JobSnapshot]) -> str:
    """The pipeline status is a function of its jobs, recomputed on every transition.

    1. Any job not finished: ``running`` once any job has started, else ``not_started``.
    2. All finished: ``cancelled`` if any was cancelled; with errors, ``partial`` when
       some job still produced a result (success/warning), ``failed`` when none did;
       ``superseded`` when a job's work was not applied because a later one was (an
       older upload): it must not read as applied; otherwise ``success`` (warnings and
       "nothing to do" skips included).
    """
    jobs = list(jobs)
    if not jobs:
        return PipelineStatus.SUCCESS
    if any(j.state != JobState.FINISHED for j in jobs):
        started = any(j.state in (JobState.RUNNING, JobState.FINISHED) for j in jobs)
        return PipelineStatus.RUNNING if started else PipelineStatus.NOT_STARTED
    results = {j.result for j in jobs}
    if JobResult.CANCELLED in results:
        return PipelineStatus.CANCELLED
    if JobResult.ERROR in results:
        produced = results & {JobResult.SUCCESS, JobResult.WARNING}
        return PipelineStatus.PARTIAL if produced else PipelineStatus.FAILED
    if superseded_by(jobs):
        return PipelineStatus.SUPERSEDED
    return PipelineStatus.SUCCESS


def superseded_by(jobs: Iterable[JobSnapshot]) -> str:
    """What superseded the pipeline ("upload #12"), or "" when nothing did."""
    return next((j.superseded_by for j in jobs if j.superseded_by and j.state == JobState.FINISHED), "")


def job_fraction(job: JobSnapshot) -> float:
    """A job's weight in its pipeline's progress (``models.job_done``); a job that is not
    running or finished counts nothing, whatever rows an earlier attempt reported."""
    if job.state not in (JobState.FINISHED, JobState.RUNNING):
        return 0.0
    return job_done(job.state, job.processed, job.total) or 0.0


def pipeline_progress(jobs: Iterable[JobSnapshot]) -> tuple[float, str]:
    """(percent, phase label). Each DAG node weighs the same; a running node with a
    known total contributes its row fraction, so the bar moves during a long ingest."""
    jobs = list(jobs)
    if not jobs:
        return 100.0, "done"
    percent = round(100.0 * sum(job_fraction(j) for j in jobs) / len(jobs), 1)
    if any(j.state != JobState.FINISHED for j in jobs):
        percent = min(percent, 99.9)  # 100 % means done, not "the last job has processed its last row"
    running = [j for j in jobs if j.state == JobState.RUNNING]
    if running:
        first = running[0]
        label = first.job_type + (f" {first.det}" if first.det else "")
        if len(running) > 1:
            label += f" (+{len(running) - 1} more)"
        if first.phase:
            label += f": {first.phase}"
        return percent, label
    if all(j.state == JobState.FINISHED for j in jobs):
        winner = superseded_by(jobs)
        return 100.0, f"superseded by {winner}" if winner else "done"
    if any(j.state == JobState.QUEUED for j in jobs):
        return percent, "waiting for a worker"
    return percent, "not started"


def downstream(start: Iterable[int], dependents: Mapping[int, Iterable[int]]) -> set[int]:
    """Every job reachable from ``start`` along dependency edges (start excluded)."""
    seen: set[int] = set()
    stack = list(start)
    while stack:
        for child in dependents.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def layers(job_ids: Iterable[int], depends_on: Mapping[int, Iterable[int]]) -> list[list[int]]:
    """Topological layers of the sub-DAG ``job_ids`` (edges outside it are ignored).

    Raises ValueError on a cycle: a plan must be a DAG.
    """
    remaining = set(job_ids)
    deps = {j: {d for d in depends_on.get(j, ()) if d in remaining} for j in remaining}
    result: list[list[int]] = []
    while remaining:
        ready = sorted(j for j in remaining if not deps[j] & remaining)
        if not ready:
            raise ValueError(f"dependency cycle among jobs {sorted(remaining)}")
        result.append(ready)
        remaining -= set(ready)
    return result
