"""Chaos: load through the real web server — racing uploads, the bad-input corpus, a soak,
live feeds under load and a WebSocket client that was away."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import websockets
from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from backoffice import live
from ingestion import selectors
from ingestion.models import DataEntry, ModuleState
from pipelines.models import Job, Pipeline
from tests.backoffice.live.conftest import Store, session_cookie
from tests.chaos import harness
from tests.chaos.conftest import wait_pipeline
from tests.chaos.harness import YEAR, CaseResult, check_totals, compare_rows
from tests.conftest import wait_until
from tests.ingestion.test_bad_inputs import HEADER, REFUSED, ROWS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]

UPLOAD_PATH = "/api/v1/years/{year}/modules/{module}/uploads/"


def _token() -> str:
    admin = User.objects.create_user("chaos-ops", is_superuser=True, is_staff=True)
    return str(Token.objects.create(user=admin).key)


async def _post_all(base: str, token: str, files: list[tuple[str, bytes]], *, limit: int = 100) -> list[Any]:
    """POST every (module, bytes) at once (at most ``limit`` in flight); the responses."""
    gate = asyncio.Semaphore(limit)
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Token {token}"}, limits=limits,
                                 timeout=600) as client:

        async def post(i: int, module: str, data: bytes) -> Any:
            async with gate:
                return await client.post(UPLOAD_PATH.format(year=YEAR, module=module), data={"target": "data_entries"},
                                         files={"file": (f"{module}-{i}.csv", data, "text/csv")})

        return await asyncio.gather(*[post(i, m, d) for i, (m, d) in enumerate(files)])


def _wait_all(pipeline_ids: list[str], timeout: float) -> list[Pipeline]:
    wait_until(lambda: Pipeline.objects.filter(pk__in=pipeline_ids).exclude(
        status__in=["success", "partial", "failed", "cancelled", "superseded"]).count() == 0,
        timeout=timeout, interval=0.5, message=f"{len(pipeline_ids)} pipelines to finish")
    return list(Pipeline.objects.filter(pk__in=pipeline_ids))


def _winner_check(case: CaseResult, module: str, bodies: dict[int, bytes]) -> None:
    """The applied upload of the module-year is one of the files, loaded whole, and the
    totals are that file's."""
    state = ModuleState.objects.get(year=YEAR, module=module)
    data = bodies[state.data_upload_id]
    part = CaseResult(case="-")
    compare_rows(part, data, module=module)
    check_totals(part, data, module=module)
    case.rows_lost = (case.rows_lost or 0) + (part.rows_lost or 0)
    case.rows_duplicated = (case.rows_duplicated or 0) + (part.rows_duplicated or 0)
    case.totals_correct = (case.totals_correct is not False) and bool(part.totals_correct)
    case.notes.extend(f"{module}: {n}" for n in part.notes)


@pytest.mark.chaos(case="concurrent_uploads")
def test_20_concurrent_uploads_of_one_module_year_plus_5_of_others(
    stack: Any, chaos_year: Any, chaos_case: CaseResult
) -> None:
    rows = 10_000 if harness.full_scale() else 2_000
    stack.worker("race-a", concurrency=2)
    stack.worker("race-b", concurrency=2)
    stack.beat()
    web = stack.web()
    chaos_year(rows, modules=("headcount", "purchases"))
    token = _token()
    files = [("headcount", harness.data_file(rows, seed=100 + i)) for i in range(20)]
    files += [("purchases", harness.data_file(rows, seed=200 + i, module="purchases")) for i in range(5)]
    started = time.time()
    responses = asyncio.run(_post_all(web.url, token, files))
    assert [r.status_code for r in responses] == [202] * len(files), [r.text[:200] for r in responses]
    bodies = {r.json()["upload_id"]: data for r, (_m, data) in zip(responses, files, strict=True)}
    pipelines = _wait_all([r.json()["pipeline_id"] for r in responses], timeout=900)
    statuses = sorted({p.status for p in pipelines})
    chaos_case.recovery_s = round(max(p.finished_at.timestamp() for p in pipelines) - started, 1)
    for module in ("headcount", "purchases"):
        _winner_check(chaos_case, module, bodies)
    chaos_case.notes.append(f"{len(files)} x {rows:,} rows; pipeline statuses {statuses}; "
                            "time to recover = first upload to last pipeline finished")
    assert set(statuses) <= {"success", "superseded"}, statuses
    assert (chaos_case.rows_lost, chaos_case.rows_duplicated, chaos_case.totals_correct) == (0, 0, True)


@pytest.mark.chaos(case="bad_input_http")
def test_bad_input_corpus_through_http(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    stack.worker("bad", concurrency=2)
    web = stack.web()
    chaos_year(0, source=str(harness.SAMPLES / "units.csv"))
    token = _token()
    sample = (harness.SAMPLES / "headcount_data_entries.csv").read_bytes()
    lost = duplicated = 0
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Token {token}"}, timeout=120) as client:

        def post(data: bytes, filename: str) -> httpx.Response:
            return client.post(UPLOAD_PATH.format(year=YEAR, module="headcount"), data={"target": "data_entries"},
                               files={"file": (filename, data, "text/csv")})

        first = post(sample, "sample.csv")
        assert first.status_code == 202, first.text
        assert wait_pipeline(first.json()["pipeline_id"]).status in ("success", "partial")
        for name, data, filename, status, code, text in REFUSED:
            before = DataEntry.objects.count(), Pipeline.objects.count()
            response = post(data, filename)
            body = response.json()
            assert (response.status_code, body["code"]) == (status, code), (name, response.text[:300])
            assert text in body["detail"], (name, body)
            assert (DataEntry.objects.count(), Pipeline.objects.count()) == before, name
        for name, tail, result, expected in ROWS:
            before = list(DataEntry.objects.order_by("id").values_list("id", flat=True))
            response = post(HEADER + tail, "rows.csv")
            assert response.status_code == 202, (name, response.text[:300])
            done = wait_pipeline(response.json()["pipeline_id"], timeout=180)
            ingest = Job.objects.get(pipeline_id=done.pk, job_type="csv_ingest")
            assert ingest.result == result, (name, ingest.status_message)
            after = DataEntry.objects.filter(year=YEAR, module="headcount")
            if result == "error":
                assert expected in ingest.status_message, (name, ingest.status_message)
                now = list(DataEntry.objects.order_by("id").values_list("id", flat=True))
                lost += len(set(before) - set(now))
                duplicated += len(set(now) - set(before))
            else:
                first_error = next(iter(selectors.job_row_errors(job_id=ingest.pk)))
                assert first_error == expected, (name, first_error)
                loaded = ingest.meta["rows_loaded"]
                lost += max(0, loaded - after.count())
                duplicated += max(0, after.count() - loaded)
                assert set(after.values_list("upload_id", flat=True)) == {ingest.meta["upload_id"]}, name
            check_totals(chaos_case)
            assert chaos_case.totals_correct, (name, chaos_case.notes)
    chaos_case.rows_lost, chaos_case.rows_duplicated = lost, duplicated
    chaos_case.notes.append(f"{len(REFUSED)} files refused at upload (status, code, message checked), "
                            f"{len(ROWS)} with bad rows (row errors named, the rest loaded or nothing replaced)")
    assert (lost, duplicated) == (0, 0)


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)


@pytest.mark.chaos(case="soak")
def test_soak_200_pipelines_of_10k_row_files_through_2_worker_processes(
    stack: Any, chaos_year: Any, chaos_case: CaseResult
) -> None:
    pipelines_n = 200 if harness.full_scale() else 10
    rows = 10_000
    worker = stack.worker("soak", concurrency=2)
    stack.beat()
    web = stack.web()
    chaos_year(rows)
    token = _token()
    # warm-up: one pipeline first, so the start figures are those of processes that did work
    data = harness.data_file(rows, seed=999)
    responses = asyncio.run(_post_all(web.url, token, [("headcount", data)]))
    wait_pipeline(responses[0].json()["pipeline_id"], timeout=300)
    start = {"web": _rss_mb(web.proc.pid), "worker": _rss_mb(worker.proc.pid)}
    started = time.time()
    files = [("headcount", harness.data_file(rows, seed=1000 + i)) for i in range(pipelines_n)]
    ids: list[str] = []
    bodies: dict[int, bytes] = {}
    for i in range(0, pipelines_n, 10):  # 10 uploads at a time, the next batch once they are accepted
        batch = files[i:i + 10]
        responses = asyncio.run(_post_all(web.url, token, batch))
        assert [r.status_code for r in responses] == [202] * len(batch)
        ids += [r.json()["pipeline_id"] for r in responses]
        bodies.update({r.json()["upload_id"]: d for r, (_m, d) in zip(responses, batch, strict=True)})
    pipelines = _wait_all(ids, timeout=1800)
    end = {"web": _rss_mb(web.proc.pid), "worker": _rss_mb(worker.proc.pid)}
    statuses = {s: sum(1 for p in pipelines if p.status == s) for s in {p.status for p in pipelines}}
    chaos_case.recovery_s = round(max(p.finished_at.timestamp() for p in pipelines) - started, 1)
    _winner_check(chaos_case, "headcount", bodies)
    chaos_case.notes.append(
        f"{pipelines_n} pipelines x {rows:,} rows in {chaos_case.recovery_s:.0f} s, statuses {statuses}; "
        f"RSS MB start→end: web {start['web']}→{end['web']}, worker (main + 2 pool) "
        f"{start['worker']}→{end['worker']}"
    )
    assert set(statuses) <= {"success", "superseded"}, statuses
    assert (chaos_case.rows_lost, chaos_case.rows_duplicated, chaos_case.totals_correct) == (0, 0, True)


# --- live feeds ------------------------------------------------------------------------------


class Feed:
    """A real WebSocket client of the console feed on the real uvicorn (session login)."""

    def __init__(self, base: str, cookie: str, *, after: int | None = None) -> None:
        parts = urlsplit(base)
        self.url = f"ws://{parts.netloc}/ws/pipelines/" + (f"?after={after}" if after is not None else "")
        self.headers = {"Origin": base, "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}
        self.messages: list[dict[str, Any]] = []
        self.connecting_at = 0.0
        self.replayed_at: float | None = None

    async def run(self, store: Store, stop: asyncio.Event, *, quiet_for: float = 3.0) -> None:
        self.connecting_at = time.monotonic()
        async with websockets.connect(self.url, additional_headers=self.headers, max_size=None) as ws:
            last = time.monotonic()
            while not (stop.is_set() and time.monotonic() - last > quiet_for):
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                message = json.loads(raw)
                if message["type"] == "replayed" and self.replayed_at is None:
                    self.replayed_at = time.monotonic()
                self.messages.append(message)
                store.apply(message)
                last = time.monotonic()


def _feed_diff(store: Store, pipeline_ids: list[str]) -> tuple[int, int, list[str]]:
    """(events missed, events duplicated, pipelines whose final state differs from the database)."""
    snap = live.console_snapshot(modules=None)
    truth = Store()
    truth.apply(snap)
    counts = dict(Pipeline.objects.filter(pk__in=pipeline_ids).values_list("pk", "last_pipeline_seq"))
    missed = sum(max(0, counts[pk] - store.received(str(pk))) for pk in counts) + sum(
        b - a - 1 for _pid, a, b in store.gaps)
    wrong = [p for p in pipeline_ids if store.pipelines.get(p) != truth.pipelines.get(p)]
    return missed, store.duplicates, wrong


@pytest.mark.chaos(case="ws_offline")
def test_a_websocket_client_offline_for_500_events(stack: Any, chaos_year: Any, chaos_case: CaseResult) -> None:
    stack.worker("ws-a", concurrency=2)
    web = stack.web()
    chaos_year(2_000)
    cookie = session_cookie(User.objects.create_user("chaos-viewer", is_superuser=True, is_staff=True))
    ours: list[str] = []
    # Two pool processes publish: held like live.js does (an overtaken event is no loss)
    store = Store(only=None, hold_jumps=True)

    async def scenario() -> Feed:
        # the client connects (snapshot), then goes away
        first = Feed(web.url, cookie)
        stop = asyncio.Event()
        stop.set()
        await first.run(store, stop, quiet_for=1.0)
        last_seq = store.seq
        # while it is away, uploads produce at least 500 events
        files = [("headcount", harness.data_file(2_000, seed=300 + i)) for i in range(40)]
        responses = await _post_all(web.url, _token_sync, files, limit=10)
        ours.extend(r.json()["pipeline_id"] for r in responses)
        await asyncio.to_thread(_wait_events, ours, 500)
        # and it comes back with ?after=<last seq it saw> while they are still running
        back = Feed(web.url, cookie, after=last_seq)
        done = asyncio.Event()
        waiter = asyncio.create_task(asyncio.to_thread(_wait_all, ours, 600))
        runner = asyncio.create_task(back.run(store, done))
        await waiter
        done.set()
        await runner
        return back

    _token_sync = _token()
    back = asyncio.run(scenario())
    missed, duplicated, wrong = _feed_diff(store, ours)
    events = sum(Pipeline.objects.filter(pk__in=ours).values_list("last_pipeline_seq", flat=True))
    replayed = [m for m in back.messages if m["type"] == "replayed"]
    chaos_case.rows_lost, chaos_case.rows_duplicated = missed, duplicated
    if back.replayed_at is not None:
        chaos_case.recovery_s = round(back.replayed_at - back.connecting_at, 1)
    chaos_case.notes.append(f"events, not rows: {events} events of {len(ours)} pipelines, "
                            f"replayed {replayed[0]['count'] if replayed else 0} on reconnect; "
                            f"{len(wrong)} pipelines end in a state other than the database's; "
                            "time to recover = reconnect to the end of the replay")
    assert (missed, duplicated, wrong) == (0, 0, [])


def _wait_events(pipeline_ids: list[str], n: int) -> None:
    seqs = Pipeline.objects.filter(pk__in=pipeline_ids).values_list("last_pipeline_seq", flat=True)
    wait_until(lambda: sum(seqs.all()) >= n, timeout=600, interval=0.2, message=f"{n} events")


@pytest.mark.chaos(case="big_uploads_feed")
def test_50_concurrent_big_uploads_with_the_console_feed_connected(
    stack: Any, chaos_year: Any, chaos_case: CaseResult
) -> None:
    uploads = 50
    # 300k in `make chaos`; SLUICE_CHAOS_BIG_ROWS bounds it (the table says the size run)
    rows = int(os.environ.get("SLUICE_CHAOS_BIG_ROWS") or (300_000 if harness.full_scale() else 20_000))
    stack.worker("big-a", concurrency=2)
    stack.beat()
    web = stack.web()
    chaos_year(rows)
    token = _token()
    cookie = session_cookie(User.objects.create_user("chaos-viewer", is_superuser=True, is_staff=True))
    files = [("headcount", harness.data_file(rows, seed=500 + i)) for i in range(uploads)]
    store = Store(hold_jumps=True)  # two pool processes publish (see the case above)
    ids: list[str] = []
    bodies: dict[int, bytes] = {}

    async def scenario() -> None:
        feed = Feed(web.url, cookie)
        done = asyncio.Event()
        runner = asyncio.create_task(feed.run(store, done))
        await asyncio.sleep(1)
        responses = await _post_all(web.url, token, files)
        assert [r.status_code for r in responses] == [202] * uploads, [r.text[:200] for r in responses]
        ids.extend(r.json()["pipeline_id"] for r in responses)
        bodies.update({r.json()["upload_id"]: d for r, (_m, d) in zip(responses, files, strict=True)})
        await asyncio.to_thread(_wait_all, ids, 3000)
        done.set()
        await runner

    started = time.time()
    asyncio.run(scenario())
    pipelines = list(Pipeline.objects.filter(pk__in=ids))
    chaos_case.recovery_s = round(max(p.finished_at.timestamp() for p in pipelines) - started, 1)
    _winner_check(chaos_case, "headcount", bodies)
    missed, duplicated, wrong = _feed_diff(store, ids)
    statuses = {s: sum(1 for p in pipelines if p.status == s) for s in {p.status for p in pipelines}}
    chaos_case.notes.append(f"{uploads} x {rows:,} rows in {chaos_case.recovery_s:.0f} s, statuses {statuses}; "
                            f"console feed: {missed} events missed, {duplicated} duplicated, "
                            f"{len(wrong)} pipelines differ from the database")
    assert set(statuses) <= {"success", "superseded"}, statuses
    assert (chaos_case.rows_lost, chaos_case.rows_duplicated, chaos_case.totals_correct) == (0, 0, True)
    assert (missed, duplicated, wrong) == (0, 0, [])
