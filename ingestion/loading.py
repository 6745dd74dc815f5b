"""Set-based loading: COPY into a staging table, validation in SQL, atomic apply.

Why this shape: Python only splits CSV records (the C ``csv`` module) and streams them
to PostgreSQL with ``COPY`` (psycopg 3), which runs on the server concurrently with
the parsing; typing, range checks, unit lookups and duplicate detection are single
set-based statements over the staged rows. Nothing is kept per row in Python, so
memory is bounded whatever the file size.

Transactions: staging and validation run in autocommit on session-local TEMP tables
(progress events can be written meanwhile); only the apply step (replace data entries
or upsert factors, store row errors) runs inside the job's ``ctx.effect()``.

Locks (advisory, transaction-scoped, namespaced; always in this order):
1. ``NS_MODULE_YEAR`` (year, module): exclusive for ingest and aggregation, shared
   for a per-DET recalc;
2. ``NS_DET`` (year, module, det): exclusive for that DET's recalc.
Each effect takes at most these two, in this order, before any row lock, and the
pipeline row lock comes last (at ``job_commit_effect``), so no cycle is possible.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import connection, connections
from django.utils import timezone

from ingestion import parsing
from ingestion.modules import (
    ROLE_ACTIVITY,
    ROLE_CATEGORY,
    ROLE_DET,
    ROLE_FACTOR,
    ROLE_MODIFIER,
    ROLE_UNIT,
    TARGET_DATA,
    Column,
    ModuleDef,
)

NS_MODULE_YEAR = 0x5101
NS_DET = 0x5102
NS_UNIT_SYNC = 0x5103
NS_UPLOAD_SHA = 0x5104

STAGE = "ingest_stage"
ERRS = "ingest_errs"
STAGE_BLOCK_ROWS = 20_000
STAGE_SLICE_SECONDS = 0.25
META_ROW_ERRORS = 1000

# Bounded digit counts keep every accepted value castable to float8: "1e400" or
# 400 fractional digits would overflow/underflow the cast and abort the statement
# (a rejected row must never become a failed job).
DECIMAL_RE = r"^[+-]?([0-9]{1,30}([.][0-9]{0,30})?|[.][0-9]{1,30})([eE][+-]?[0-9]{1,2})?$"
INT_RE = r"^[+-]?[0-9]{1,18}$"
SIMPLE_DECIMAL_RE = r"^[0-9]{1,15}([.][0-9]{1,15})?$"
SIMPLE_INT_RE = r"^[0-9]{1,15}$"


def _key(*parts: Any) -> int:
    # crc32 folded into a signed int4 (the two-key advisory lock form); a collision
    # only serialises two unrelated scopes, it never breaks correctness.
    value = zlib.crc32(":".join(str(p) for p in parts).encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def lock_module_year(year: int, module: str, *, shared: bool = False) -> None:
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cur:
        cur.execute(f"SELECT {fn}(%s, %s)", [NS_MODULE_YEAR, _key(year, module)])


def lock_det(year: int, module: str, det: str) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", [NS_DET, _key(year, module, det)])


def lock_upload_fingerprint(year: int, module: str, target: str, sha256: str) -> None:
    """Serialise the creation of uploads of one file (content) into one module-year target."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", [NS_UPLOAD_SHA, _key(year, module, target, sha256)])


def lock_unit_sync(year: int) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", [NS_UNIT_SYNC, _key(year)])


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- 1. staging ------------------------------------------------------------------------------


@dataclass
class StageStats:
    rows_total: int = 0  # physical lines after the header, blank ones included
    rows_skipped: int = 0  # blank lines
    # Lines beyond the first of records whose quoted field ran over line breaks: the
    # record is one row error, and these lines are rejected with it (counted here).
    lines_merged: int = 0
    rows_staged: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    parser: str = "postgresql"  # or "python": the fallback for files PostgreSQL refused
    header: parsing.HeaderInfo | None = None


def _escape(field_value: str) -> str:
    return field_value.replace("\\", "\\\\").replace("\t", "\\t")


def merged_lines_reason(row: int, last_row: int) -> str:
    """The row error of a record whose quoted field ran over ``last_row - row + 1`` lines."""
    first, last = row + 1, last_row + 1
    return (
        f"lines {first} to {last} were read as one record: a quote opened on line {first} closes only on "
        f"line {last} (or never); all {last - first + 1:,} lines are rejected — check the quotes"
    )


def _staging_blocks(
    records: Iterator[tuple[int, int, list[str]]],
    schema: tuple[Column, ...],
    header: parsing.HeaderInfo,
    stats: StageStats,
) -> Iterator[str]:
    """COPY text-format blocks of ``row, err, <schema columns>`` lines.

    The fast path joins the fields as they are; a record with a tab or backslash takes
    the slow path (escaping). A record spanning several physical lines (a line break
    inside a quoted field: no column accepts one, and it is nearly always a quote left
    open) is one row error naming the line range, and every line of it is counted as
    rejected. Ragged records become a row error staged with empty fields, so SQL
    reports every error in one place.
    """
    ncols = len(header.columns)
    order = [header.columns.index(c.name) if c.name in header.columns else None for c in schema]
    identity = order == list(range(ncols))
    empty_fields = "\t" * len(schema)
    buf: list[str] = []
    append = buf.append
    for row, last_row, rec in records:
        stats.rows_total = last_row
        if last_row > row:
            # Checked first: the swallowed lines also break the field count, and the
            # cause (an open quote) is what the user must fix.
            stats.lines_merged += last_row - row
            append(f"{row}\t{merged_lines_reason(row, last_row)}{empty_fields}\n")
        elif len(rec) != ncols:
            if not rec or (len(rec) < ncols and not "".join(rec).strip()):
                stats.rows_skipped += 1
                continue
            append(f"{row}\texpected {ncols} fields, found {len(rec)}{empty_fields}\n")
        else:
            if not identity:
                rec = [rec[i] if i is not None else "" for i in order]
            line = "\t".join(rec)
            if not line.strip("\t "):
                stats.rows_skipped += 1
                continue
            if "\\" in line or "\r" in line or line.count("\t") != len(rec) - 1:
                line = "\t".join(_escape(v).replace("\r", "\\r") for v in rec)
            append(f"{row}\t\\N\t{line}\n")
        stats.rows_staged += 1
        if len(buf) >= STAGE_BLOCK_ROWS:
            yield "".join(buf)
            buf.clear()
    if buf:
        yield "".join(buf)


def stage_file(
    *,
    path: Any,
    schema: tuple[Column, ...],
    on_progress: Callable[[StageStats], None],
    should_stop: Callable[[], None] = lambda: None,
) -> StageStats:
    """Stream the file's records into the session's TEMP staging table.

    1. Fast path: the raw bytes go to PostgreSQL's own CSV parser (``COPY … FORMAT
       csv``), which is several times faster than any Python parsing. It accepts only
       well-formed files; PostgreSQL refuses anything else (bad UTF-8, a ragged row, a
       blank line…) and the whole COPY statement fails, harmlessly (autocommit, TEMP
       table, nothing else written).
    2. Otherwise: the Python path (``_staging_blocks``), which turns every such
       problem into a row error or a file error naming the line.
    """
    stats = StageStats()
    header, records = parsing.RecordStream(path=path).header_and_records()
    stats.header = header
    stats.bytes_total = os.path.getsize(path)
    problems = parsing.header_problems(header, schema)
    if problems:
        raise parsing.FileRejected("line 1: " + "; ".join(problems), "bad_header", line=1)
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS pg_temp.{STAGE}, pg_temp.{ERRS}")
        # Columns absent from the file read as '' (not NULL): the checks compare text.
        cur.execute(
            f"CREATE TEMP TABLE {STAGE} (row bigint GENERATED BY DEFAULT AS IDENTITY, err text, "
            + ", ".join(f"{_q(c.name)} text NOT NULL DEFAULT ''" for c in schema)
            + ")"
        )
        if _stage_server_side(cur, path, header, stats, on_progress, should_stop):
            return stats
        cur.execute(f"TRUNCATE {STAGE} RESTART IDENTITY")
        stats.rows_total = stats.rows_staged = stats.rows_skipped = 0
        stats.parser = "python"
        raw = cur.cursor  # the psycopg 3 cursor under Django's wrapper
        cols = ", ".join(_q(c.name) for c in schema)
        blocks = _staging_blocks(records, schema, header, stats)
        finished = False
        while not finished:
            # The connection can run nothing else while a COPY is open, and progress
            # and cancellation checks need it: so the file goes in as a series of
            # COPY statements of about STAGE_SLICE_SECONDS each, checked in between.
            started = time.monotonic()
            with raw.copy(f"COPY {STAGE} (row, err, {cols}) FROM STDIN") as copy:
                for block in blocks:
                    copy.write(block)
                    if time.monotonic() - started >= STAGE_SLICE_SECONDS:
                        break
                else:
                    finished = True
            on_progress(stats)
        cur.execute(f"ANALYZE {STAGE}")
    return stats


def _stage_server_side(
    cur: Any,
    path: Any,
    header: parsing.HeaderInfo,
    stats: StageStats,
    on_progress: Callable[[StageStats], None],
    should_stop: Callable[[], None],
) -> bool:
    """COPY the raw file in CSV mode; False (stage left to truncate) if PostgreSQL refused it.

    The connection is busy for the whole COPY, so progress is reported from a helper
    thread (its own connection) by bytes sent; cancellation is noticed through the
    context's in-memory flag, set by the heartbeat thread.
    """
    cols = ", ".join(_q(c) for c in header.columns)
    sql = (
        f"COPY {STAGE} ({cols}) FROM STDIN WITH (FORMAT csv, HEADER true, "
        f"DELIMITER {_lit(header.delimiter)}, FORCE_NOT_NULL ({cols}))"
    )
    reporter = _ProgressThread(stats, on_progress)
    reporter.start()
    newlines, last = 0, b"\n"
    try:
        with open(path, "rb") as f, cur.cursor.copy(sql) as copy:
            while chunk := f.read(parsing.CHUNK_BYTES):
                copy.write(chunk)
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
                stats.bytes_done += len(chunk)
                should_stop()
                reporter.raise_if_failed()
    except psycopg.errors.DataError:
        # Malformed for PostgreSQL (encoding, field count, blank line, NUL …).
        return False
    finally:
        reporter.stop()
    cur.execute(f"SELECT count(*) FROM {STAGE}")
    staged = int(cur.fetchone()[0])
    # PostgreSQL reads a line break inside quotes as part of the value: fewer records
    # than lines means a quoted field spans lines (usually a quote left open). Only the
    # Python path can name the lines each such record swallowed, and count them.
    if staged != newlines - (last == b"\n"):
        return False
    cur.execute(f"ANALYZE {STAGE}")
    stats.rows_total = stats.rows_staged = staged
    return True


class _ProgressThread(threading.Thread):
    def __init__(self, stats: StageStats, on_progress: Callable[[StageStats], None]) -> None:
        super().__init__(daemon=True, name="ingest-progress")
        self.stats = stats
        self.on_progress = on_progress
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopped.wait(STAGE_SLICE_SECONDS):
                self.on_progress(self.stats)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            connections.close_all()  # this thread's own connection only

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
        self.raise_if_failed()


def drop_staging() -> None:
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS pg_temp.{STAGE}, pg_temp.{ERRS}")


# --- 2. validation ---------------------------------------------------------------------------


def _value(col: Column, semicolon: bool = False) -> str:
    # Values are normalised in place first (``normalize_staged``), so every check,
    # the duplicate search and the final insert read the plain column.
    return f"s.{_q(col.name)}"


def _normal_sql(col: Column, semicolon: bool) -> str:
    """How a staged value is normalised: trimmed; keys and choices lower-cased; a decimal
    comma (the norm in ';' files, impossible in ',' files) turned into a point."""
    v = f"btrim({_q(col.name)}, E' \\t')"
    if col.role in (ROLE_DET, ROLE_CATEGORY) or col.type in ("choice", "bool"):
        return f"lower({v})"
    if semicolon and col.type in ("decimal", "int"):
        return f"replace({v}, ',', '.')"
    return v


def normalize_staged(*, schema: tuple[Column, ...], delimiter: str) -> None:
    """Rewrite only the staged rows that need it (usually none): one scan."""
    semicolon = delimiter == ";"
    sets = ", ".join(f"{_q(c.name)} = {_normal_sql(c, semicolon)}" for c in schema)
    # Which rows need it, by two regexes over concatenations: comparing every column
    # with its normalised form costs three times as much, for rows that are nearly
    # always already normal.
    every = "concat_ws(chr(31), " + ", ".join(_q(c.name) for c in schema) + ")"
    lowered = [c for c in schema if c.role in (ROLE_DET, ROLE_CATEGORY) or c.type in ("choice", "bool")]
    differs = rf"{every} ~ '(^|\x1f)[ \t]|[ \t](\x1f|$)'"
    if lowered:
        differs += " OR concat(" + ", ".join(_q(c.name) for c in lowered) + ") ~ '[[:upper:]]'"
    numeric = [c for c in schema if c.type in ("decimal", "int")]
    if semicolon and numeric:
        differs += " OR concat(" + ", ".join(_q(c.name) for c in numeric) + ") LIKE '%,%'"
    with connection.cursor() as cur:
        cur.execute(f"UPDATE {STAGE} SET {sets} WHERE err IS NULL AND ({differs})")
        if cur.rowcount:
            cur.execute(f"ANALYZE {STAGE}")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_sql(col: Column, semicolon: bool) -> str:
    """CASE giving the reason this column's value is invalid, or NULL."""
    v = _value(col, semicolon)
    shown = f"'\"' || left(s.{_q(col.name)}, 40) || '\"'"
    whens = [f"WHEN {v} = '' THEN " + (_lit("missing (required)") if col.required else "NULL")]
    # The server-side CSV parser accepts line breaks inside quoted fields; no column
    # does (numbers and choices are refused by their own format checks below).
    if col.type == "str":
        whens.append(
            f"WHEN strpos(s.{_q(col.name)}, E'\\n') > 0 OR strpos(s.{_q(col.name)}, E'\\r') > 0 THEN "
            + _lit("line break inside a quoted field (is a quote unbalanced?)")
        )
    if col.type in ("decimal", "int"):
        regex = DECIMAL_RE if col.type == "decimal" else INT_RE
        what = "not a number" if col.type == "decimal" else "not a whole number"
        # The full pattern costs ~2 µs a value; plain digits (nearly every value) are
        # recognised by a far cheaper one first.
        simple = SIMPLE_DECIMAL_RE if col.type == "decimal" else SIMPLE_INT_RE
        whens.append(
            f"WHEN NOT (s.{_q(col.name)} ~ {_lit(simple)} OR {v} ~ {_lit(regex)}) THEN {_lit(what + ': ')} || {shown}"
        )
        if col.min_value is not None:
            op, word = ("<=", ">") if col.exclusive_min else ("<", "≥")
            reason = _lit(f"must be {word} {col.min_value:g}, got ")
            whens.append(f"WHEN {v}::float8 {op} {col.min_value!r} THEN {reason} || {shown}")
        if col.max_value is not None:
            whens.append(
                f"WHEN {v}::float8 > {col.max_value!r} THEN {_lit(f'must be ≤ {col.max_value:g}, got ')} || {shown}"
            )
    elif col.allowed:
        allowed = ", ".join(_lit(a) for a in col.allowed)
        whens.append(
            f"WHEN {v} NOT IN ({allowed}) THEN {_lit('unknown value ')} || {shown} || "
            f"{_lit(' (allowed: ' + ', '.join(col.allowed) + ')')}"
        )
    if col.type == "str":
        whens.append(f"WHEN length({v}) > {col.max_length} THEN {_lit(f'longer than {col.max_length} characters')}")
    if col.role == ROLE_UNIT:
        whens.append(f"WHEN u.unit_id IS NULL THEN {_lit('unknown unit ')} || {shown}")
    return "CASE " + " ".join(whens) + " END"


@dataclass
class Validation:
    rows_rejected: int = 0
    errors_total: int = 0
    first_errors: list[dict[str, Any]] = field(default_factory=list)


def validate_staged(*, schema: tuple[Column, ...], delimiter: str) -> Validation:
    """Fill the TEMP errors table from the staged rows; returns counts and the first errors.

    0. Normalise the staged values in place (trim, lower-case keys, decimal commas).
    1. Ragged rows and broken fields flagged while staging (``err``).
    2. Per-column checks in one scan: every CASE is evaluated once per row, and only
       the (few) bad rows are expanded into one error per column, in column order.
    3. Duplicate keys among otherwise valid rows, naming the first occurrence (a hash
       aggregate; ``work_mem`` raised for this session so a million keys stay in memory).
    """
    normalize_staged(schema=schema, delimiter=delimiter)
    semicolon = delimiter == ";"
    unit = next((c for c in schema if c.role == ROLE_UNIT), None)
    join = (
        f"LEFT JOIN ingestion_unit u ON u.unit_id = s.{_q(unit.name)} AND u.active"
        if unit is not None
        else ""
    )
    reasons = ", ".join(f"{_check_sql(c, semicolon)} AS r{i}" for i, c in enumerate(schema, start=1))
    nonnull = ", ".join(f"r{i}" for i in range(1, len(schema) + 1))
    expand = ", ".join(f"({i}, {_lit(c.name)}, b.r{i})" for i, c in enumerate(schema, start=1))
    keys = [c for c in schema if c.role in (ROLE_UNIT, ROLE_DET, ROLE_CATEGORY)]
    key_exprs = [
        f"s.{_q(c.name)}" for c in keys
    ]
    key_names = ", ".join(c.name for c in keys)
    last_key = keys[-1].name
    with connection.cursor() as cur:
        cur.execute(
            f"""
            CREATE TEMP TABLE {ERRS} AS
            SELECT s.row, 0 AS ord, NULL::text AS col, s.err AS reason FROM {STAGE} s WHERE s.err IS NOT NULL
            UNION ALL
            SELECT b.row, e.ord, e.col, e.reason
            FROM (
                SELECT row, {nonnull} FROM (
                    SELECT s.row, {reasons} FROM {STAGE} s {join} WHERE s.err IS NULL
                ) checked
                WHERE num_nonnulls({nonnull}) > 0
            ) b
            CROSS JOIN LATERAL (VALUES {expand}) AS e(ord, col, reason)
            WHERE e.reason IS NOT NULL
            """
        )
        cur.execute(f"CREATE INDEX ON {ERRS} (row)")
        cur.execute(f"ANALYZE {ERRS}")
        cur.execute("SET work_mem = '256MB'")
        try:
            cur.execute(
                f"""
                INSERT INTO {ERRS} (row, ord, col, reason)
                SELECT s.row, 99, {_lit(last_key)},
                       'duplicate of row ' || d.first_row || ' (same {key_names})'
                FROM (
                    SELECT {", ".join(f"{e} AS k{i}" for i, e in enumerate(key_exprs))}, min(s.row) AS first_row
                    FROM {STAGE} s
                    WHERE s.err IS NULL AND NOT EXISTS (SELECT 1 FROM {ERRS} e WHERE e.row = s.row)
                    GROUP BY {", ".join(key_exprs)}
                    HAVING count(*) > 1
                ) d
                JOIN {STAGE} s ON {" AND ".join(f"{e} = d.k{i}" for i, e in enumerate(key_exprs))}
                WHERE s.row <> d.first_row AND s.err IS NULL
                  AND NOT EXISTS (SELECT 1 FROM {ERRS} e WHERE e.row = s.row)
                """
            )
        finally:
            cur.execute("RESET work_mem")
        cur.execute(f"SELECT count(DISTINCT row), count(*) FROM {ERRS}")
        rejected, total = cur.fetchone()
        cur.execute(f"SELECT row, col, reason FROM {ERRS} ORDER BY row, ord LIMIT {META_ROW_ERRORS}")
        first = [{"row": r, "column": c, "reason": reason} for r, c, reason in cur.fetchall()]
    return Validation(rows_rejected=int(rejected), errors_total=int(total), first_errors=first)


# --- 3. apply (inside ctx.effect()) -----------------------------------------------------------


def store_row_errors(*, job_id: int) -> None:
    with connection.cursor() as cur:
        cur.execute("DELETE FROM ingestion_rowerror WHERE job_id = %s", [job_id])
        cur.execute(
            f"""INSERT INTO ingestion_rowerror (job_id, row, "column", reason)
                SELECT %s, row, COALESCE(col, ''), reason FROM {ERRS} ORDER BY row, ord""",
            [job_id],
        )


def _module_state(cur: Any, year: int, module: str) -> tuple[Any, ...]:
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


def replace_data_entries(*, mod: ModuleDef, year: int, upload_id: int, job_id: int, delimiter: str) -> ApplyResult:
    """Atomically replace the module-year's data entries with the staged valid rows.

    Readers keep seeing the old rows until this transaction commits (MVCC); any
    failure rolls the whole replacement back. An ingest planned earlier than the one
    already applied (two uploads racing) does not overwrite it.
    """
    schema = mod.columns(TARGET_DATA)
    semicolon = delimiter == ";"
    by_role = {c.role: c for c in schema}
    activity = _value(by_role[ROLE_ACTIVITY], semicolon)
    modifier_col = by_role.get(ROLE_MODIFIER)
    modifier = mod.modifier_sql.format(v=_value(modifier_col, semicolon)) if modifier_col else "1.0"
    lock_module_year(year, mod.key)
    with connection.cursor() as cur:
        data_job_id, *_ = _module_state(cur, year, mod.key)
        if data_job_id is not None and data_job_id > job_id:
            return ApplyResult(applied=False, superseded_by_job=data_job_id)
        cur.execute(
            """DELETE FROM ingestion_dataentry WHERE upload_id = (
                   SELECT data_upload_id FROM ingestion_modulestate WHERE year = %s AND module = %s
               ) AND year = %s AND module = %s""",
            [year, mod.key, year, mod.key],
        )
        cur.execute(
            f"""
            INSERT INTO ingestion_dataentry
                (year, module, det, unit_id, category, activity, modifier, comment, upload_id, source_row)
            SELECT %s, %s, s.det, s.unit_id, s.category, ({activity})::float8, {modifier}, s.comment, %s, s.row
            FROM {STAGE} s
            WHERE s.err IS NULL AND NOT EXISTS (SELECT 1 FROM {ERRS} e WHERE e.row = s.row)
            """,
            [year, mod.key, upload_id],
        )
        rows = cur.rowcount
        cur.execute(
            """UPDATE ingestion_modulestate SET data_version = data_version + 1, data_job_id = %s,
                   data_upload_id = %s, data_rows = %s WHERE year = %s AND module = %s""",
            [job_id, upload_id, rows, year, mod.key],
        )
    return ApplyResult(applied=True, rows=rows)


def upsert_factors(*, mod: ModuleDef, year: int, upload_id: int, job_id: int, delimiter: str) -> ApplyResult:
    """Upsert the staged valid factors by natural key; mark the module-year's others stale."""
    schema = mod.columns("factors")
    factor = _value(next(c for c in schema if c.role == ROLE_FACTOR), delimiter == ";")
    lock_module_year(year, mod.key)
    now = timezone.now()
    with connection.cursor() as cur:
        _, factors_job_id, *_ = _module_state(cur, year, mod.key)
        if factors_job_id is not None and factors_job_id > job_id:
            return ApplyResult(applied=False, superseded_by_job=factors_job_id)
        cur.execute(
            f"""
            INSERT INTO ingestion_factor
                (year, module, det, category, kg_co2e_per_unit, source, stale, upload_id, updated_at)
            SELECT %s, %s, s.det, s.category, ({factor})::float8, s.source, false, %s, %s
            FROM {STAGE} s
            WHERE s.err IS NULL AND NOT EXISTS (SELECT 1 FROM {ERRS} e WHERE e.row = s.row)
            ON CONFLICT (year, module, det, category) DO UPDATE SET
                kg_co2e_per_unit = EXCLUDED.kg_co2e_per_unit, source = EXCLUDED.source, stale = false,
                upload_id = EXCLUDED.upload_id, updated_at = EXCLUDED.updated_at
            """,
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


# --- 4. emissions and totals ------------------------------------------------------------------


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


def _compute_det_lines(cur: Any, *, year: int, module: str, det: str, pipeline_id: Any) -> int:
    """Replace one DET's emission lines from the current data entries and factors."""
    cur.execute("DELETE FROM ingestion_emissionline WHERE year = %s AND module = %s AND det = %s", [year, module, det])
    cur.execute(
        """
        INSERT INTO ingestion_emissionline
            (year, module, det, unit_id, category, activity, rows, factor, kg_co2e, pipeline_id)
        SELECT d.year, d.module, d.det, d.unit_id, d.category, sum(d.activity * d.modifier), count(*),
               f.kg_co2e_per_unit, sum(d.activity * d.modifier * f.kg_co2e_per_unit), %s
        FROM ingestion_dataentry d
        LEFT JOIN ingestion_factor f ON f.year = d.year AND f.module = d.module AND f.det = d.det
             AND f.category = d.category AND NOT f.stale
        WHERE d.upload_id = (SELECT data_upload_id FROM ingestion_modulestate WHERE year = %s AND module = %s)
          AND d.year = %s AND d.module = %s AND d.det = %s
        GROUP BY d.year, d.module, d.det, d.unit_id, d.category, f.kg_co2e_per_unit
        """,
        [pipeline_id, year, module, year, module, det],
    )
    return int(cur.rowcount)


def recalc_det(*, year: int, module: str, det: str, pipeline_id: Any) -> RecalcResult:
    """Recompute one DET's emission lines (unit x category) from data entries and factors."""
    lock_module_year(year, module, shared=True)
    lock_det(year, module, det)
    with connection.cursor() as cur:
        # Stable until commit: applying data or factors takes the exclusive lock.
        basis = _basis(cur, year, module)
        lines = _compute_det_lines(cur, year=year, module=module, det=det, pipeline_id=pipeline_id)
        cur.execute(
            """SELECT COALESCE(sum(rows), 0), COALESCE(sum(rows) FILTER (WHERE kg_co2e IS NULL), 0),
                      COALESCE(sum(kg_co2e), 0)
               FROM ingestion_emissionline WHERE year = %s AND module = %s AND det = %s""",
            [year, module, det],
        )
        processed, without, kg = cur.fetchone()
        cur.execute(
            """SELECT category, sum(rows) FROM ingestion_emissionline
               WHERE year = %s AND module = %s AND det = %s AND kg_co2e IS NULL
               GROUP BY category ORDER BY category""",
            [year, module, det],
        )
        missing = [f"{det}/{cat} ({n} rows)" for cat, n in cur.fetchall()]
        cur.execute(
            """INSERT INTO ingestion_modulestate (year, module, data_version, totals_version, data_rows)
               VALUES (%s, %s, 1, 0, 0)
               ON CONFLICT (year, module) DO UPDATE SET data_version = ingestion_modulestate.data_version + 1""",
            [year, module],
        )
    return RecalcResult(int(processed), int(without), lines, float(kg), missing, basis)


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
        data_job, factors_job, data_version, totals_version, totals_pipeline = _module_state(cur, year, module)
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
