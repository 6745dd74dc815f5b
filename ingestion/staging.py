"""Staging: stream an upload's records into a session TEMP table with ``COPY``.

Why this shape: Python only splits CSV records (the C ``csv`` module) and streams them
to PostgreSQL with ``COPY`` (psycopg 3), which runs on the server concurrently with
the parsing; typing, range checks, unit lookups and duplicate detection are then
single set-based statements over the staged rows (``ingestion.validation``). Nothing is
kept per row in Python, so memory is bounded whatever the file size.

Staging and validation run in autocommit on session-local TEMP tables (progress
events can be written meanwhile); only the apply step (``ingestion.apply``) runs inside
the job's ``ctx.effect()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, connections
from psycopg import sql

from ingestion import parsing
from ingestion.modules import Column

logger = logging.getLogger(__name__)

# The TEMP tables of one ingest (session-local): the staged rows, their errors, and the
# rows normalisation changed (``ingestion.validation``).
STAGE_TABLE, ERRS_TABLE, NORM_TABLE = "ingest_stage", "ingest_errs", "ingest_norm"
STAGE, ERRS, NORM = sql.Identifier(STAGE_TABLE), sql.Identifier(ERRS_TABLE), sql.Identifier(NORM_TABLE)
STAGE_BLOCK_ROWS = 20_000
STAGE_SLICE_SECONDS = 0.25


_DROP = sql.SQL("DROP TABLE IF EXISTS {}, {}, {}").format(
    sql.Identifier("pg_temp", STAGE_TABLE), sql.Identifier("pg_temp", ERRS_TABLE),
    sql.Identifier("pg_temp", NORM_TABLE),
)


# The statistics target of the ingest's ANALYZEs (default 100): what the planner needs
# here (row counts, a few common values, whether keys are unique) shows in a 3,000-row
# sample as well as in 30,000, and ANALYZE of a million rows drops from 0.2 s to 0.02 s.
ANALYZE_STATISTICS_TARGET = 10


def analyze(cur: Any, table: sql.Composable) -> None:
    """``ANALYZE table`` with the ingest's small sample (``ANALYZE_STATISTICS_TARGET``).

    No ``finally``: in a failed transaction the RESET would fail too and hide the error
    (the SET is rolled back with it); after a failure in autocommit the setting stays on
    this connection, where only ANALYZE reads it.
    """
    cur.execute(sql.SQL("SET default_statistics_target = {}").format(sql.Literal(ANALYZE_STATISTICS_TARGET)))
    cur.execute(sql.SQL("ANALYZE {}").format(table))
    cur.execute("RESET default_statistics_target")


def column_list(names: Any) -> sql.Composed:
    """``"a", "b", …``: quoted column names."""
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


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
    name: str,
    size: int,
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
    stream = parsing.RecordStream(name=name)
    try:
        header, records = stream.header_and_records()
        stats.header = header
        stats.bytes_total = size
        problems = parsing.header_problems(header, schema)
        if problems:
            raise parsing.FileRejected("line 1: " + "; ".join(problems), "bad_header", line=1)
        with connection.cursor() as cur:
            cur.execute(_DROP)
            # Columns absent from the file read as '' (not NULL): the checks compare text.
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {} (row bigint GENERATED BY DEFAULT AS IDENTITY, err text, {})").format(
                    STAGE,
                    sql.SQL(", ").join(sql.SQL("{} text NOT NULL DEFAULT ''").format(sql.Identifier(c.name))
                                       for c in schema),
                )
            )
            if _stage_server_side(cur, name, header, stats, on_progress, should_stop):
                return stats
            cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(STAGE))
            stats.rows_total = stats.rows_staged = stats.rows_skipped = 0
            stats.parser = "python"
            raw = cur.cursor  # the psycopg 3 cursor under Django's wrapper
            copy_rows = sql.SQL("COPY {} (row, err, {}) FROM STDIN").format(STAGE, column_list(c.name for c in schema))
            blocks = _staging_blocks(records, schema, header, stats)
            finished = False
            while not finished:
                # The connection can run nothing else while a COPY is open, and progress
                # and cancellation checks need it: so the file goes in as a series of
                # COPY statements of about STAGE_SLICE_SECONDS each, checked in between.
                started = time.monotonic()
                with raw.copy(copy_rows) as copy:
                    for block in blocks:
                        copy.write(block)
                        if time.monotonic() - started >= STAGE_SLICE_SECONDS:
                            break
                    else:
                        finished = True
                on_progress(stats)
            analyze(cur, STAGE)
        return stats
    finally:
        stream.close()


def _stage_server_side(
    cur: Any,
    name: str,
    header: parsing.HeaderInfo,
    stats: StageStats,
    on_progress: Callable[[StageStats], None],
    should_stop: Callable[[], None],
) -> bool:
    """COPY the raw file in CSV mode; False (stage left to truncate) if PostgreSQL refused it.

    The connection is busy for the whole COPY, so progress is reported from a helper
    thread (its own connection) by bytes sent; cancellation is noticed through the
    context's in-memory flag, set by the heartbeat thread. The bytes are read from
    storage as they are sent (no local copy first): a storage failure mid-way aborts the
    COPY (psycopg sends CopyFail) and propagates.
    """
    cols = column_list(header.columns)
    copy_csv = sql.SQL(
        "COPY {stage} ({cols}) FROM STDIN"
        " WITH (FORMAT csv, HEADER true, DELIMITER {delimiter}, FORCE_NOT_NULL ({cols}))"
    ).format(stage=STAGE, cols=cols, delimiter=sql.Literal(header.delimiter))
    reporter = _ProgressThread(stats, on_progress)
    reporter.start()
    newlines, last = 0, b"\n"
    raw = cur.cursor  # the psycopg 3 cursor under Django's wrapper: its rowcount after COPY
    try:
        with default_storage.open(name, "rb") as f, raw.copy(copy_csv) as copy:
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
    staged = int(raw.rowcount)  # the rows COPY wrote (a count(*) scan cost 0.1 s per million)
    # PostgreSQL reads a line break inside quotes as part of the value: fewer records
    # than lines means a quoted field spans lines (usually a quote left open). Only the
    # Python path can name the lines each such record swallowed, and count them.
    if staged != newlines - (last == b"\n"):
        return False
    analyze(cur, STAGE)
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
    """Drop this session's staging tables; best effort (the next ingest drops them first,
    and a late cancel of a cancelled ingest may stop this statement too)."""
    try:
        with connection.cursor() as cur:
            cur.execute(_DROP)
    except DatabaseError:
        logger.info("staging tables not dropped (dropped by the next ingest)", exc_info=True)
