"""The chaos suite's tools: the cases it owes, the servers it may break, the data it loads
and the measurements it takes (rows lost / duplicated, totals recomputed in SQL).

Everything a case kills is its own: a private ``redis-server`` (``RedisServer``), worker
and beat subprocesses, and under ``make chaos`` a private PostgreSQL (``PgControl``,
started by ``tests/chaos/run.py``). The shared servers of the machine are never touched.
"""

from __future__ import annotations

import csv
import io
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.db import OperationalError, connection, connections

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "ingestion" / "samples"
YEAR = 2031
MODULE = "headcount"

# Every case of issue 12's list, in the order of the table. A case without a result
# (not implemented, not selected, or skipped) is printed as "not run: <why>".
CASES: list[tuple[str, str]] = [
    ("pool_kill", "kill -9 of the pool process mid-apply"),
    ("main_kill", "kill -9 of the worker main process mid-apply"),
    ("chord_kill", "kill -9 of every worker during the recalc chord"),
    ("redis_down", "Redis killed for 5 s mid-pipeline"),
    ("redis_results_flushed", "Redis result keys flushed mid-chord"),
    ("pg_restart", "PostgreSQL restarted mid-job"),
    ("pg_terminate", "PostgreSQL backends terminated mid-job"),
    ("cancel_down_retry", "cancel while every worker is down, then retry"),
    ("pause_restart_resume", "pause, restart all workers, resume"),
    ("duplicate_delivery", "duplicate delivery of a finished and of a running job"),
    ("concurrent_uploads", "20 concurrent uploads of one module-year plus 5 of others"),
    ("big_uploads_feed", "50 concurrent 300k-row uploads with the console feed connected"),
    ("ws_offline", "a WebSocket client offline for 500 events"),
    ("db_retryable", "injected deadlock (40P01) and serialization failure (40001) inside a load"),
    ("bad_input_http", "the bad-input corpus of tests/ingestion through HTTP"),
    ("soak", "soak: 200 pipelines of 10k-row files through 2 worker processes"),
]
CASE_TITLES = dict(CASES)


def full_scale() -> bool:
    """`make chaos` runs every case at the issue's size; the CI subset runs smaller."""
    return os.environ.get("SLUICE_CHAOS_SCALE", "ci") == "full"


@dataclass
class CaseResult:
    case: str
    outcome: str = "not run"
    recovery_s: float | None = None
    rows_lost: int | None = None
    rows_duplicated: int | None = None
    totals_correct: bool | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "title": CASE_TITLES.get(self.case, self.case)}


# --- data ------------------------------------------------------------------------------------


def _factors(module: str) -> dict[tuple[str, str], float]:
    with open(SAMPLES / f"{module}_factors.csv", encoding="utf-8-sig", newline="") as f:
        return {(r["det"], r["category"]): float(r["kg_co2e_per_unit"]) for r in csv.DictReader(f)}


FACTORS = {m: _factors(m) for m in ("headcount", "purchases")}
ACTIVITY = {"headcount": "fte", "purchases": "amount_eur"}


def units_needed(rows: int, module: str = MODULE) -> int:
    return -(-rows // len(FACTORS[module]))


def unit_id(n: int) -> str:
    return f"CH-{n:06d}"


def write_directory(path: Path, units: int) -> Path:
    """A unit directory CSV of ``units`` units (the natural key of a row includes the unit,
    so a file of N valid rows needs N / categories units)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("unit_id,name,kind,parent_id\n")
        for n in range(units):
            f.write(f"{unit_id(n)},Chaos unit {n},lab,\n")
    return path


def data_file(rows: int, *, seed: int, module: str = MODULE) -> bytes:
    """``rows`` valid rows of ``module`` (unique keys, every category has a factor)."""
    rnd = random.Random(seed)
    keys = list(FACTORS[module])
    out = io.StringIO()
    out.write(f"unit_id,det,category,{ACTIVITY[module]},comment\n")
    for i in range(rows):
        det, category = keys[i % len(keys)]
        out.write(f"{unit_id(i // len(keys))},{det},{category},{rnd.randint(1, 4000) / 4},r{seed}\n")
    return out.getvalue().encode()


def file_rows(data: bytes) -> Counter[tuple[str, str, str, float]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    col = next(c for c in reader.fieldnames or [] if c in ACTIVITY.values())
    return Counter((r["unit_id"], r["det"], r["category"], round(float(r[col]), 6)) for r in reader)


def file_total(data: bytes, module: str = MODULE) -> float:
    return sum(k[3] * FACTORS[module][(k[1], k[2])] * n for k, n in file_rows(data).items())


# --- measurements ----------------------------------------------------------------------------


def db_retry(fn: Any, *, timeout: float = 60) -> Any:
    """Run ``fn`` (a read), reconnecting while PostgreSQL restarts under this process."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            for conn in connections.all():
                conn.close()
            time.sleep(0.2)


def loaded_rows(year: int, module: str) -> Counter[tuple[str, str, str, float]]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT unit_id, det, category, activity FROM ingestion_dataentry WHERE year = %s AND module = %s",
            [year, module],
        )
        return Counter((u, d, c, round(a, 6)) for u, d, c, a in cur.fetchall())


def compare_rows(result: CaseResult, data: bytes, *, year: int = YEAR, module: str = MODULE) -> None:
    """Rows lost (in the file, not in the table) and duplicated (in the table more often
    than in the file, or not in it at all)."""
    expected, actual = file_rows(data), loaded_rows(year, module)
    result.rows_lost = sum((expected - actual).values())
    result.rows_duplicated = sum((actual - expected).values())


def check_totals(result: CaseResult, data: bytes | None = None, *, year: int = YEAR, module: str = MODULE) -> None:
    """Published totals (per unit and per module) against a recomputation in SQL from the
    loaded rows and the factors, and (given the file) against the file itself."""
    with connection.cursor() as cur:
        cur.execute(
            """SELECT d.unit_id, sum(d.activity * f.kg_co2e_per_unit)
                 FROM ingestion_dataentry d
                 JOIN ingestion_factor f ON f.year = d.year AND f.module = d.module AND f.det = d.det
                                         AND f.category = d.category AND NOT f.stale
                WHERE d.year = %s AND d.module = %s GROUP BY d.unit_id""",
            [year, module],
        )
        recomputed = {u: float(v) for u, v in cur.fetchall()}
        cur.execute(
            "SELECT unit_id, kg_co2e FROM ingestion_total WHERE year = %s AND module = %s", [year, module]
        )
        published = {u: float(v) for u, v in cur.fetchall()}
        cur.execute(
            "SELECT data_version, totals_version FROM ingestion_modulestate WHERE year = %s AND module = %s",
            [year, module],
        )
        versions = cur.fetchone()
    module_total = published.pop("", None)
    problems = []
    if versions is None or versions[0] != versions[1]:
        problems.append(f"totals not current (data/totals version {versions})")
    if module_total is None or not _close(module_total, sum(recomputed.values())):
        problems.append(f"module total {module_total} != SQL {sum(recomputed.values())}")
    wrong_units = [u for u in set(recomputed) | set(published) if not _close(published.get(u), recomputed.get(u))]
    if wrong_units:
        problems.append(f"{len(wrong_units)} unit totals differ from SQL (e.g. {sorted(wrong_units)[:3]})")
    if data is not None and module_total is not None and not _close(module_total, file_total(data, module)):
        problems.append(f"module total {module_total} != the file's {file_total(data, module)}")
    result.totals_correct = not problems
    result.notes.extend(problems)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def markdown_table(results: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, bool):
            return "yes" if value else "**NO**"
        if isinstance(value, float):
            return f"{value:.1f} s"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| case | outcome | time to recover | rows lost | rows duplicated | totals correct | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append("| " + " | ".join([
            cell(r["title"]), cell(r["outcome"]), cell(r["recovery_s"]), cell(r["rows_lost"]),
            cell(r["rows_duplicated"]), cell(r["totals_correct"]), cell("; ".join(r["notes"])),
        ]) + " |")
    return "\n".join(lines)
