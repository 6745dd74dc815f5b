"""Apply: the one transactional step of an ingest, run inside the job's ``ctx.effect()``.

Data entries are replaced whole (delete the module-year's rows, insert the valid staged
rows: readers see the old rows until commit, any failure rolls everything back);
factors are upserted by natural key and the module-year's others marked stale. Both
take the module-year advisory lock first (``ingestion.locks``), then the
``ModuleState`` row, and refuse to overwrite an ingest planned later than this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone
from psycopg import sql

from ingestion.locks import lock_module_year
from ingestion.modules import ROLE_ACTIVITY, ROLE_FACTOR, ROLE_MODIFIER, TARGET_DATA, TARGET_FACTORS, ModuleDef
from ingestion.staging import ERRS, STAGE
from ingestion.validation import staged_value


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


def replace_data_entries(*, mod: ModuleDef, year: int, upload_id: int, job_id: int) -> ApplyResult:
    """Atomically replace the module-year's data entries with the staged valid rows.

    Readers keep seeing the old rows until this transaction commits (MVCC); any
    failure rolls the whole replacement back. An ingest planned earlier than the one
    already applied (two uploads racing) does not overwrite it.
    """
    by_role = {c.role: c for c in mod.columns(TARGET_DATA)}
    activity = staged_value(by_role[ROLE_ACTIVITY])
    modifier_col = by_role.get(ROLE_MODIFIER)
    # The module's formula is SQL written in ``ingestion.modules`` (code, not input).
    modifier = sql.SQL(mod.modifier_sql).format(v=staged_value(modifier_col)) if modifier_col else sql.SQL("1.0")
    lock_module_year(year, mod.key)
    with connection.cursor() as cur:
        data_job_id, *_ = module_state_for_update(cur, year, mod.key)
        if data_job_id is not None and data_job_id > job_id:
            return ApplyResult(applied=False, superseded_by_job=data_job_id)
        cur.execute(
            """DELETE FROM ingestion_dataentry WHERE upload_id = (
                   SELECT data_upload_id FROM ingestion_modulestate WHERE year = %s AND module = %s
               ) AND year = %s AND module = %s""",
            [year, mod.key, year, mod.key],
        )
        cur.execute(
            sql.SQL(
                """
                INSERT INTO ingestion_dataentry
                    (year, module, det, unit_id, category, activity, modifier, comment, upload_id, source_row)
                SELECT %s, %s, s.det, s.unit_id, s.category, ({activity})::float8, {modifier}, s.comment, %s, s.row
                FROM {stage} s
                WHERE s.err IS NULL AND NOT EXISTS (SELECT 1 FROM {errs} e WHERE e.row = s.row)
                """
            ).format(activity=activity, modifier=modifier, stage=STAGE, errs=ERRS),
            [year, mod.key, upload_id],
        )
        rows = cur.rowcount
        cur.execute(
            """UPDATE ingestion_modulestate SET data_version = data_version + 1, data_job_id = %s,
                   data_upload_id = %s, data_rows = %s WHERE year = %s AND module = %s""",
            [job_id, upload_id, rows, year, mod.key],
        )
    return ApplyResult(applied=True, rows=rows)


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
                WHERE s.err IS NULL AND NOT EXISTS (SELECT 1 FROM {errs} e WHERE e.row = s.row)
                ON CONFLICT (year, module, det, category) DO UPDATE SET
                    kg_co2e_per_unit = EXCLUDED.kg_co2e_per_unit, source = EXCLUDED.source, stale = false,
                    upload_id = EXCLUDED.upload_id, updated_at = EXCLUDED.updated_at
                """
            ).format(factor=factor, stage=STAGE, errs=ERRS),
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
