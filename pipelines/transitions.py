"""Every way a job's row may change, in one table, checked before anything is written.

A transition names the states a job may be in (``from_states``), the state it ends in
(``to_state``; None when the state stays), the extra columns the row must still hold
(``guard``, and ``owned``: the caller's attempt number) and the only columns it may
write (``writes``). Every write to a job row goes through :func:`prepare` and then one
compare-and-set UPDATE whose WHERE is :func:`where` — ``state IN from_states`` plus the
guard — so a row that moved meanwhile is simply not matched (someone else won), and a
call that names a column or a state the transition does not allow is refused with
``IllegalTransition`` before any SQL runs.

Conditions on *other* rows or on time (every upstream job done, a heartbeat stale) are
``precondition``: the caller checks them in its locked working set
(``pipelines.services.locked_pipeline``), and the table states them so a reader sees
every rule of a transition in one place.

Not here on purpose: ``dispatched_at`` (bookkeeping of the broker send, written by
``pipelines.dispatch`` whatever the state) and the row inserted by planning, which
``PLAN`` describes and ``planned_state`` decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from pipelines.errors import ConflictError
from pipelines.models import Job, JobState

_S = JobState


class IllegalTransition(ConflictError):
    """A write the transition table does not allow; refused before anything is written.

    A conflict, not a crash: should a control ever attempt one, its caller gets a 409
    naming the move instead of a 500.
    """

    code = "illegal_transition"


@dataclass(frozen=True)
class Transition:
    name: str
    from_states: frozenset[str]
    to_state: str | None  # None: the state does not change
    writes: frozenset[str]
    guard: Mapping[str, Any] = field(default_factory=dict)  # columns the row must also hold
    owned: bool = False  # the row must hold the caller's attempt (``attempts = <attempt>``)
    precondition: str = ""  # checked by the caller in its locked working set
    event_kind: str | None = "state"  # the JobEvent it appends; None: no event

    def moves(self) -> set[tuple[str, str]]:
        """The (old, new) state pairs it makes; a write that keeps the state is no move."""
        return {(old, self.to_state) for old in self.from_states} if self.to_state else set()


def _t(
    name: str, from_states: tuple[str, ...], to_state: str | None, writes: str, **options: Any
) -> Transition:
    return Transition(name, frozenset(from_states), to_state, frozenset(writes.split()), **options)


_STARTED = "attempts started_at heartbeat_at worker celery_task_id status_message phase " \
    "progress_processed progress_total dispatch_when_ready"
_ENDED = "result status_message finished_at heartbeat_at phase"

PLAN = _t(
    "plan", (), None, "",
    precondition="a new row: queued when it has no upstream job, else not_started (planned_state)",
)
CLAIM = _t(
    "claim", (_S.QUEUED,), _S.RUNNING, _STARTED, guard={"cancel_requested": False},
    precondition="its queue is not paused",
)
TAKE_OVER = _t(
    "take_over", (_S.RUNNING,), _S.RUNNING, _STARTED, guard={"cancel_requested": False}, owned=True,
    precondition="the same Celery message, the owner's heartbeat stale, attempts left",
)
NOTE_EARLY_DELIVERY = _t(
    "note_early_delivery", (_S.NOT_STARTED,), None, "dispatch_when_ready", event_kind=None,
    precondition="a message arrived before the upstream jobs finished: send one when it is ready",
)
NOTE_PAUSED = _t(
    "note_paused", (_S.QUEUED, _S.RUNNING), None, "status_message", event_kind="message",
    precondition="its queue is paused",
)
HEARTBEAT = _t("heartbeat", (_S.RUNNING,), None, "heartbeat_at", guard={"cancel_requested": False}, owned=True,
               event_kind=None)
PROGRESS = _t(
    "progress", (_S.RUNNING,), None, "progress_processed progress_total heartbeat_at phase status_message meta",
    guard={"cancel_requested": False}, owned=True, event_kind="progress",
)
COMMIT_EFFECT = _t(
    "commit_effect", (_S.RUNNING,), None, "effect_committed effect_outcome", guard={"cancel_requested": False},
    owned=True, event_kind=None, precondition="inside the transaction that holds the job's effect",
)
FINISH = _t(
    "finish", (_S.RUNNING,), _S.FINISHED, f"{_ENDED} error progress_processed meta", owned=True,
    precondition="a superseded job finishes too, with superseded_by in its meta (not a state of its own)",
)
REQUEUE = _t(
    "requeue", (_S.RUNNING,), _S.QUEUED, "queued_at heartbeat_at worker error status_message", owned=True,
    precondition="a transient failure with attempts left; re-sent after a backoff",
)
RECOVER = _t(
    "recover", (_S.RUNNING,), _S.QUEUED, "queued_at heartbeat_at worker status_message", owned=True,
    precondition="the attempt is gone: stale heartbeat (reaper), dead pool process, or an operator's recover",
)
EXHAUST = _t(
    "exhaust", (_S.RUNNING,), _S.FINISHED, f"{_ENDED} error", owned=True,
    precondition="the attempt is gone and no attempts are left (finish from its effect if it committed one)",
)
PROMOTE = _t(
    "promote", (_S.NOT_STARTED,), _S.QUEUED, "queued_at status_message dispatch_when_ready",
    precondition="every upstream job finished with an OK result",
)
SKIP = _t(
    "skip", (_S.NOT_STARTED, _S.QUEUED), _S.FINISHED, f"{_ENDED} cancel_requested",
    precondition="an upstream job failed, was cancelled or was superseded",
)
CANCEL = _t(
    "cancel", (_S.NOT_STARTED, _S.QUEUED, _S.RUNNING), _S.FINISHED, f"{_ENDED} cancel_requested",
    guard={"effect_committed": False},
)
RETRY_RESET = _t(
    "retry_reset", (_S.FINISHED,), _S.NOT_STARTED,
    "result error cancel_requested effect_committed effect_outcome dispatch_when_ready progress_processed "
    "progress_total phase meta heartbeat_at started_at finished_at worker max_attempts status_message",
    precondition="an operator's retry of it or of a job downstream of it; no job it resets is running",
)
WAIT_FOR_UPSTREAM = _t(
    "wait_for_upstream", (_S.QUEUED,), _S.NOT_STARTED, "queued_at status_message",
    precondition="an upstream job of it is retried: it waits for that one again",
)

TABLE: dict[str, Transition] = {
    t.name: t
    for t in (
        PLAN, CLAIM, TAKE_OVER, NOTE_EARLY_DELIVERY, NOTE_PAUSED, HEARTBEAT, PROGRESS, COMMIT_EFFECT, FINISH,
        REQUEUE, RECOVER, EXHAUST, PROMOTE, SKIP, CANCEL, RETRY_RESET, WAIT_FOR_UPSTREAM,
    )
}

# Every (old state, new state) step a job's state can take, derived from the table:
# what the event log may show between two state events of one job.
MOVES: frozenset[tuple[str, str]] = frozenset(
    move for t in TABLE.values() for move in t.moves()
)


def planned_state(*, has_upstream: bool) -> str:
    """The state ``PLAN`` gives a new job."""
    return JobState.NOT_STARTED if has_upstream else JobState.QUEUED


def prepare(transition: Transition, values: dict[str, Any], *, attempt: int | None = None) -> dict[str, Any]:
    """The columns to write for ``transition``, or ``IllegalTransition`` before any write.

    The caller may not set ``state`` (the transition does), nor any column outside
    ``writes``; an owned transition needs the caller's attempt.
    """
    if "state" in values:
        raise IllegalTransition(f"{transition.name}: the state is the transition's to write, not the caller's")
    extra = set(values) - transition.writes
    if extra:
        raise IllegalTransition(f"{transition.name} may not write {', '.join(sorted(extra))}")
    if transition.owned and attempt is None:
        raise IllegalTransition(f"{transition.name} needs the attempt that owns the job")
    if transition.to_state is None:
        return dict(values)
    if transition.to_state == JobState.FINISHED and "phase" in transition.writes:
        # Every way a job ends shows it ended, not the last phase it reported
        # ("applying" on a finished job reads as stuck).
        values = {"phase": "done", **values}
    return {**values, "state": transition.to_state}


def where(transition: Transition, *, attempt: int | None = None) -> Q:
    """The compare-and-set condition of ``transition``: its from-states and guard."""
    condition = Q(state__in=sorted(transition.from_states), **transition.guard)
    if transition.owned:
        condition &= Q(attempts=attempt)
    return condition


def holds(transition: Transition, job: Any, *, attempt: int | None = None) -> bool:
    """:func:`where`, read on a row already loaded under the pipeline lock."""
    return (
        job.state in transition.from_states
        and all(getattr(job, column) == value for column, value in transition.guard.items())
        and (not transition.owned or job.attempts == attempt)
    )


def update_unlocked(transition: Transition, job_id: int, values: dict[str, Any], *, attempt: int | None) -> int:
    """One job's compare-and-set without the pipeline lock; returns the rows written (0 or 1).

    For the writes that must not queue behind a transition (a heartbeat) or run inside
    a transaction that already holds the lock (the effect commit).
    """
    return Job.objects.filter(where(transition, attempt=attempt), pk=job_id).update(
        **prepare(transition, values, attempt=attempt)
    )
