"""An upload overtaken by a later one of the same module-year must not read as applied.

Real worker processes: the earlier upload's ingest waits on a queue only a late worker
consumes, so the later upload deterministically loads first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import Client

from ingestion.models import DataEntry
from pipelines import counters
from pipelines.models import Pipeline
from tests.ingestion.conftest import YEAR, jobs_of, read_csv, sample, upload_bytes, upload_file
from tests.support.fixtures import wait_for
from tests.support.handlers import ISOLATED_QUEUE

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _sse_body(client: Client, pipeline_id: Any) -> str:
    response = client.get(f"/api/v1/pipelines/{pipeline_id}/stream/")
    assert response.status_code == 200

    async def read() -> bytes:  # the view streams asynchronously; it ends by itself (pipeline done)
        return b"".join([chunk async for chunk in response.streaming_content])  # type: ignore[union-attr]

    return asyncio.run(read()).decode()


def test_an_upload_superseded_by_a_later_one_reads_superseded_everywhere(
    configured_year: Any, load: Any, wait_for_pipeline: Any, worker_factory: Any, isolated_queue: str,
    settings: Any, admin_client: Client,
) -> None:
    # Given factors are loaded
    assert load("headcount", "factors").status == "success"
    data = sample("headcount", "data_entries").read_bytes()
    # And an earlier upload whose ingest no running worker takes yet
    settings.SLUICE_QUEUE_ROUTES = {**settings.SLUICE_QUEUE_ROUTES, "csv_ingest": ISOLATED_QUEUE}
    earlier_upload, earlier = upload_bytes(data.replace(b"\n", b"\r\n"), module="headcount")
    settings.SLUICE_QUEUE_ROUTES = {**settings.SLUICE_QUEUE_ROUTES, "csv_ingest": "ingest"}
    # And a later upload of the same module-year, loaded in full
    later_upload, later = upload_file(sample("headcount", "data_entries"), module="headcount",
                                      target="data_entries")
    assert wait_for_pipeline(later.pk, timeout=90).status == "success"

    # When the earlier upload's ingest finally runs
    worker_factory("late", queues=isolated_queue)
    done = wait_for_pipeline(earlier.pk, timeout=90)

    # Then the earlier pipeline says superseded, naming the upload that won
    winner = f"upload #{later_upload.pk}"
    assert done.status == "superseded"
    assert done.phase == f"superseded by {winner}"
    jobs = jobs_of(done)
    assert jobs["ingest"].result == "skipped"
    assert f"superseded by {winner}" in jobs["ingest"].status_message
    assert jobs["ingest"].meta["superseded_by"] == winner
    # And nothing downstream ran: every recalc and the aggregation were skipped, saying why
    downstream = [j for k, j in jobs.items() if k != "ingest"]
    assert downstream and all(j.result == "skipped" and j.attempts == 0 for j in downstream)
    assert all(f"was superseded by {winner}" in j.status_message for j in downstream)
    # And the data is the later upload's
    assert set(DataEntry.objects.filter(year=YEAR, module="headcount").values_list("upload_id", flat=True)) == {
        later_upload.pk
    }
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == len(read_csv(data))
    assert earlier_upload.pk < later_upload.pk

    # And the API, its filter, the event history (what SSE and WebSockets carry) and the admin agree
    detail = admin_client.get(f"/api/v1/pipelines/{done.pk}/").json()
    assert detail["status"] == "superseded" and detail["progress"]["phase"] == f"superseded by {winner}"
    listed = admin_client.get("/api/v1/pipelines/", {"status": "superseded"}).json()["results"]
    assert [p["id"] for p in listed] == [str(done.pk)]
    events = admin_client.get(f"/api/v1/pipelines/{done.pk}/events/").json()["events"]
    last = [e for e in events if e["type"] == "pipeline.update"][-1]
    assert last["pipeline"]["status"] == "superseded"
    stream = _sse_body(admin_client, done.pk)
    assert '"status":"superseded"' in stream and f"superseded by {winner}" in stream
    page = admin_client.get("/admin/pipelines/pipeline/", {"status__exact": "superseded"}).content.decode()
    assert str(done.pk) in page and f"superseded by {winner}" in page
    assert Pipeline.objects.filter(status="superseded").count() == 1
    wait_for(lambda: not Pipeline.objects.exclude(status__in=["success", "superseded"]).exists())
    # And the trigger-kept counters behind /jobs/stats/ and the console's cards count the
    # superseded ingest and its skipped downstream as the jobs table does
    assert counters.check() == {"pipelines_job_tally": [], "pipelines_job_finish_tally": [],
                                "pipelines_aggregation_suspect": []}
