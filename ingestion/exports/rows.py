"""What a year export contains, read from one snapshot of the database.

The rows are read on a second connection in one ``REPEATABLE READ READ ONLY``
transaction: totals and data entries are those of the same moment even if an upload
lands mid-export, and the entries stream from a server-side (named) cursor without a
``WITH HOLD`` copy. The job's own connection stays free for its progress and finish,
which must commit while the export runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections

from ingestion.exports.writers import ENTRIES, TOTALS

FETCH_ROWS = 5000

_TOTALS_SQL = """
    SELECT CASE WHEN unit_id = '' THEN 'module_total' ELSE 'unit_total' END, year, module, unit_id, kg_co2e,
           rows_without_factor, to_char(computed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    FROM ingestion_total WHERE year = %s
    ORDER BY module, unit_id
"""
# Each entry with the factor that applies to it (not stale) and its emissions, computed
# like ``ingestion.emissions`` computes the lines: activity x modifier x factor.
_ENTRIES_SQL = """
    SELECT 'entry', d.year, d.module, d.det, d.unit_id, d.category, d.activity, d.modifier,
           f.kg_co2e_per_unit, d.activity * d.modifier * f.kg_co2e_per_unit, d.source_row, d.comment
    FROM ingestion_modulestate s
    JOIN ingestion_dataentry d ON d.upload_id = s.data_upload_id AND d.year = s.year AND d.module = s.module
    LEFT JOIN ingestion_factor f ON f.year = d.year AND f.module = d.module AND f.det = d.det
         AND f.category = d.category AND NOT f.stale
    WHERE s.year = %s
    ORDER BY d.module, d.source_row
"""


@dataclass
class YearSnapshot:
    conn: psycopg.Connection[Any]
    year: int

    def row_count(self) -> int:
        """Rows the export will write (totals + the live data entries): its progress total."""
        with self.conn.cursor() as cur:
            cur.execute(
                """SELECT (SELECT count(*) FROM ingestion_total WHERE year = %s)
                        + (SELECT COALESCE(sum(data_rows), 0) FROM ingestion_modulestate
                           WHERE year = %s AND data_upload_id IS NOT NULL)""",
                [self.year, self.year],
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def sections(self) -> Iterator[tuple[str, Iterator[tuple[Any, ...]]]]:
        """(section name, its rows) in file order; each section's rows stream in batches."""
        yield TOTALS, self._stream(_TOTALS_SQL, "sluice_export_totals")
        yield ENTRIES, self._stream(_ENTRIES_SQL, "sluice_export_entries")

    def _stream(self, query: str, name: str) -> Iterator[tuple[Any, ...]]:
        with self.conn.cursor(name=name) as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(query, [self.year])
            while batch := cur.fetchmany(FETCH_ROWS):
                yield from batch


@contextmanager
def year_snapshot(year: int) -> Iterator[YearSnapshot]:
    """A read-only snapshot of ``year`` on its own connection, closed afterwards."""
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        wrapper.ensure_connection()
        conn: psycopg.Connection[Any] = wrapper.connection
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            yield YearSnapshot(conn=conn, year=year)
        finally:
            conn.rollback()
    finally:
        wrapper.close()
