"""Job counters kept by PostgreSQL triggers (migration `console_counters`), read instead of scanning jobs.

Two tables of *delta rows* (``key, ±n``) that the triggers append on every job insert,
transition, delete and pipeline move (see the migration for why deltas and why
triggers):

- ``pipelines_job_tally``: by pipeline year, module, job type, queue, state, result;
- ``pipelines_job_finish_tally``: by UTC hour of ``finished_at``, module, result.

A read sums the rows of its key (a few hundred after compaction, instead of a million
jobs). ``compact`` folds the deltas into one row per key: beat runs it every minute,
and a read that found many rows runs it too, so a deployment without beat stays fast.
``check`` compares every key with a direct count of the jobs, ``rebuild`` recounts
(``manage.py sluice_counters``): the repair path if the tables were ever edited by
hand or a trigger was disabled.

Exactness under concurrency: a delta row is written by the transaction that changed the
job, so it is visible exactly when that change is; compaction deletes the rows its
snapshot sees and inserts their sums in one statement, and rows committed meanwhile are
not in its snapshot, so they are neither deleted nor summed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import OperationalError, connection, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from psycopg import sql

from pipelines.models import Job

# Rows a read may sum before it compacts the table itself (beat normally keeps it far below).
COMPACT_AFTER_ROWS = 20_000
JOB_KEY = ("year", "module", "job_type", "queue", "state", "result")
FINISH_KEY = ("hour", "module", "result")
TABLES = {"pipelines_job_tally": JOB_KEY, "pipelines_job_finish_tally": FINISH_KEY}
_COMPACT_LOCK = 0x51_0C_E0_11  # pg advisory lock: one compaction (or rebuild) at a time


@dataclass(frozen=True)
class JobCount:
    state: str
    result: str | None
    job_type: str
    queue: str
    n: int


def _where(conditions: Iterable[tuple[str, Any]], modules: Collection[str] | None) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = [sql.SQL("TRUE")]
    params: list[Any] = []
    for column, value in conditions:
        if value not in (None, ""):  # as django-filter: an empty value is no filter
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if modules is not None:  # backoffice.access scope: None = every module
        clauses.append(sql.SQL("module = ANY(%s)"))
        params.append(sorted(modules))
    return sql.SQL(" AND ").join(clauses), params


def _columns(key: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in key)


def job_counts(
    *,
    modules: Collection[str] | None = None,
    year: int | None = None,
    module: str | None = None,
    job_type: str | None = None,
    queue: str | None = None,
) -> list[JobCount]:
    """Jobs by state, result, type and queue, as ``GROUP BY`` over the job table would count them."""
    where, params = _where(
        [("year", year), ("module", module), ("job_type", job_type), ("queue", queue)], modules
    )
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                """SELECT state, result, job_type, queue, sum(n), count(*) FROM pipelines_job_tally
                   WHERE {} GROUP BY 1, 2, 3, 4"""
            ).format(where),
            params,
        )
        rows = cursor.fetchall()
    _compact_if_large(sum(r[5] for r in rows))
    return [JobCount(state, result, job_type, queue, int(n)) for state, result, job_type, queue, n, _ in rows if n]


def finished_counts(*, jobs: QuerySet[Job], since: datetime, modules: Collection[str] | None) -> dict[str, int]:
    """Jobs of ``jobs`` with ``finished_at >= since``, by result (``"none"`` for NULL).

    Exactly ``jobs.filter(finished_at__gte=since)`` counted by result: the whole UTC hours
    inside the window come from the hourly tally, the partial hours at its two edges
    (and any ``finished_at`` in the future) from the ``job_finished_result`` index. Only
    for ``jobs`` narrowed by module (the tally's one dimension besides time): the caller
    passes the same ``modules`` scope it narrowed ``jobs`` with.
    """
    since = since.astimezone(UTC)  # the tally's hours are UTC hours
    first_full = since.replace(minute=0, second=0, microsecond=0)
    if first_full < since:
        first_full += timedelta(hours=1)
    # Any UTC hour works as the split between tally and index; the current one keeps the
    # directly counted part small.
    current_hour = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    counts: dict[str, int] = {}
    if first_full < current_hour:
        where, params = _where([], modules)
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    """SELECT result, sum(n), count(*) FROM pipelines_job_finish_tally
                       WHERE hour >= %s AND hour < %s AND {} GROUP BY 1"""
                ).format(where),
                [first_full, current_hour, *params],
            )
            rows = cursor.fetchall()
        _compact_if_large(sum(r[2] for r in rows))
        for result, n, _ in rows:
            if n:
                counts[result or "none"] = int(n)
        edges = Q(finished_at__gte=since, finished_at__lt=first_full) | Q(finished_at__gte=current_hour)
    else:
        edges = Q(finished_at__gte=since)
    # Counting an indexed column: the index alone answers (an index-only scan).
    for row in jobs.filter(edges).order_by().values("result").annotate(n=Count("finished_at")):
        key = row["result"] or "none"
        counts[key] = counts.get(key, 0) + row["n"]
    return {k: v for k, v in counts.items() if v}


def _compact_if_large(rows: int) -> None:
    if rows > COMPACT_AFTER_ROWS:
        transaction.on_commit(compact) if connection.in_atomic_block else compact()


def compact() -> int:
    """Fold the delta rows into one row per key; returns the rows removed. Safe at any time."""
    removed = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_COMPACT_LOCK])
        if not cursor.fetchone()[0]:
            return 0  # another process is compacting
        for table, key in TABLES.items():
            cursor.execute(
                sql.SQL(
                    """WITH gone AS (DELETE FROM {table} RETURNING {columns}, n),
                            summed AS (INSERT INTO {table} ({columns}, n)
                                       SELECT {columns}, sum(n) FROM gone GROUP BY {columns} HAVING sum(n) <> 0
                                       RETURNING 1)
                       SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM summed)"""
                ).format(table=sql.Identifier(table), columns=_columns(key))
            )
            removed += int(cursor.fetchone()[0])
    return removed


_DIRECT = {
    "pipelines_job_tally": sql.SQL("""
        SELECT p.year, p.module, j.job_type, j.queue, j.state, j.result, count(*)
        FROM pipelines_job j JOIN pipelines_pipeline p ON p.id = j.pipeline_id GROUP BY 1, 2, 3, 4, 5, 6"""),
    "pipelines_job_finish_tally": sql.SQL("""
        SELECT date_trunc('hour', j.finished_at, 'UTC'), p.module, j.result, count(*)
        FROM pipelines_job j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
        WHERE j.finished_at IS NOT NULL GROUP BY 1, 2, 3"""),
}


# The jobs that must be in ``pipelines_aggregation_suspect`` (migration
# ``aggregation_suspects``, whose FILL this is; ``pipelines.alerts`` reads the table):
# both runs of every pair of one year where the later one starts before the earlier one
# ends (never, while it runs), and every aggregation of a pipeline that has several.
_SUSPECTS = sql.SQL("""
    SELECT unnest(ARRAY[s.id, x.id]) FROM pipelines_job x JOIN pipelines_job s
      ON s.job_type = 'aggregation' AND s.started_at IS NOT NULL
     AND tstzrange(s.started_at, CASE WHEN s.finished_at IS NULL THEN NULL
                                      ELSE greatest(s.started_at, s.finished_at) END, '[]')
      && tstzrange(x.started_at, CASE WHEN x.finished_at IS NULL THEN NULL
                                      ELSE greatest(x.started_at, x.finished_at) END, '[]')
     AND s.pipeline_year = x.pipeline_year AND s.id <> x.id
     AND CASE WHEN (s.started_at, s.id) < (x.started_at, x.id)
              THEN coalesce(s.finished_at, 'infinity') > x.started_at
              ELSE coalesce(x.finished_at, 'infinity') > s.started_at END
    WHERE x.job_type = 'aggregation' AND x.started_at IS NOT NULL
    UNION
    SELECT id FROM pipelines_job WHERE job_type = 'aggregation' AND pipeline_id IN (
        SELECT pipeline_id FROM pipelines_job WHERE job_type = 'aggregation' GROUP BY 1 HAVING count(*) > 1)""")
SUSPECTS_TABLE = "pipelines_aggregation_suspect"


def check() -> dict[str, list[tuple[Any, ...]]]:
    """Keys whose kept count differs from a direct count of the jobs: ``{table: [(key…, kept, direct)]}``,
    and the aggregations missing from the alert's suspects (``(job_id, 0, 1)``).

    One snapshot (REPEATABLE READ) for both sides, so concurrent transitions cannot make
    a correct tally look wrong. Scans the whole job table: an operator's tool, not a page.
    """
    out: dict[str, list[tuple[Any, ...]]] = {}
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:  # else the caller's transaction decides (a test's, say)
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for table, key in TABLES.items():
            cursor.execute(
                # UNION ALL + GROUP BY, not a FULL JOIN: keys hold NULLs (a result not yet
                # known, a module-less year), which a join would never match.
                sql.SQL(
                    """WITH direct ({columns}, n) AS ({direct})
                       SELECT {columns}, sum(kept)::bigint, sum(counted)::bigint
                       FROM (SELECT {columns}, n AS kept, 0 AS counted FROM {table}
                             UNION ALL SELECT {columns}, 0, n FROM direct) AS both_sides
                       GROUP BY {columns} HAVING sum(kept) <> sum(counted)"""
                ).format(columns=_columns(key), direct=_DIRECT[table], table=sql.Identifier(table))
            )
            out[table] = [tuple(row) for row in cursor.fetchall()]
        # The suspects are a superset by design: only a missing one is drift.
        cursor.execute(sql.SQL("SELECT id, 0, 1 FROM ({}) AS needed (id) WHERE id NOT IN (SELECT job_id FROM {})")
                       .format(_SUSPECTS, sql.Identifier(SUSPECTS_TABLE)))
        out[SUSPECTS_TABLE] = [tuple(row) for row in cursor.fetchall()]
    return out


def rebuild(*, attempts: int = 5) -> None:
    """Recount both tables (and refill the aggregation suspects) from the jobs, without stopping the engine.

    In one REPEATABLE READ snapshot: delete the rows it sees, insert the direct counts it
    sees. Deltas committed after the snapshot are not deleted and are not in the count,
    so they still apply on top: the result is exact however busy the workers are.
    """
    outermost = not connection.in_atomic_block
    for attempt in range(attempts):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                if outermost:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_COMPACT_LOCK])
                for table, key in TABLES.items():
                    cursor.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
                    insert = sql.SQL("INSERT INTO {} ({}, n) {}")
                    cursor.execute(insert.format(sql.Identifier(table), _columns(key), _DIRECT[table]))
                cursor.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(SUSPECTS_TABLE)))
                cursor.execute(sql.SQL("INSERT INTO {} (job_id) {}").format(sql.Identifier(SUSPECTS_TABLE), _SUSPECTS))
            return
        except OperationalError:  # a serialization failure: a compaction committed meanwhile
            if attempt == attempts - 1:
                raise

