"""Validation of the staged rows, in SQL: a reason per bad value, then duplicate keys.

The statements are built from the module's column schema with ``psycopg.sql`` (column
names as identifiers, reasons and patterns as literals, all quoted by the library) and
run over the TEMP tables of ``ingestion.staging``, in autocommit: nothing here touches
the module's data (that is ``ingestion.apply``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from psycopg import sql

from ingestion.modules import ROLE_CATEGORY, ROLE_DET, ROLE_UNIT, Column
from ingestion.staging import ERRS, NORM, STAGE, analyze, column_list

META_ROW_ERRORS = 1000

# Bounded digit counts keep every accepted value castable to float8: "1e400" or
# 400 fractional digits would overflow/underflow the cast and abort the statement
# (a rejected row must never become a failed job).
DECIMAL_RE = r"^[+-]?([0-9]{1,30}([.][0-9]{0,30})?|[.][0-9]{1,30})([eE][+-]?[0-9]{1,2})?$"
INT_RE = r"^[+-]?[0-9]{1,18}$"
# Plain digits (nearly every value) are recognised first by an unbounded pattern with a
# length bound beside it: PostgreSQL's regex engine expands bounded repeats like
# ``{1,15}``, which made this one test cost 0.8 s per million values (0.25 s now).
# Within the bound, everything it accepts the full pattern accepts too.
SIMPLE_DECIMAL_RE = r"^[0-9]+([.][0-9]+)?$"
SIMPLE_INT_RE = r"^[0-9]+$"
SIMPLE_MAX_CHARS = 15


def staged_value(col: Column) -> sql.Composable:
    """A staged column of the row aliased ``s``.

    Values are normalised in place where they need it (``normalize_staged``, and those
    rows checked again), so every check, the duplicate search and the final insert read
    the plain column.
    """
    return sql.Identifier("s", col.name)


def _lowered(col: Column) -> bool:
    return col.role in (ROLE_DET, ROLE_CATEGORY) or col.type in ("choice", "bool")


def _normal_sql(col: Column, semicolon: bool) -> sql.Composable:
    """How a staged value is normalised: trimmed; keys and choices lower-cased; a decimal
    comma (the norm in ';' files, impossible in ',' files) turned into a point."""
    v = sql.SQL("btrim({}, E' \\t')").format(sql.Identifier(col.name))
    if _lowered(col):
        return sql.SQL("lower({})").format(v)
    if semicolon and col.type in ("decimal", "int"):
        return sql.SQL("replace({}, ',', '.')").format(v)
    return v


def _column_not_normal(col: Column, semicolon: bool) -> sql.Composable:
    """True where normalising would change this column of the staged row ``s``."""
    v = sql.Identifier("s", col.name)
    tests = [sql.SQL("{} LIKE {}").format(v, sql.Literal(p)) for p in (" %", "% ", "\t%", "%\t")]
    if _lowered(col):
        tests.append(sql.SQL("{} ~ '[[:upper:]]'").format(v))
    if semicolon and col.type in ("decimal", "int"):
        tests.append(sql.SQL("strpos({}, ',') > 0").format(v))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(tests))


def _free_text_not_normal(columns: list[Column]) -> sql.Composable:
    ends = [sql.Literal(p) for p in (" %", "% ", "\t%", "%\t")]
    tests = [sql.SQL("{} LIKE {}").format(sql.Identifier(c.name), p) for c in columns for p in ends]
    lowered = [c.name for c in columns if _lowered(c)]
    if lowered:
        tests.append(sql.SQL("concat({}) ~ '[[:upper:]]'").format(column_list(lowered)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(tests))


def normalize_staged(*, schema: tuple[Column, ...], delimiter: str) -> bool:
    """Normalise the staged rows that need it (usually none), after the checks ran on the
    values as staged; True if some row changed (listed in the TEMP table ``NORM``).

    Why after, and only where it can matter: a number, a choice or a unit that is not
    normal (" 12", "Plane", " ENG", "1,5" in a ';' file) already failed its check, so it
    is among the errors, named with its column; only free text (``str`` columns:
    category, comment…) can pass its checks and still need trimming or lower-casing. So
    the rows tested are those with an error in a column that is not normal, and those
    whose free text is not normal — instead of a test of every column of every row
    (1 s per million rows). The rows changed are checked again (``validate_staged``).
    """
    semicolon = delimiter == ";"
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c.name), _normal_sql(c, semicolon)) for c in schema
    )
    # Free text: ``str`` columns, but not the unit, whose check is a join on the synced
    # directory (ids stored stripped, ``ingestion.unit_sync``): one that is not normal
    # fails it. Tested by LIKE at both ends (half the cost of a regex over them).
    free_text = [c for c in schema if c.type == "str" and c.role != ROLE_UNIT]
    # A row with errors: only a column that failed can be not normal (a value that passed
    # its format, choice or unit check is normal; free text is tested apart), so only the
    # failed columns are tested, through a join with the errors (a probe per staged row
    # cost 2 s on a file of a million bad numbers).
    failed_not_normal = sql.SQL("CASE e.col {} ELSE false END").format(sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(c.name), _column_not_normal(c, semicolon)) for c in schema
    ))
    normalise = sql.SQL(
        "WITH changed AS (UPDATE {stage} s SET {sets} {source} WHERE s.err IS NULL AND {cond} RETURNING s.row)"
        " INSERT INTO {norm} SELECT row FROM changed"
    )
    changed = 0
    with connection.cursor() as cur:
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (row bigint)").format(NORM))
        if free_text:
            cur.execute(normalise.format(stage=STAGE, sets=sets, source=sql.SQL(""), norm=NORM,
                                         cond=_free_text_not_normal(free_text)))
            changed += cur.rowcount
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ERRS))
        if cur.fetchone()[0]:
            cur.execute(normalise.format(stage=STAGE, sets=sets, source=sql.SQL("FROM {} e").format(ERRS), norm=NORM,
                                         cond=sql.SQL("e.row = s.row AND {}").format(failed_not_normal)))
            changed += cur.rowcount
        if not changed:
            return False
        analyze(cur, STAGE)
        analyze(cur, NORM)
    return True


def _check_sql(col: Column) -> sql.Composable:
    """CASE giving the reason this column's value is invalid, or NULL."""
    v = staged_value(col)
    shown = sql.SQL("'\"' || left({}, 40) || '\"'").format(v)
    whens = [
        sql.SQL("WHEN {} = '' THEN {}").format(
            v, sql.Literal("missing (required)") if col.required else sql.SQL("NULL")
        )
    ]
    # The server-side CSV parser accepts line breaks inside quoted fields; no column
    # does (numbers and choices are refused by their own format checks below).
    if col.type == "str":
        whens.append(
            sql.SQL("WHEN strpos({v}, E'\\n') > 0 OR strpos({v}, E'\\r') > 0 THEN {reason}").format(
                v=v, reason=sql.Literal("line break inside a quoted field (is a quote unbalanced?)")
            )
        )
    if col.type in ("decimal", "int"):
        regex = DECIMAL_RE if col.type == "decimal" else INT_RE
        what = "not a number" if col.type == "decimal" else "not a whole number"
        # The full pattern costs ~2 µs a value; plain digits (nearly every value) are
        # recognised by a far cheaper test first.
        simple = SIMPLE_DECIMAL_RE if col.type == "decimal" else SIMPLE_INT_RE
        whens.append(
            sql.SQL(
                "WHEN NOT ((octet_length({v}) <= {bound} AND {v} ~ {simple}) OR {v} ~ {regex}) THEN {what} || {shown}"
            ).format(
                v=v, bound=sql.Literal(SIMPLE_MAX_CHARS), simple=sql.Literal(simple), regex=sql.Literal(regex),
                what=sql.Literal(what + ": "), shown=shown,
            )
        )
        if col.min_value is not None:
            op, word = ("<=", ">") if col.exclusive_min else ("<", "≥")
            whens.append(
                sql.SQL("WHEN {}::float8 {} {} THEN {} || {}").format(
                    v, sql.SQL(op), sql.Literal(col.min_value),
                    sql.Literal(f"must be {word} {col.min_value:g}, got "), shown,
                )
            )
        if col.max_value is not None:
            whens.append(
                sql.SQL("WHEN {}::float8 > {} THEN {} || {}").format(
                    v, sql.Literal(col.max_value), sql.Literal(f"must be ≤ {col.max_value:g}, got "), shown
                )
            )
    elif col.allowed:
        whens.append(
            sql.SQL("WHEN {} NOT IN ({}) THEN {} || {} || {}").format(
                v, sql.SQL(", ").join(sql.Literal(a) for a in col.allowed), sql.Literal("unknown value "), shown,
                sql.Literal(" (allowed: " + ", ".join(col.allowed) + ")"),
            )
        )
    if col.type == "str":
        whens.append(
            sql.SQL("WHEN length({}) > {} THEN {}").format(
                v, sql.Literal(col.max_length), sql.Literal(f"longer than {col.max_length} characters")
            )
        )
    if col.role == ROLE_UNIT:
        whens.append(sql.SQL("WHEN u.unit_id IS NULL THEN {} || {}").format(sql.Literal("unknown unit "), shown))
    return sql.SQL("CASE {} END").format(sql.SQL(" ").join(whens))


@dataclass
class Validation:
    rows_rejected: int = 0
    errors_total: int = 0
    first_errors: list[dict[str, Any]] = field(default_factory=list)


_STAGING_ERRORS = sql.SQL(
    "CREATE TEMP TABLE {errs} AS SELECT s.row, 0 AS ord, NULL::text AS col, s.err AS reason"
    " FROM {stage} s WHERE {flagged}"
)

# Rows ``s`` of the stage filtered by ``{only}`` (all, or those just normalised).
_PER_COLUMN_ERRORS = sql.SQL(
    """
    INSERT INTO {errs} (row, ord, col, reason)
    SELECT b.row, e.ord, e.col, e.reason
    FROM (
        SELECT row, {nonnull} FROM (
            SELECT s.row, {reasons} FROM {stage} s {join} WHERE s.err IS NULL {only}
            OFFSET 0  -- a fence: without it the reasons are inlined and computed 3 times a bad row
        ) checked
        WHERE num_nonnulls({nonnull}) > 0
    ) b
    CROSS JOIN LATERAL (VALUES {expand}) AS e(ord, col, reason)
    WHERE e.reason IS NOT NULL
    """
)

_DUPLICATE_ERRORS = sql.SQL(
    """
    INSERT INTO {errs} (row, ord, col, reason)
    SELECT s.row, 99, {last_key}, 'duplicate of row ' || d.first_row || {same}
    FROM (
        SELECT {key_aliases}, min(s.row) AS first_row
        FROM {stage} s
        WHERE {valid}
        GROUP BY {keys}
        HAVING count(*) > 1
    ) d
    JOIN {stage} s ON {key_match}
    WHERE s.row <> d.first_row AND {valid}
    """
)


def valid_rows(cur: Any) -> sql.Composable:
    """The condition on the staged row ``s`` that it has no error (so far).

    Without any error (the usual file) it is only the staging flag: an anti-join with the
    empty errors table still costs a probe per row (0.45 s per million rows measured).
    With errors, a hash anti-join (``NOT EXISTS``; the table is ANALYZEd).
    """
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ERRS))
    if not cur.fetchone()[0]:
        return sql.SQL("s.err IS NULL")
    return sql.SQL("s.err IS NULL AND NOT EXISTS (SELECT 1 FROM {} e WHERE e.row = s.row)").format(ERRS)


# The statements of a validation, in order, with their share of its time (1 M clean
# rows, bench/ingest.py; docs/BENCHMARKS.md): the ingest's progress moves by these.
VALIDATION_STEPS = {"checking values": 0.55, "normalising": 0.15, "finding duplicate keys": 0.30}


def validate_staged(
    *, schema: tuple[Column, ...], delimiter: str, on_step: Callable[[str], None] = lambda step: None,
    staged_errors: bool = True, rows_staged: int | None = None,
) -> Validation:
    """Fill the TEMP errors table from the staged rows; returns counts and the first errors.

    1. Ragged rows and broken fields flagged while staging (``err``).
    2. Per-column checks in one scan: every CASE is evaluated once per row, and only
       the (few) bad rows are expanded into one error per column, in column order.
    3. Normalise in place (trim, lower-case keys, decimal commas) the rows that need it
       (``normalize_staged``: usually none) and check those again.
    4. Duplicate keys among otherwise valid rows, naming the first occurrence: one hash
       aggregate over the rows (linear; ``work_mem`` raised for this statement so a
       million keys stay in memory), joined back only for the keys seen twice.

    ``on_step`` is called with each step's name (``VALIDATION_STEPS``) before it runs;
    ``staged_errors=False`` says no row was flagged while staging (PostgreSQL's parser);
    ``rows_staged``, when given, lets a file without two valid rows skip step 4.
    """
    unit = next((c for c in schema if c.role == ROLE_UNIT), None)
    join = (
        sql.SQL("LEFT JOIN ingestion_unit u ON u.unit_id = {} AND u.active").format(staged_value(unit))
        if unit is not None
        else sql.SQL("")
    )
    reason_names = [sql.Identifier(f"r{i}") for i in range(1, len(schema) + 1)]

    def per_column(only: sql.Composable) -> sql.Composed:
        return _PER_COLUMN_ERRORS.format(
            errs=ERRS,
            stage=STAGE,
            nonnull=sql.SQL(", ").join(reason_names),
            reasons=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(_check_sql(c), name) for c, name in zip(schema, reason_names, strict=True)
            ),
            join=join,
            only=only,
            expand=sql.SQL(", ").join(
                sql.SQL("({}, {}, {})").format(sql.Literal(i), sql.Literal(c.name), sql.Identifier("b", f"r{i}"))
                for i, c in enumerate(schema, start=1)
            ),
        )

    keys = [staged_value(c) for c in schema if c.role in (ROLE_UNIT, ROLE_DET, ROLE_CATEGORY)]
    key_names = [c.name for c in schema if c.role in (ROLE_UNIT, ROLE_DET, ROLE_CATEGORY)]
    with connection.cursor() as cur:
        on_step("checking values")
        # Only the Python path flags rows while staging: after PostgreSQL's parser, the
        # scan for them would find none.
        flagged = sql.SQL("s.err IS NOT NULL" if staged_errors else "false")
        cur.execute(_STAGING_ERRORS.format(errs=ERRS, stage=STAGE, flagged=flagged))
        cur.execute(per_column(sql.SQL("")))
        cur.execute(sql.SQL("CREATE INDEX ON {} (row)").format(ERRS))
        analyze(cur, ERRS)
        on_step("normalising")
        if normalize_staged(schema=schema, delimiter=delimiter):
            # The rows just normalised are checked again, on their normal values.
            cur.execute(sql.SQL("DELETE FROM {} e USING {} n WHERE e.row = n.row").format(ERRS, NORM))
            cur.execute(per_column(sql.SQL("AND s.row IN (SELECT row FROM {})").format(NORM)))
            analyze(cur, ERRS)
        on_step("finding duplicate keys")
        duplicates = _DUPLICATE_ERRORS.format(
            errs=ERRS,
            valid=valid_rows(cur),
            stage=STAGE,
            last_key=sql.Literal(key_names[-1]),
            same=sql.Literal(f" (same {', '.join(key_names)})"),
            key_aliases=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(k, sql.Identifier(f"k{i}")) for i, k in enumerate(keys)
            ),
            keys=sql.SQL(", ").join(keys),
            key_match=sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(k, sql.Identifier("d", f"k{i}")) for i, k in enumerate(keys)
            ),
        )
        cur.execute(sql.SQL("SELECT count(DISTINCT row) FROM {}").format(ERRS))
        rejected_so_far = int(cur.fetchone()[0])
        # Fewer than two valid rows cannot repeat a key (a file of a million bad rows
        # would otherwise pay a hash anti-join of all of them for nothing).
        if rows_staged is None or rows_staged - rejected_so_far >= 2:
            cur.execute("SET work_mem = '256MB'")
            try:
                cur.execute(duplicates)
                found = cur.rowcount
            finally:
                cur.execute("RESET work_mem")
            if found:
                analyze(cur, ERRS)
        cur.execute(sql.SQL("SELECT count(DISTINCT row), count(*) FROM {}").format(ERRS))
        rejected, total = cur.fetchone()
        cur.execute(
            sql.SQL("SELECT row, col, reason FROM {} ORDER BY row, ord LIMIT %s").format(ERRS), [META_ROW_ERRORS]
        )
        first = [{"row": r, "column": c, "reason": reason} for r, c, reason in cur.fetchall()]
    return Validation(rows_rejected=int(rejected), errors_total=int(total), first_errors=first)
