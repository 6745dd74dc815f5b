"""The engine's write API: what other apps, the API, the CLI and tests call.

This package's face on purpose (HackSoft's ``services/`` package): callers write
``from pipelines import services`` and ``services.job_cancel(...)`` and need not know
which module holds a change. The modules are split by who drives the change:

- ``planning``: a DAG of jobs inserted and sent (uploads, operators, checks);
- ``worker_side``: claim, heartbeat, progress, commit the effect, finish, requeue;
- ``controls``: an operator's cancel, retry, recover, queue pause/resume;
- ``reaper``: lost workers and messages, dead pool processes, retention;
- ``audit``: the operator action record;
- ``locked_pipeline``: the locked working set every transition runs in, checked
  against the table in ``pipelines.transitions``.

Inside ``pipelines`` the modules import each other directly, never this package.
"""

from __future__ import annotations

from pipelines.errors import ConflictError
from pipelines.services.audit import actor_name, actor_user, operator_action_record
from pipelines.services.controls import (
    job_cancel,
    job_recover,
    job_retry,
    pipeline_cancel,
    pipeline_retry,
    queue_pause,
    queue_resume,
)
from pipelines.services.planning import JobSpec, pipeline_plan, pipeline_start_noop
from pipelines.services.reaper import ReapReport, job_process_lost, reap
from pipelines.services.worker_side import (
    Claim,
    job_claim,
    job_commit_effect,
    job_finish,
    job_heartbeat,
    job_is_current,
    job_progress,
    job_requeue_after_failure,
)
from pipelines.transitions import IllegalTransition

__all__ = [
    "Claim",
    "ConflictError",
    "IllegalTransition",
    "JobSpec",
    "ReapReport",
    "actor_name",
    "actor_user",
    "job_cancel",
    "job_claim",
    "job_commit_effect",
    "job_finish",
    "job_heartbeat",
    "job_is_current",
    "job_process_lost",
    "job_progress",
    "job_recover",
    "job_requeue_after_failure",
    "job_retry",
    "operator_action_record",
    "pipeline_cancel",
    "pipeline_plan",
    "pipeline_retry",
    "pipeline_start_noop",
    "queue_pause",
    "queue_resume",
    "reap",
]
