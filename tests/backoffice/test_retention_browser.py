"""The Retention page in a real browser with a real worker: an operator reads the dry
run, confirms, and watches the purge's percentage reach 100 % live, without a reload."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from tests.backoffice.conftest import make_staff
from tests.conftest import wait_until
from tests.support.browser import HAVE_CHROMIUM, NO_CHROMIUM, SCREENSHOTS, Server

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM),
]

PAGE = "/admin/pipelines/pipeline/retention/"
CSV = b"unit_id,det,category,fte,comment\nENG-0001,staff,researcher,1.5,a\nENG-0002,staff,phd_student,2,b\n"
WAIT = 30000


def test_operator_purges_from_the_page_and_sees_its_progress_live(open_page: Any, server: Server) -> None:
    from ingestion import services
    from ingestion.models import Upload, Year
    from pipelines.models import Job, OperatorAction, Pipeline
    from tests.backoffice.live.conftest import plan

    Year.objects.create(year=2031, configured_at=timezone.now())
    upload, uploaded = services.upload_create(year=2031, module="headcount", target="data_entries",
                                              file=io.BytesIO(CSV), filename="staff.csv", actor=None)
    history = [uploaded, *(plan(width=2, year=2031, module="energy") for _ in range(3))]
    # The worker runs them first (the upload's rows are rejected: no unit is synced);
    # then they are made four months old.
    wait_until(lambda: all(p.is_done for p in Pipeline.objects.filter(pk__in=[p.pk for p in history])), timeout=60)
    old = timezone.now() - timedelta(days=120)
    Pipeline.objects.filter(pk__in=[p.pk for p in history]).update(finished_at=old, created_at=old)
    Upload.objects.filter(pk=upload.pk).update(created_at=old)
    stored = Path(settings.MEDIA_ROOT) / upload.stored_name
    assert stored.exists()
    make_staff("op", perms=("view_console", "operate"))

    page = open_page("op", PAGE)
    assert page.inner_text("#retention-plan tr[data-key=pipelines] td.num") == "4"
    jobs = Job.objects.filter(pipeline__in=history).count()
    assert page.inner_text("#retention-plan tr[data-key=jobs] td.num") == str(jobs)
    assert page.inner_text("#retention-plan tr[data-key=row_errors] td.num") == "2"
    assert page.inner_text("#retention-plan tr[data-key=uploads] td.num") == "1"
    page.fill("#id_reason", "quarterly clean-up")
    page.check("#id_confirm")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "retention.png"), full_page=True)

    page.click("#retention-purge button[type=submit]")
    page.wait_for_selector("#retention-watch .retention-run[data-status=success]", timeout=WAIT)
    assert page.inner_text("#retention-watch .live-pct") == "100%"
    assert "4 pipelines" in page.inner_text("#retention-watch .retention-msg")
    assert "1 uploads" in page.inner_text("#retention-watch .retention-msg") and not stored.exists()
    page.screenshot(path=str(SCREENSHOTS / "retention-purged.png"), full_page=True)
    assert not Pipeline.objects.filter(pk__in=[p.pk for p in history]).exists()
    assert OperatorAction.objects.get(action="purge").reason == "quarterly clean-up"
