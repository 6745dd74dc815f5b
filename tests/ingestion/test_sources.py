"""Scheduled sources end to end: a real worker fetches from a local HTTP server.

Each fetch failure the issue names gives its documented outcome (docs/SOURCES.md):
5xx and connection trouble are retried then end in a clear error, a slow answer times
out, a cut-off body and an oversized one are refused, an unchanged source is skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ingestion.models import Factor, Source, SourceRun, Unit, Upload
from ingestion.sources import selectors, services
from pipelines.models import Job, OperatorAction, Pipeline
from tests.conftest import ROOT, SCRATCH_DIR, SOURCE_MAX_BYTES, SOURCE_TEST_SECRET, wait_until, worker_env
from tests.ingestion.conftest import SAMPLES, YEAR
from tests.support.fixtures import read_stored
from tests.support.http_source import SourceServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

FACTORS = (SAMPLES / "headcount_factors.csv").read_bytes()


@pytest.fixture(scope="module")
def http_server() -> Iterator[SourceServer]:
    server = SourceServer()
    yield server
    server.stop()


@pytest.fixture
def run_source(wait_for_pipeline: Callable[..., Pipeline]) -> Callable[..., tuple[Pipeline, dict[str, Job]]]:
    """Run now and wait: (the finished pipeline, its jobs by type)."""

    def run(*sources: Source, timeout: float = 60) -> Any:
        """One source: (pipeline, jobs); several (started together): a list of those."""
        started = [services.source_run_start(source_id=s.pk, actor=None) for s in sources]
        results = []
        for pipeline in started:
            done = wait_for_pipeline(pipeline.pk, timeout=timeout)
            results.append((done, {j.job_type if not j.det else f"{j.job_type}:{j.det}": j
                                   for j in done.jobs.order_by("id")}))
        return results[0] if len(sources) == 1 else results

    return run


@pytest.fixture
def beat_process(settings: Any) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """``celery beat`` with the DatabaseScheduler on the test database, checking for changes every 0.5 s."""
    started: list[subprocess.Popen[bytes]] = []
    log_path = ROOT / ".var" / "test-logs" / f"{settings.DATABASES['default']['NAME']}-beat.log"

    def start() -> subprocess.Popen[bytes]:
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info"],
            cwd=ROOT, env=worker_env(CELERY_BEAT_MAX_LOOP_INTERVAL="0.5"), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def make_source(url: str, *, kind: str = "module_factors", module: str = "headcount", **extra: Any) -> Source:
    return services.source_create(
        actor=None, name=extra.pop("name", "partner"), kind=kind, location=url, module=module,
        year_rule="fixed", year=YEAR, interval_seconds=3600, **extra,
    )


def test_csv_source_loads_and_an_unchanged_one_is_skipped(
    configured_year: Any, http_server: SourceServer, run_source: Callable[..., Any], settings: Any
) -> None:
    """Given an endpoint with an ETag, when run twice, the second run reloads nothing."""
    settings.SLUICE_SOURCE_SECRETS = {"TESTAPI": SOURCE_TEST_SECRET}
    route = http_server.add("/factors.csv", body=FACTORS, etag='"v1"')
    source = make_source(http_server.url("/factors.csv"), auth_secret="TESTAPI")

    first, jobs = run_source(source)

    assert first.status == "success", jobs["source_fetch"].status_message
    assert "Fetched" in jobs["source_fetch"].status_message and "8 rows" in jobs["source_fetch"].status_message
    assert Factor.objects.filter(year=YEAR, module="headcount", stale=False).count() == 8
    upload = Upload.objects.get(pk=jobs["source_fetch"].meta["upload_id"])
    assert upload.pipeline_id == first.pk and read_stored(upload.stored_name) == FACTORS
    assert route.headers_seen[0]["authorization"] == SOURCE_TEST_SECRET  # the secret, from a setting
    assert "test-only-secret" not in json.dumps(selectors.source_card(source), default=str)

    second, jobs = run_source(source)

    assert route.headers_seen[1]["if-none-match"] == '"v1"'
    assert second.status == "success"
    fetch_job = jobs["source_fetch"]
    assert fetch_job.result == "skipped" and fetch_job.status_message.startswith("Unchanged, skipped: HTTP 304")
    assert all(j.result == "skipped" for t, j in jobs.items() if t != "source_fetch")
    assert "the source is unchanged" in jobs["factor_ingest"].status_message
    assert Upload.objects.filter(year_id=YEAR, module="headcount", target="factors").count() == 1
    card = selectors.source_card(Source.objects.get(pk=source.pk))
    assert card["last_run"]["unchanged"] is True and card["last_run"]["pipeline_id"] == str(second.pk)
    assert card["success_rate"] == {"runs": 2, "succeeded": 2, "rate": 1.0}


def test_same_body_without_validators_is_skipped_by_sha256(
    configured_year: Any, http_server: SourceServer, run_source: Callable[..., Any]
) -> None:
    http_server.add("/plain.csv", body=FACTORS)
    source = make_source(http_server.url("/plain.csv"))
    assert run_source(source)[0].status == "success"

    _, jobs = run_source(source)

    assert jobs["source_fetch"].result == "skipped"
    assert "same sha256" in jobs["source_fetch"].status_message


def test_json_rows_are_converted_and_a_bad_row_is_named(
    configured_year: Any, http_server: SourceServer, run_source: Callable[..., Any], settings: Any
) -> None:
    rows = list(csv.DictReader(io.StringIO(FACTORS.decode())))
    http_server.add("/factors.json", body=json.dumps({"rows": rows}).encode(), content_type="application/json")
    bad = [*rows[:2], {**rows[2], "colour": "blue"}]
    http_server.add("/bad.json", body=json.dumps(bad).encode(), content_type="application/json")
    good, bad_source = make_source(http_server.url("/factors.json")), make_source(http_server.url("/bad.json"),
                                                                                   name="bad")

    (done, jobs), (failed, failed_jobs) = run_source(good, bad_source)

    assert done.status == "success", jobs["source_fetch"].status_message
    assert "JSON, converted to CSV" in jobs["source_fetch"].status_message
    assert Factor.objects.filter(year=YEAR, module="headcount").count() == 8
    assert json.loads(read_stored(jobs["source_fetch"].meta["raw_file"])) == {"rows": rows}  # the raw response is kept
    assert failed.status == "failed"
    assert failed_jobs["source_fetch"].status_message == (
        "Fetch failed: row 3: unknown field(s) colour; known: det, category, kg_co2e_per_unit, source")


def test_each_fetch_failure_gives_its_documented_outcome(
    configured_year: Any, http_server: SourceServer, run_source: Callable[..., Any], settings: Any
) -> None:
    """Given one source per failure, run at once: each ends as docs/SOURCES.md says.

    Read timeout 1 s, 3 attempts, limit SOURCE_MAX_BYTES (tests/conftest.py worker_env).
    """
    huge = FACTORS + b"staff,other,1,x\n" * (SOURCE_MAX_BYTES // 16 + 10)
    routes = {
        "flaky": http_server.add("/flaky.csv", body=FACTORS, statuses=(500, 503)),
        "broken": http_server.add("/broken.csv", always_status=500),
        "slow": http_server.add("/slow.csv", body=FACTORS, delay=1.6),
        "cut": http_server.add("/cut.csv", body=FACTORS, truncate_to=100),
        "huge": http_server.add("/huge.csv", body=huge),
        "stream": http_server.add("/stream.csv", body=huge, declare_length=False),
        "missing": http_server.add("/forbidden.csv", always_status=403),
    }
    path_of = {"missing": "/forbidden.csv"}
    sources = [make_source(http_server.url(path_of.get(name, f"/{name}.csv")), name=name) for name in routes]

    results = dict(zip(routes, run_source(*sources), strict=True))

    def message(name: str) -> str:
        return results[name][1]["source_fetch"].status_message

    flaky, _ = results["flaky"]
    assert flaky.status == "success" and "after 3 attempts" in message("flaky")
    assert len(routes["flaky"].headers_seen) == 3
    for name, pipeline_and_jobs in results.items():
        if name != "flaky":
            assert pipeline_and_jobs[0].status == "failed", name
            assert pipeline_and_jobs[1]["factor_ingest"].result == "skipped", name  # nothing half-loaded
    url = http_server.url("/broken.csv")
    assert message("broken") == f"Fetch failed: {url}: HTTP 500 Internal Server Error (gave up after 3 attempts)"
    assert len(routes["broken"].headers_seen) == 3
    assert message("slow") == (f"Fetch failed: {http_server.url('/slow.csv')}: timed out waiting for data "
                               "(connect 1 s, read 1 s) (gave up after 3 attempts)")
    assert "the response was cut off before its end" in message("cut")
    assert "gave up after 3 attempts" in message("cut")
    assert message("huge") == (
        f"Fetch failed: the response declares {len(huge):,} bytes, over the limit of {SOURCE_MAX_BYTES:,} "
        "(SLUICE_SOURCE_MAX_BYTES)")
    assert len(routes["huge"].headers_seen) == 1  # a size problem is not retried
    assert message("stream") == (
        f"Fetch failed: the response is larger than the limit of {SOURCE_MAX_BYTES:,} bytes (SLUICE_SOURCE_MAX_BYTES)")
    assert message("missing") == (f"Fetch failed: {http_server.url('/forbidden.csv')}: HTTP 403 Forbidden "
                                  "(check the source's auth secret)")
    assert len(routes["missing"].headers_seen) == 1  # a 4xx will not heal: not retried
    assert selectors.source_card(Source.objects.get(name="broken"))["success_rate"]["rate"] == 0.0
    assert not Factor.objects.filter(year=YEAR, module="headcount", category="other").exists()
    assert not list(SCRATCH_DIR.glob("source-*.part"))  # nothing left behind in the worker's scratch folder


def test_a_long_download_shows_progress_and_stops_when_cancelled(
    configured_year: Any, http_server: SourceServer, wait_for_pipeline: Callable[..., Pipeline], settings: Any
) -> None:
    body = FACTORS + b"staff,other,1,x\n" * 12000  # ~200 KB, sent 16 KB every 0.25 s
    http_server.add("/long.csv", body=body, trickle=0.25)
    source = make_source(http_server.url("/long.csv"))
    pipeline = services.source_run_start(source_id=source.pk, actor=None)
    fetch_job = Job.objects.get(pipeline=pipeline, job_type="source_fetch")

    # Given the download under way, its percentage is the bytes read of the declared length.
    moving = wait_until(lambda: Job.objects.filter(pk=fetch_job.pk, progress_processed__gt=0, phase="fetching",
                                                   progress_total=len(body)).first(), message="fetch progress")
    assert 0 < moving.progress_percent < 100

    from pipelines.services import pipeline_cancel

    pipeline_cancel(pipeline_id=pipeline.pk, actor=None, reason="test")

    done = wait_for_pipeline(pipeline.pk)
    assert done.status == "cancelled"
    assert not Upload.objects.filter(pipeline_id=pipeline.pk).exists()
    assert not Factor.objects.filter(year=YEAR, category="other").exists()
    # The worker stops at its next chunk and removes the partial download.
    wait_until(lambda: not list(SCRATCH_DIR.glob(f"source-{source.pk}-*.part")), timeout=10,
               message="the partial download removed")


def test_a_unit_directory_file_source_syncs_units(configured_year: Any, run_source: Callable[..., Any]) -> None:
    source = services.source_create(
        actor=None, name="directory", kind="unit_directory", location=str(SAMPLES / "units.csv"),
        year_rule="fixed", year=YEAR, cron="0 6 * * *",
    )
    Unit.objects.update(name="renamed")

    done, jobs = run_source(source)

    assert done.status == "success", jobs["source_fetch"].status_message
    assert "300 units synced" in jobs["unit_sync"].status_message
    assert not Unit.objects.filter(name="renamed").exists()


def test_scheduled_runs_fire_from_beat(
    configured_year: Any, http_server: SourceServer, wait_for_pipeline: Callable[..., Pipeline],
    beat_process: Callable[[], Any],
) -> None:
    """Given a source every second, beat (DatabaseScheduler, a real process) starts its runs."""
    http_server.add("/beat.csv", body=FACTORS)
    source = services.source_create(actor=None, name="every second", kind="module_factors",
                                    location=http_server.url("/beat.csv"), module="headcount",
                                    year_rule="fixed", year=YEAR, interval_seconds=1)
    beat_process()

    def scheduled_runs() -> list[SourceRun]:
        return list(SourceRun.objects.filter(source=source, trigger="schedule").order_by("created_at"))

    runs = wait_until(lambda: len(scheduled_runs()) >= 2 and scheduled_runs(), timeout=45,
                      message="two scheduled runs")
    first = wait_for_pipeline(runs[0].pipeline_id)
    assert first.status == "success" and first.params["trigger"] == "schedule"
    # Paused: beat stops firing it (a run may already be on its way).
    services.source_set_enabled(source_id=source.pk, enabled=False, actor=None)
    assert selectors.source_card(Source.objects.get(pk=source.pk))["next_run"] is None
    assert OperatorAction.objects.filter(action="pause", target_type="source").exists()
