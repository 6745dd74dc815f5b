"""Claim and finish in one round trip each: the worker's two hot transitions in PL/pgSQL.

``sluice_job_claim`` and ``sluice_job_finish`` (migration ``0015_engine_counters_sql_transitions``)
lock the pipeline row, make the compare-and-set, promote the downstream jobs that became
ready, move the pipeline's counters, status and progress, and append the events — in
one statement, so a worker outside a transaction pays one round trip per transition and
holds the global event counter (the last lock taken) only for the event INSERT and the
commit that follow it server-side, never across a network hop or Python code.

The rules stay in ``pipelines.transitions``: each call passes the transitions it makes
(:func:`rules`), each write is first checked by ``transitions.prepare`` exactly as the
Python path does, and anything but the plain case — a paused queue, an early or
duplicate delivery, a take-over, a failure, a superseded or "nothing downstream" outcome
— is left to the Python path (``LockedPipeline``) with nothing written.
``tests/pipelines/test_sql_transitions.py`` runs both paths side by side.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from pipelines import dag, events, messages, publish, transitions
from pipelines.messages import WAITING_WORKER
from pipelines.models import DONE_STATUSES, Job, Pipeline
from pipelines.registry import Outcome
from pipelines.services.locked_pipeline import dispatch_on_commit, unfinished_closure

# Off only in tests that compare this path with the Python one.
ENABLED = True

# The guard columns ``sluice_transition_holds`` reads; a transition guarded on another
# column cannot be passed to it (:func:`transition_spec` refuses, the SQL fails closed).
SQL_GUARD_COLUMNS = frozenset({"cancel_requested", "effect_committed"})


def transition_spec(transition: transitions.Transition) -> dict[str, Any]:
    """One row of the table as the SQL functions read it."""
    unknown = set(transition.guard) - SQL_GUARD_COLUMNS
    if unknown:
        raise ValueError(f"{transition.name}: the SQL path cannot check a guard on {sorted(unknown)}")
    return {
        "name": transition.name,
        "from": sorted(transition.from_states),
        "to": transition.to_state,
        "guard": dict(transition.guard),
        "owned": transition.owned,
        "event": transition.event_kind,
    }


@functools.cache
def _rules(count_keys: tuple[str, ...]) -> str:
    return json.dumps({
        "claim": transition_spec(transitions.CLAIM),
        "finish": transition_spec(transitions.FINISH),
        "promote": transition_spec(transitions.PROMOTE),
        "ok": sorted(dag.OK_RESULTS),
        "done": [str(s) for s in DONE_STATUSES],
        "count_keys": list(count_keys),
    })


def rules() -> str:
    """``p_rules`` of the SQL functions (JSON), composed once per set of registered count keys."""
    return _rules(events.count_keys())


def _json(value: Any) -> str:
    # Full microseconds (DjangoJSONEncoder would cut timestamps to milliseconds).
    return json.dumps(value, default=lambda o: o.isoformat() if isinstance(o, datetime) else str(o))


def _call(statement: str, params: list[Any]) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    assert row is not None
    value = row[0]
    return json.loads(value) if isinstance(value, str | bytes) else value


def _model(model: type[Any], row: dict[str, Any]) -> Any:
    """A model instance from ``to_jsonb(row)``; columns left out stay deferred."""
    fields = [f for f in model._meta.concrete_fields if f.column in row]
    return model.from_db("default", [f.attname for f in fields], [f.to_python(row[f.column]) for f in fields])


def _message_columns(values: dict[str, Any]) -> dict[str, Any]:
    if "status_message" in values:
        values = {**values, **messages.columns(values["status_message"])}
    return values


def _publish(payloads: list[dict[str, Any]], *, params: dict[int, dict[str, Any]],
             counts: dict[int, dict[str, Any]]) -> None:
    """After commit (at once outside a transaction), the events as the Python path sends them."""
    ordered = [events.message_in_order(p, status_params=params, counts=counts) for p in payloads or []]
    transaction.on_commit(lambda: publish.publish(ordered))


def claim(*, job_id: int, values: dict[str, Any], now: datetime) -> Job | None:
    """``transitions.CLAIM`` of a queued job in a running queue; None: not that case, nothing written.

    ``values`` are the claim's columns but ``attempts`` (the next one, counted by the database).
    """
    if not ENABLED:
        return None
    transitions.prepare(transitions.CLAIM, {**values, "attempts": None})
    columns = _message_columns(values)
    answer = _call(
        "SELECT sluice_job_claim(%s::bigint, %s::jsonb, %s::timestamptz, %s::jsonb)",
        [job_id, _json(columns), now, rules()],
    )
    if answer["outcome"] != "claimed":
        return None
    job: Job = _model(Job, answer["job"])
    job.pipeline = _model(Pipeline, answer["pipeline"])
    _publish(answer["events"], params={job.pk: columns.get("status_params", {})}, counts={})
    return job


def finish(*, job_id: int, attempt: int, outcome: Outcome, now: datetime) -> bool | None:
    """``transitions.FINISH`` with an OK outcome, and ``PROMOTE`` of what became ready.

    True: finished; False: this attempt no longer owns the job (nothing written, as the
    Python path); None: an outcome this path does not make (a failure, superseded,
    nothing to do downstream) — the Python path's.
    """
    if (
        not ENABLED
        or outcome.result not in dag.OK_RESULTS
        or outcome.superseded_by
        or outcome.skip_downstream
        or events.SUPERSEDED_BY in outcome.meta
    ):
        return None
    # What job_finish writes; ``progress_processed`` only when the job had a total (decided in SQL).
    finished = transitions.prepare(transitions.FINISH, {
        "result": outcome.result, "status_message": outcome.message, "error": None,
        "finished_at": now, "heartbeat_at": None, "progress_processed": None,
    }, attempt=attempt)
    if outcome.meta and "meta" not in transitions.FINISH.writes:
        raise transitions.IllegalTransition("finish may not write meta")
    finished = _message_columns(finished)
    promoted = _message_columns(transitions.prepare(transitions.PROMOTE, {
        "queued_at": now, "status_message": WAITING_WORKER, "dispatch_when_ready": False,
    }))
    answer = _call(
        "SELECT sluice_job_finish(%s::bigint, %s::integer, %s::jsonb, %s::jsonb, %s::jsonb, %s::timestamptz, "
        "%s::jsonb)",
        [job_id, attempt, _json(finished), _json(outcome.meta or {}), _json(promoted), now, rules()],
    )
    if answer["outcome"] == "refused":
        return False
    if answer["outcome"] != "finished":
        return None
    params = {int(p["job"]["id"]): promoted["status_params"] for p in answer["events"] or [] if p.get("job")}
    params[job_id] = finished["status_params"]
    counts = {job_id: {**answer["counts_before"], **events.counts_of(outcome.meta or {})}}
    _publish(answer["events"], params=params, counts=counts)
    if answer["early"]:
        dispatch_on_commit(unfinished_closure(answer["pipeline_id"], answer["early"]))
    return True
