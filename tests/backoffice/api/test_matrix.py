"""The permission matrix across every read endpoint of one pipeline/job/upload/year.

Given a pipeline of another module than the granted user's, every object endpoint is
404 for that user, 401 anonymous, 403 without a role, 200 for viewer, operator and a
viewer's token.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from ingestion.models import Upload, Year
from ingestion.sources import services as sources
from tests.backoffice.api.conftest import OTHER_MODULE

pytestmark = pytest.mark.django_db


@pytest.fixture
def urls(make_pipeline: Any, users: Any) -> list[str]:
    pipeline = make_pipeline(module=OTHER_MODULE)
    job = pipeline.jobs.first()
    Year.objects.create(year=2042, configured_at=timezone.now())
    upload = Upload.objects.create(
        year_id=2042, module=OTHER_MODULE, target="data_entries", original_name="x.csv", stored_name="missing.csv",
        sha256="0" * 64, size=1, pipeline=pipeline,
    )
    source = sources.source_create(actor=None, name="other", kind="module_data", module=OTHER_MODULE,
                                   location=str(sources.settings.BASE_DIR / "ingestion" / "samples" / "units.csv"),
                                   interval_seconds=60)
    return [
        f"/api/v1/sources/{source.pk}/",
        f"/api/v1/pipelines/{pipeline.pk}/",
        f"/api/v1/pipelines/{pipeline.pk}/events/",
        f"/api/v1/jobs/{job.pk}/",
        f"/api/v1/jobs/{job.pk}/errors.csv",
        f"/api/v1/uploads/{upload.pk}/",
    ]


@pytest.mark.parametrize(
    ("who", "status"),
    [(None, 401), ("norole", 403), ("granted", 404), ("viewer", 200), ("operator", 200), ("admin", 200)],
)
def test_object_reads(who: str | None, status: int, urls: list[str], client_for: Any) -> None:
    client = client_for(who)
    assert {url: client.get(url).status_code for url in urls} == {url: status for url in urls}


def test_object_reads_with_token(urls: list[str], token_client: Any) -> None:
    client = token_client("viewer")
    assert all(client.get(url).status_code == 200 for url in urls)
    granted = token_client("granted")
    assert all(granted.get(url).status_code == 404 for url in urls)


@pytest.mark.parametrize(
    "url", ["/api/v1/pipelines/", "/api/v1/jobs/", "/api/v1/jobs/stats/", "/api/v1/queues/", "/api/v1/workers/",
            "/api/v1/alerts/", "/api/v1/pipelines/active/"],
)
@pytest.mark.parametrize(("who", "status"), [(None, 401), ("norole", 403), ("granted", 200), ("viewer", 200)])
def test_list_reads(url: str, who: str | None, status: int, client_for: Any, settings: Any) -> None:
    settings.SLUICE_INSPECT_TIMEOUT = 0.05
    assert client_for(who).get(url).status_code == status
