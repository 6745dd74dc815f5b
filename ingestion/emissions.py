"""Emissions and totals: the per-DET recalc and the module-year aggregation, in SQL.

Locks (``ingestion.locks``): a recalc holds the module-year lock shared and its DET's
lock exclusive; the aggregation holds the module-year lock exclusive, so no ingest or
recalc of its scope is mid-flight while it writes the totals. Both run inside the job's
``ctx.effect()``. Totals are always those of one data version (see ``aggregate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.utils import timezone

from ingestion.apply import module_state_for_update
from ingestion.locks import lock_det, lock_module_year


@dataclass
class RecalcResult:
    rows_processed: int
    rows_without_factor: int
    lines: int
    kg_co2e: float
    missing: list[str]
    # The data version the lines were computed from: [applied data ingest job, applied
    # factors ingest job]. The aggregation checks it (see ``aggregate``).
    basis: list[int | None] = field(default_factory=list)


def _basis(cur: Any, year: int, module: str) -> list[int | None]:
    cur.execute(
        "SELECT data_job_id, factors_job_id FROM ingestion_modulestate WHERE year = %s AND module = %s",
        [year, module],
    )
    row = cur.fetchone()
    return [row[0], row[1]] if row else [None, None]


# Per recalc (SET LOCAL, inside its effect): a DET of a million-row upload has up to a
# million (unit, category) groups; with the default 4 MB the grouping sorts on disk
# (2.7 s -> 2.1 s per 333k-row DET with this, bench/ingest.py data).
RECALC_WORK_MEM = "256MB"


# The recalc keeps this many categories without factor (the job shows 50 and says if
# there are more): the full list of a million-row upload is not worth sorting.
MISSING_KEPT = 51


@dataclass
class _DetLines:
    lines: int
    rows: int = 0
    rows_without_factor: int = 0
    kg_co2e: float = 0.0
    missing: list[str] = field(default_factory=list)


_DET_LINES = """
WITH ins AS (
    INSERT INTO ingestion_emissionline
        (year, module, det, unit_id, category, activity, rows, factor, kg_co2e, pipeline_id)
    SELECT d.year, d.module, d.det, d.unit_id, d.category, sum(d.activity * d.modifier), count(*),
           f.kg_co2e_per_unit, sum(d.activity * d.modifier * f.kg_co2e_per_unit), %(pipeline)s
    FROM ingestion_dataentry d
    LEFT JOIN ingestion_factor f ON f.year = d.year AND f.module = d.module AND f.det = d.det
         AND f.category = d.category AND NOT f.stale
    WHERE d.upload_id = (SELECT data_upload_id FROM ingestion_modulestate WHERE year = %(year)s AND module = %(module)s)
      AND d.year = %(year)s AND d.module = %(module)s AND d.det = %(det)s
    GROUP BY d.year, d.module, d.det, d.unit_id, d.category, f.kg_co2e_per_unit
    RETURNING category, rows, kg_co2e
), missing AS (
    SELECT category, sum(rows) AS n FROM ins WHERE kg_co2e IS NULL
    GROUP BY category ORDER BY category LIMIT %(kept)s
)
SELECT count(*), COALESCE(sum(rows), 0), COALESCE(sum(rows) FILTER (WHERE kg_co2e IS NULL), 0),
       COALESCE(sum(kg_co2e), 0),
       (SELECT COALESCE(array_agg(category || ' (' || n || ' rows)' ORDER BY category), '{}') FROM missing)
FROM ins
"""


def _compute_det_lines(cur: Any, *, year: int, module: str, det: str, pipeline_id: Any) -> _DetLines:
    """Replace one DET's emission lines from the current data entries and factors.

    One statement inserts the lines and sums what it inserted (``RETURNING``): reading
    the new lines back cost 0.5 s per 333 k lines, the table's statistics being those of
    before the insert (a sort where a hash would do).
    """
    cur.execute("SELECT set_config('work_mem', %s, true)", [RECALC_WORK_MEM])
    cur.execute("DELETE FROM ingestion_emissionline WHERE year = %s AND module = %s AND det = %s", [year, module, det])
    cur.execute(_DET_LINES, {"pipeline": pipeline_id, "year": year, "module": module, "det": det,
                             "kept": MISSING_KEPT})
    lines, rows, without, kg, missing = cur.fetchone()
    return _DetLines(int(lines), int(rows), int(without), float(kg), [f"{det}/{m}" for m in missing])


def recalc_det(*, year: int, module: str, det: str, pipeline_id: Any) -> RecalcResult:
    """Recompute one DET's emission lines (unit x category) from data entries and factors."""
    lock_module_year(year, module, shared=True)
    lock_det(year, module, det)
    with connection.cursor() as cur:
        # Stable until commit: applying data or factors takes the exclusive lock.
        basis = _basis(cur, year, module)
        computed = _compute_det_lines(cur, year=year, module=module, det=det, pipeline_id=pipeline_id)
        cur.execute(
            """INSERT INTO ingestion_modulestate (year, module, data_version, totals_version, data_rows)
               VALUES (%s, %s, 1, 0, 0)
               ON CONFLICT (year, module) DO UPDATE SET data_version = ingestion_modulestate.data_version + 1""",
            [year, module],
        )
    return RecalcResult(computed.rows, computed.rows_without_factor, computed.lines, computed.kg_co2e,
                        computed.missing, basis)


@dataclass
class AggregateResult:
    recomputed: bool
    totals_written: int
    kg_co2e: float
    rows_without_factor: int
    computed_by: Any
    # DETs whose lines this aggregation recomputed: their recalc had read older data.
    refreshed_dets: list[str] = field(default_factory=list)


def aggregate(
    *, year: int, module: str, pipeline_id: Any, recalc_bases: dict[str, list[int | None]] | None = None
) -> AggregateResult:
    """Totals per unit x module x year and per module x year, recomputed only if stale.

    Holding the module-year lock exclusively means no ingest or recalc of this scope
    is mid-flight; if ``totals_version`` already equals ``data_version`` another
    pipeline's aggregation computed these very totals, and this one coalesces.

    ``recalc_bases`` (DET → data version its recalc in this pipeline read): a DET
    whose recalc read an older version than the current one (an upload was applied
    between this pipeline's recalcs) is recomputed here first, under the lock, so
    the totals are always those of one data version, never a mix of two files.
    """
    lock_module_year(year, module)
    now = timezone.now()
    with connection.cursor() as cur:
        state = module_state_for_update(cur, year, module)
        data_job, factors_job, data_version, totals_version, totals_pipeline = state
        current = [data_job, factors_job]
        refreshed = sorted(det for det, basis in (recalc_bases or {}).items() if list(basis) != current)
        for det in refreshed:
            _compute_det_lines(cur, year=year, module=module, det=det, pipeline_id=pipeline_id)
        if refreshed:
            totals_version = -1  # the lines changed: never coalesce
        if data_version == totals_version and totals_pipeline is not None:
            cur.execute(
                "SELECT kg_co2e, rows_without_factor FROM ingestion_total WHERE year=%s AND module=%s AND unit_id=''",
                [year, module],
            )
            row = cur.fetchone() or (0.0, 0)
            return AggregateResult(False, 0, float(row[0]), int(row[1]), totals_pipeline)
        cur.execute("DELETE FROM ingestion_total WHERE year = %s AND module = %s", [year, module])
        cur.execute(
            """
            INSERT INTO ingestion_total (year, module, unit_id, kg_co2e, rows_without_factor, pipeline_id, computed_at)
            SELECT %s, %s, COALESCE(unit_id, ''), COALESCE(sum(kg_co2e), 0),
                   COALESCE(sum(rows) FILTER (WHERE kg_co2e IS NULL), 0), %s, %s
            FROM ingestion_emissionline WHERE year = %s AND module = %s
            GROUP BY GROUPING SETS ((unit_id), ())
            """,
            [year, module, pipeline_id, now, year, module],
        )
        written = cur.rowcount
        cur.execute(
            """UPDATE ingestion_modulestate SET totals_version = data_version, totals_pipeline_id = %s,
                   totals_computed_at = %s WHERE year = %s AND module = %s""",
            [pipeline_id, now, year, module],
        )
        cur.execute(
            "SELECT kg_co2e, rows_without_factor FROM ingestion_total WHERE year=%s AND module=%s AND unit_id=''",
            [year, module],
        )
        kg, without = cur.fetchone()
    return AggregateResult(True, written, float(kg), int(without), pipeline_id, refreshed)
