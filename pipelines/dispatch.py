"""Turning planned jobs into Celery messages, and reading queue depth from the broker.

The canvas mirrors the DAG: a chain of topological layers, where a layer of several
jobs becomes a group (so a group followed by a job is a chord). It is the fast path
only: every task re-reads its job from PostgreSQL and the claim decides whether it
runs, so duplicates, early arrivals and lost messages are all survivable (the reaper
re-sends what was lost).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import chain, current_app, group
from django.conf import settings
from django.utils import timezone

from pipelines import dag, registry
from pipelines.models import Job, JobState

logger = logging.getLogger(__name__)

# The task that runs one job (``workers.tasks.run_job``), named rather than imported:
# the sender needs its name only, and the task module imports the engine, which sends.
RUN_JOB = "sluice.run_job"


@dataclass(frozen=True)
class Plan:
    """What a canvas needs of jobs their caller already holds (planning just inserted
    them, none finished): their queues and dependency edges, so sending reads nothing."""

    queues: dict[int, str]
    depends_on: dict[int, list[int]]


def build_canvas(job_ids: Iterable[int], *, plan: Plan | None = None) -> Any:
    if plan is not None:
        queues = {pk: plan.queues[pk] for pk in job_ids}
        depends_on = plan.depends_on
    else:
        queues = {
            pk: queue for pk, queue in
            Job.objects.filter(pk__in=list(job_ids)).exclude(state=JobState.FINISHED).values_list("pk", "queue")
        }
        depends_on = {}
        for child, parent in Job.depends_on.through.objects.filter(from_job_id__in=list(queues)).values_list(
            "from_job_id", "to_job_id"
        ):
            depends_on.setdefault(child, []).append(parent)
    if not queues:
        return None
    parts = []
    for layer in dag.layers(queues, depends_on):
        sigs = [current_app.signature(RUN_JOB, args=(pk,), immutable=True, queue=queues[pk]) for pk in layer]
        parts.append(sigs[0] if len(sigs) == 1 else group(sigs))
    return parts[0] if len(parts) == 1 else chain(*parts)


def send(job_ids: Iterable[int], *, countdown: float | None = None, plan: Plan | None = None) -> bool:
    """Publish the jobs' canvas; False (and the jobs left to the reaper) if Redis refused.

    The plan is already committed, so a failed publish must neither raise into the
    request nor wait long: the retry policy is short, and ``dispatched_at`` is cleared,
    which the reaper reads as "never sent" and re-sends on its next round
    (``SLUICE_UNSENT_GRACE_SECONDS``), without waiting for the lost-message threshold.
    """
    ids = list(job_ids)
    canvas = build_canvas(ids) if plan is None else build_canvas(ids, plan=plan)
    if canvas is None:
        return True
    options: dict[str, Any] = {"retry": True, "retry_policy": settings.SLUICE_PUBLISH_RETRY_POLICY}
    if countdown:
        options["countdown"] = countdown
    try:
        canvas.apply_async(**options)
    except Exception as exc:  # noqa: BLE001 - any publish failure: the reaper re-sends
        logger.warning("dispatch of jobs %s failed, left to the reaper: %r", ids, exc)
        Job.objects.filter(pk__in=ids).update(dispatched_at=None)
        return False
    Job.objects.filter(pk__in=ids).update(dispatched_at=timezone.now())
    return True


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Redis list (not counting ones a worker has reserved)."""
    with current_app.connection_for_read() as conn:
        client = conn.default_channel.client
        pipe = client.pipeline()
        for queue in registry.queues():
            pipe.llen(queue)
        return dict(zip(registry.queues(), (int(n) for n in pipe.execute()), strict=True))


# Above this many waiting messages the reaper does not read them all and falls back to
# "queue empty" as the sign of a lost message.
SCAN_LIMIT = 5000


def job_ids_in_broker() -> set[int] | None:
    """Ids of the jobs whose message is waiting in a queue or held by a *live* worker.

    Chain and chord continuations travel inside their upstream's message, so those count
    too. None when the queues are too long to read (``SCAN_LIMIT``). A queued job whose
    id is not here has lost its message: the reaper re-sends it without waiting for the
    queue to drain.

    A message a worker reserved (prefetched, or running with late ack) sits in Redis'
    unacked hash until it is acked, and stays there when that worker is killed: Redis
    gives it back only after the visibility timeout (1 h). Such a message counts only if
    a worker that answers now still holds its task (``_held_by_live_workers``); else a job
    whose message a dead worker had prefetched waited an hour (`make chaos`, every worker
    killed during the recalc chord).
    """
    with current_app.connection_for_read() as conn:
        channel = conn.default_channel
        client = channel.client
        pipe = client.pipeline()
        for queue in registry.queues():
            pipe.llen(queue)
        pipe.hlen(channel.unacked_key)
        if sum(int(n) for n in pipe.execute()) > SCAN_LIMIT:
            return None
        pipe = client.pipeline()
        for queue in registry.queues():
            pipe.lrange(queue, 0, -1)
        pipe.hvals(channel.unacked_key)
        *queued, unacked = pipe.execute()
    found: set[int] = set()
    for raw in [m for q in queued for m in q]:
        _collect_job_ids(_decode(raw), found)
    reserved: dict[str, Any] = {}
    for raw in unacked:
        try:
            message = _decode(json.loads(raw)[0])  # [message, exchange, routing key]
        except (ValueError, IndexError, TypeError):
            continue
        task_id = (message or {}).get("headers", {}).get("id")
        if task_id:
            reserved[str(task_id)] = message
    for task_id in _held_by_live_workers(list(reserved)):
        _collect_job_ids(reserved[task_id], found)
    return found


# How long the reaper waits for workers to say which reserved tasks they hold. A worker
# slower than this looks dead: its jobs' messages are sent again, which is harmless (the
# claim is a compare-and-set on the job row).
INSPECT_TIMEOUT = 1.0


def _held_by_live_workers(task_ids: list[str]) -> set[str]:
    """The ones of ``task_ids`` that a worker answering now runs, has reserved or scheduled."""
    if not task_ids:
        return set()
    try:
        replies = current_app.control.inspect(timeout=INSPECT_TIMEOUT).query_task(*task_ids) or {}
    except Exception:  # no answer: treated as held by nobody (a re-send is safe)
        logger.warning("could not ask the workers which tasks they hold", exc_info=True)
        return set()
    return {task_id for held in replies.values() for task_id in (held or {})}


def _decode(raw: Any) -> Any:
    """A kombu Redis message (JSON, body base64) → (headers, body) as plain data."""
    try:
        message = json.loads(raw) if isinstance(raw, str | bytes) else raw
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return {"headers": message.get("headers") or {}, "body": json.loads(body)}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _collect_job_ids(node: Any, found: set[int]) -> None:
    """Every ``sluice.run_job`` in a message: its own task, and signatures nested in it."""
    if isinstance(node, dict):
        headers = node.get("headers")
        if isinstance(headers, dict) and headers.get("task") == RUN_JOB and "body" in node:
            args = node["body"][0] if isinstance(node["body"], list) and node["body"] else []
            _add(args, found)
        if node.get("task") == RUN_JOB:
            _add(node.get("args"), found)
        for value in node.values():
            _collect_job_ids(value, found)
    elif isinstance(node, list):
        for value in node:
            _collect_job_ids(value, found)


def _add(args: Any, found: set[int]) -> None:
    if isinstance(args, list) and args and isinstance(args[0], int):
        found.add(args[0])
