"""Apply: the one transactional step of an ingest, run inside the job's ``ctx.effect()``.

Data entries are replaced whole (a new partition of the valid staged rows, the replaced
upload's partition emptied: readers see the old rows until commit, any failure rolls
everything back);
factors are upserted by natural key and the module-year's others marked stale. Both
take the module-year advisory lock first (``ingestion.locks``), then the
``ModuleState`` row, and refuse to overwrite an ingest planned later than this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from psycopg import sql

from ingestion.locks import lock_module_year
from ingestion.modules import ROLE_ACTIVITY, ROLE_FACTOR, ROLE_MODIFIER, TARGET_DATA, TARGET_FACTORS, ModuleDef
from ingestion.staging import ERRS, STAGE, STAGE_TABLE, analyze
from ingestion.validation import staged_value, valid_rows

logger = logging.getLogger(__name__)


def store_row_errors(*, job_id: int) -> None:
    with connection.cursor() as cur:
        cur.execute("DELETE FROM ingestion_rowerror WHERE job_id = %s", [job_id])
        cur.execute(
            sql.SQL(
                """INSERT INTO ingestion_rowerror (job_id, row, "column", reason)
                   SELECT %s, row, COALESCE(col, ''), reason FROM {} ORDER BY row, ord"""
            ).format(ERRS),
            [job_id],
        )


def module_state_for_update(cur: Any, year: int, module: str) -> tuple[Any, ...]:
    cur.execute(
        """INSERT INTO ingestion_modulestate (year, module, data_version, totals_version, data_rows)
           VALUES (%s, %s, 0, 0, 0) ON CONFLICT (year, module) DO NOTHING""",
        [year, module],
    )
    cur.execute(
        """SELECT data_job_id, factors_job_id, data_version, totals_version, totals_pipeline_id
           FROM ingestion_modulestate WHERE year = %s AND module = %s FOR UPDATE""",
        [year, module],
    )
    return tuple(cur.fetchone())


@dataclass
class ApplyResult:
    applied: bool
    rows: int = 0
    superseded_by_job: int | None = None
    factors_stale: int = 0


ENTRY_TABLE = "ingestion_dataentry"
ENTRY_PARTITION_PREFIX = "ingestion_dataentry_u"
# ``id`` = upload_id * 2^32 + source_row: unique by construction (a file has fewer than
# 2^32 rows), so the insert draws no sequence value per row (0.3 s of 1.7 s per 1 M rows).
ROW_ID_SHIFT = 1 << 32
# The insert runs in this many statements (``on_slice`` is called after each).
APPLY_SLICES = 10
APPLY_SLICED_MAX_ERRORS = 50_000
# Dropping a replaced partition locks the whole parent (ACCESS EXCLUSIVE): it waits at
# most this long (a queued lock also holds up every later reader) for readers of other
# module-years; else the emptied partition is left for the next ingest to drop.
DROP_LOCK_TIMEOUT = "200ms"


def entry_partition(upload_id: int) -> sql.Identifier:
    return sql.Identifier(f"{ENTRY_PARTITION_PREFIX}{int(upload_id)}")


def replace_data_entries(
    *, mod: ModuleDef, year: int, upload_id: int, job_id: int,
    on_slice: Callable[[int, int], None] = lambda done, slices: None,
) -> ApplyResult:
    """Atomically replace the module-year's data entries with the staged valid rows.

    ``ingestion_dataentry`` is partitioned by upload (migration 0007), so in the effect
    transaction:

    1. Take the module-year lock and its ``ModuleState`` row; an ingest planned earlier
       than the one already applied (two uploads racing) does not overwrite it.
    2. Attach an empty partition for this upload (``ATTACH`` takes only SHARE UPDATE
       EXCLUSIVE on the parent: readers and other writers go on); a re-run of the same
       upload empties its existing partition instead.
    3. Insert the valid staged rows through the parent (routed to that partition): a
       heap without any index to maintain; in ``APPLY_SLICES`` statements over ranges of
       the staging table's pages, ``on_slice(done, slices)`` after each.
    4. ``ANALYZE`` it (the recalcs read it next), and ``TRUNCATE`` the replaced
       upload's partition (it locks that partition only).

    Readers keep seeing the old rows until this transaction commits (MVCC; TRUNCATE's
    lock makes readers of the old partition wait for the commit, then find it empty and
    ``ModuleState`` pointing at the new one); any failure rolls all of it back. The
    emptied partition is dropped after the commit (``drop_replaced_partitions``).
    """
    by_role = {c.role: c for c in mod.columns(TARGET_DATA)}
    activity = staged_value(by_role[ROLE_ACTIVITY])
    modifier_col = by_role.get(ROLE_MODIFIER)
    # The module's formula is SQL written in ``ingestion.modules`` (code, not input).
    modifier = sql.SQL(mod.modifier_sql).format(v=staged_value(modifier_col)) if modifier_col else sql.SQL("1.0")
    lock_module_year(year, mod.key)
    partition = entry_partition(upload_id)
    with connection.cursor() as cur:
        data_job_id, *_ = module_state_for_update(cur, year, mod.key)
        if data_job_id is not None and data_job_id > job_id:
            return ApplyResult(applied=False, superseded_by_job=data_job_id)
        cur.execute(
            "SELECT data_upload_id FROM ingestion_modulestate WHERE year = %s AND module = %s", [year, mod.key]
        )
        old_upload_id = cur.fetchone()[0]
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{ENTRY_PARTITION_PREFIX}{int(upload_id)}"])
        if cur.fetchone()[0]:
            # The same upload loaded again (a re-run), or an emptied partition not dropped yet.
            cur.execute(sql.SQL("TRUNCATE {}").format(partition))
        else:
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(partition, sql.Identifier(ENTRY_TABLE)))
            cur.execute(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                    sql.Identifier(ENTRY_TABLE), partition, sql.Literal(int(upload_id))
                )
            )
        insert = sql.SQL(
            """
            INSERT INTO ingestion_dataentry
                (id, year, module, det, unit_id, category, activity, modifier, comment, upload_id, source_row)
            SELECT {base} + s.row, %s, %s, s.det, s.unit_id, s.category, ({activity})::float8, {modifier},
                   s.comment, %s, s.row
            FROM {stage} s
            WHERE {valid} AND s.ctid >= %s::tid AND s.ctid < %s::tid
            """
        ).format(base=sql.Literal(int(upload_id) * ROW_ID_SHIFT), activity=activity, modifier=modifier,
                 stage=STAGE, valid=valid_rows(cur))
        # In slices of the staging table's pages (a TID range scan reads only those), so
        # progress can be reported between them and no single statement is long.
        cur.execute(sql.SQL("SELECT pg_relation_size({}::regclass) / current_setting('block_size')::int").format(
            sql.Literal(f"pg_temp.{STAGE_TABLE}")))
        pages = int(cur.fetchone()[0])
        cur.execute(sql.SQL("SELECT count(*) > %s FROM (SELECT 1 FROM {} LIMIT %s) e").format(ERRS),
                    [APPLY_SLICED_MAX_ERRORS, APPLY_SLICED_MAX_ERRORS + 1])
        # Each slice's anti-join builds its hash of the errors again: with many errors,
        # one statement (1 M errors: 10 slices cost 5 s more than one).
        many_errors = bool(cur.fetchone()[0])
        slices = 1 if many_errors else max(1, min(APPLY_SLICES, pages))
        rows = 0
        for i in range(slices):
            low = pages * i // slices
            high = pages * (i + 1) // slices if i < slices - 1 else pages + 1
            cur.execute(insert, [year, mod.key, upload_id, f"({low},0)", f"({high},0)"])
            rows += cur.rowcount
            on_slice(i + 1, slices)
        # Statistics now, not when autovacuum comes by: the recalcs that read this
        # partition next plan a hash join and aggregate instead of loops over "1 row".
        analyze(cur, partition)
        if old_upload_id is not None and old_upload_id != upload_id:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{ENTRY_PARTITION_PREFIX}{int(old_upload_id)}"])
            if cur.fetchone()[0]:
                cur.execute(sql.SQL("TRUNCATE {}").format(entry_partition(old_upload_id)))
        cur.execute(
            """UPDATE ingestion_modulestate SET data_version = data_version + 1, data_job_id = %s,
                   data_upload_id = %s, data_rows = %s WHERE year = %s AND module = %s""",
            [job_id, upload_id, rows, year, mod.key],
        )
    return ApplyResult(applied=True, rows=rows)


# The partitions of uploads that are no module-year's data any more, with that upload's
# module-year (NULL once the upload row is gone). One statement, so one snapshot: a
# partition attached by a concurrent ingest is seen together with its ModuleState row.
_REPLACED_PARTITIONS = """
SELECT p.relname, u.year_id, u.module
FROM (
    SELECT c.relname, (regexp_match(c.relname, %(pattern)s))[1]::bigint AS upload_id
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = %(parent)s::regclass
) p
LEFT JOIN ingestion_upload u ON u.id = p.upload_id
WHERE p.upload_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ingestion_modulestate m WHERE m.data_upload_id = p.upload_id)
"""


def drop_replaced_partitions() -> list[str]:
    """Drop the (emptied) partitions of replaced uploads; best effort, after the commit.

    Each in its own short transaction under its module-year lock (the order of
    ``ingestion.locks``), re-checked there: a re-run of that very upload may have loaded
    into it meanwhile. ``DROP`` locks the parent table, so it waits at most
    ``DROP_LOCK_TIMEOUT`` for readers; a partition it could not drop stays (empty, or
    unreferenced) and is retried after the next ingest. Returns the dropped names.
    """
    dropped: list[str] = []
    with connection.cursor() as cur:
        cur.execute(_REPLACED_PARTITIONS, {"pattern": f"^{ENTRY_PARTITION_PREFIX}([0-9]+)$", "parent": ENTRY_TABLE})
        candidates = cur.fetchall()
    for relname, year, module in candidates:
        upload_id = int(relname[len(ENTRY_PARTITION_PREFIX):])
        try:
            with transaction.atomic(), connection.cursor() as cur:
                if year is not None:
                    lock_module_year(year, module)
                cur.execute("SELECT 1 FROM ingestion_modulestate WHERE data_upload_id = %s", [upload_id])
                if cur.fetchone() is not None:
                    continue
                cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(DROP_LOCK_TIMEOUT)))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(relname)))
            dropped.append(relname)
        except DatabaseError:
            logger.warning("could not drop the replaced partition %s (retried after the next ingest)", relname,
                           exc_info=True)
    return dropped


def upsert_factors(*, mod: ModuleDef, year: int, upload_id: int, job_id: int) -> ApplyResult:
    """Upsert the staged valid factors by natural key; mark the module-year's others stale."""
    factor = staged_value(next(c for c in mod.columns(TARGET_FACTORS) if c.role == ROLE_FACTOR))
    lock_module_year(year, mod.key)
    now = timezone.now()
    with connection.cursor() as cur:
        _, factors_job_id, *_ = module_state_for_update(cur, year, mod.key)
        if factors_job_id is not None and factors_job_id > job_id:
            return ApplyResult(applied=False, superseded_by_job=factors_job_id)
        cur.execute(
            sql.SQL(
                """
                INSERT INTO ingestion_factor
                    (year, module, det, category, kg_co2e_per_unit, source, stale, upload_id, updated_at)
                SELECT %s, %s, s.det, s.category, ({factor})::float8, s.source, false, %s, %s
                FROM {stage} s
                WHERE {valid}
                ON CONFLICT (year, module, det, category) DO UPDATE SET
                    kg_co2e_per_unit = EXCLUDED.kg_co2e_per_unit, source = EXCLUDED.source, stale = false,
                    upload_id = EXCLUDED.upload_id, updated_at = EXCLUDED.updated_at
                """
            ).format(factor=factor, stage=STAGE, valid=valid_rows(cur)),
            [year, mod.key, upload_id, now],
        )
        rows = cur.rowcount
        # Everything this statement did not touch was missing from the new file.
        cur.execute(
            """UPDATE ingestion_factor SET stale = true
               WHERE year = %s AND module = %s AND updated_at <> %s AND NOT stale""",
            [year, mod.key, now],
        )
        cur.execute(
            "SELECT count(*) FROM ingestion_factor WHERE year = %s AND module = %s AND stale", [year, mod.key]
        )
        stale = int(cur.fetchone()[0])
        cur.execute(
            """UPDATE ingestion_modulestate SET data_version = data_version + 1, factors_job_id = %s,
                   factors_upload_id = %s WHERE year = %s AND module = %s""",
            [job_id, upload_id, year, mod.key],
        )
    return ApplyResult(applied=True, rows=rows, factors_stale=stale)
