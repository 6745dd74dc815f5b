"""The Operations console page as the server renders it: paging by pipeline, filters, access."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from tests.backoffice.live.conftest import make_user, plan

pytestmark = pytest.mark.django_db

CONSOLE = "/admin/pipelines/pipeline/live/"


def _client(user: Any) -> Client:
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(user)
    return client


def _shown(html: str) -> list[str]:
    return re.findall(r'<tbody class="pipeline" data-pipeline="([0-9a-f-]{36})"', html)


def _older(html: str) -> str | None:
    link = re.search(r'href="\?([^"]*)" id="ops-older"', html)
    return link.group(1).replace("&amp;", "&") if link else None


def test_pages_are_cut_by_pipeline_with_a_cursor_newest_first(no_dispatch: Any) -> None:
    from pipelines.models import Pipeline

    # Given 45 pipelines of 3 jobs each
    for i in range(45):
        plan(width=2, year=2030, module="energy" if i % 2 else "water")
    expected = [str(pk) for pk in Pipeline.objects.order_by("-created_at", "-id").values_list("pk", flat=True)]
    client = _client(make_user("viewer"))

    # When the viewer walks the pages with "Older pipelines"
    seen: list[str] = []
    query = ""
    pages = 0
    while True:
        html = client.get(f"{CONSOLE}?{query}").content.decode()
        shown = _shown(html)
        # Then each page holds whole pipelines (all their jobs), never cut inside one
        assert html.count('class="job-row"') == 3 * len(shown)
        seen += shown
        pages += 1
        nxt = _older(html)
        if nxt is None:
            break
        query = nxt
    assert pages == 3
    assert seen == expected  # every pipeline once, newest first


def test_filters_take_the_short_id_and_narrow_by_module_and_status(no_dispatch: Any) -> None:
    a = plan(year=2030, module="energy")
    b = plan(year=2031, module="water")
    client = _client(make_user("viewer"))
    assert _shown(client.get(CONSOLE, {"q": str(a.pk)[:8]}).content.decode()) == [str(a.pk)]
    assert _shown(client.get(CONSOLE, {"q": str(b.pk)}).content.decode()) == [str(b.pk)]
    assert _shown(client.get(CONSOLE, {"module": "water"}).content.decode()) == [str(b.pk)]
    assert _shown(client.get(CONSOLE, {"year": "2030"}).content.decode()) == [str(a.pk)]
    assert _shown(client.get(CONSOLE, {"status": "failed"}).content.decode()) == []
    assert _shown(client.get(CONSOLE, {"has_errors": "on"}).content.decode()) == []
    # A bad value is said next to its field, not a 500
    bad = client.get(CONSOLE, {"year": "banana"})
    assert bad.status_code == 200 and "Enter a whole number" in bad.content.decode()


def test_module_granted_user_sees_only_their_modules_rows_and_counters(no_dispatch: Any) -> None:
    from pipelines.models import Job, JobState

    mine = plan(year=2030, module="energy")
    other = plan(year=2030, module="water")
    Job.objects.filter(pipeline=other).update(state=JobState.RUNNING)
    Job.objects.filter(pipeline=mine).update(state=JobState.QUEUED)
    html = _client(make_user("granted", modules=("energy",))).get(CONSOLE).content.decode()
    assert _shown(html) == [str(mine.pk)]
    assert re.search(r'data-card="running"><span class="label">[^<]*</span><span class="value">0<', html)
    assert re.search(r'data-card="queued"><span class="label">[^<]*</span><span class="value">3<', html)
    full = _client(make_user("viewer")).get(CONSOLE).content.decode()
    assert set(_shown(full)) == {str(mine.pk), str(other.pk)}
    assert re.search(r'data-card="running"><span class="label">[^<]*</span><span class="value">3<', full)


def test_a_staff_user_without_a_role_is_refused(no_dispatch: Any) -> None:
    assert _client(make_user("nobody", perms=())).get(CONSOLE).status_code == 403


def test_stat_cards_count_by_finish_time_and_judge_success_on_failures_only(no_dispatch: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from backoffice import console
    from pipelines.models import Job

    now = timezone.now()
    jobs = [j for _ in range(3) for j in plan(width=3, year=2030, module="energy").jobs.order_by("id")]
    finished = {"state": "finished", "started_at": now - timedelta(minutes=10)}
    # 5 successes and 2 failures today (one in the last hour), 1 cancelled, 1 failure two days ago
    for job, result, ago in [*[(j, "success", timedelta(hours=3)) for j in jobs[:5]],
                             (jobs[5], "error", timedelta(minutes=30)), (jobs[6], "error", timedelta(hours=5)),
                             (jobs[7], "cancelled", timedelta(hours=2)), (jobs[8], "error", timedelta(days=2))]:
        Job.objects.filter(pk=job.pk).update(**finished, result=result, finished_at=now - ago)
    Job.objects.filter(pk__in=[j.pk for j in jobs[9:11]]).update(state="running")
    cards = console.stat_cards(user=make_user("viewer"))
    assert (cards["running"], cards["queued"], cards["failed_24h"]) == (2, 0, 2)
    assert cards["success_rate"] == round(100 * 5 / 7, 1)  # the cancelled one is not a failure
    assert cards["finished_last_hour"] == 1


def test_duration_percentiles_equal_postgresqls_percentile_cont(no_dispatch: Any) -> None:
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from pipelines import stats
    from pipelines.models import Job

    now = timezone.now()
    jobs = [j for _ in range(4) for j in plan(width=3, year=2030, module="energy").jobs.order_by("id")]
    for i, job in enumerate(jobs):
        Job.objects.filter(pk=job.pk).update(state="finished", result="success", started_at=now,
                                             finished_at=now + timedelta(seconds=(i * 7) % 11 + i / 3))
    got = stats.durations(jobs=Job.objects.all())
    with connection.cursor() as cur:
        cur.execute("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at)),"
                    " percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))"
                    " FROM pipelines_job")
        p50, p95 = cur.fetchone()
    assert (got["p50_seconds"], got["p95_seconds"], got["sample"]) == (round(p50, 3), round(p95, 3), len(jobs))
