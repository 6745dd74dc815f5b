"""Fixtures for ingestion tests: a configured year (units synced by a real worker),
uploads from bytes or sample files, and an independent reference computation of
emissions read straight from the CSV files.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from ingestion import services
from ingestion.models import Year
from ingestion.modules import MODULES
from pipelines.models import Job, Pipeline
from tests.support.fixtures import wait_for

SAMPLES = Path(__file__).resolve().parents[2] / "ingestion" / "samples"
YEAR = 2025


def worker_busy() -> bool:
    """True while another session on the test database runs a statement."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state NOT IN ('idle') AND pid <> pg_backend_pid()"
        )
        return bool(cur.fetchone()[0])


@pytest.fixture(autouse=True)
def _workers_idle_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a worker test, wait until the worker's last statements are over.

    A pipeline is "done" as soon as its last job's finish commits; the worker may still
    run its after-commit steps (publishing, the next delivery's claim). The flush that
    follows a transactional test TRUNCATEs every table: racing those statements it
    deadlocks. (pytest-django's autouse db fixture is set up before this one, so this
    teardown runs before its flush.)
    """
    yield
    marker = request.node.get_closest_marker("django_db")
    if marker is None or not marker.kwargs.get("transaction"):
        return
    quiet_since: list[float] = []

    def settled() -> bool:
        # Every job finished and no worker statement running, continuously for 1 s
        # (a worker is briefly idle between one job and the next).
        if Job.objects.exclude(state="finished").exists() or worker_busy():
            quiet_since.clear()
            return False
        quiet_since.append(time.monotonic())
        return quiet_since[-1] - quiet_since[0] >= 1.0

    wait_for(settled, timeout=120, interval=0.1)


def sample(module: str, target: str) -> Path:
    return SAMPLES / f"{module}_{target}.csv"


def upload_bytes(data: bytes, *, module: str, target: str = "data_entries", year: int = YEAR,
                 filename: str = "upload.csv") -> tuple[Any, Pipeline]:
    return services.upload_create(
        year=year, module=module, target=target, file=io.BytesIO(data), filename=filename, actor=None
    )


def upload_file(path: Path, *, module: str, target: str, year: int = YEAR) -> tuple[Any, Pipeline]:
    with open(path, "rb") as f:
        return services.upload_create(year=year, module=module, target=target, file=f, filename=path.name,
                                      actor=None)


def jobs_of(pipeline: Pipeline) -> dict[str, Job]:
    """Jobs by role: "ingest", "aggregate", "recalc:<det>"."""
    out = {}
    for job in Job.objects.filter(pipeline=pipeline).order_by("id"):
        if job.job_type in ("csv_ingest", "factor_ingest", "unit_sync"):
            out["ingest"] = job
        elif job.job_type == "aggregation":
            out["aggregate"] = job
        else:
            out[f"recalc:{job.det}"] = job
    return out


@pytest.fixture
def configured_year(celery_worker: Any, wait_for_pipeline: Callable[..., Pipeline]) -> Year:
    """Given a year whose unit sync ran on the worker against the sample directory."""
    year, pipeline = services.year_create(year=YEAR, actor=None)
    done = wait_for_pipeline(pipeline.pk, timeout=60)
    assert done.status == "success", jobs_of(done)["ingest"].status_message
    year.refresh_from_db()
    return year


@pytest.fixture
def load(wait_for_pipeline: Callable[..., Pipeline]) -> Callable[..., Pipeline]:
    """Upload a sample (or bytes) and wait until its pipeline is done."""

    def run(module: str, target: str, data: bytes | None = None, *, timeout: float = 90) -> Pipeline:
        if data is None:
            _, pipeline = upload_file(sample(module, target), module=module, target=target)
        else:
            _, pipeline = upload_bytes(data, module=module, target=target)
        return wait_for_pipeline(pipeline.pk, timeout=timeout)

    return run


def read_csv(path_or_bytes: Path | bytes) -> list[dict[str, str]]:
    raw = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    text = raw.decode("utf-8-sig")
    first = text.split("\n", 1)[0]
    delim = ";" if first.count(";") > first.count(",") else ","
    return list(csv.DictReader(io.StringIO(text), delimiter=delim))


def reference_totals(module: str, data: Path | bytes, factors: Path | bytes) -> dict[str, float]:
    """kg CO2e per unit computed in plain Python from the CSVs (the module's formula,
    written out again here on purpose, not imported from the code under test)."""
    kg = {(r["det"].strip().lower(), r["category"].strip().lower()): float(r["kg_co2e_per_unit"])
          for r in read_csv(factors)}
    totals: dict[str, float] = defaultdict(float)
    for r in read_csv(data):
        activity = float(r[MODULES[module].activity.name])
        if module == "professional_travel":
            activity *= 2 if r.get("round_trip", "").strip().lower() in ("true", "yes", "1", "y") else 1
        elif module == "buildings":
            activity *= float(r["share_percent"] or 100) / 100
        elif module == "equipment":
            activity /= float(r["lifetime_years"] or 1)
        totals[r["unit_id"].strip()] += activity * kg[(r["det"].strip().lower(), r["category"].strip().lower())]
    return dict(totals)

