"""The reaper notices a lost message by reading the queues (real Redis), not by waiting for them to drain."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from pipelines import services
from pipelines.dispatch import job_ids_in_broker, queue_depths
from pipelines.models import Job
from pipelines.services import JobSpec

pytestmark = pytest.mark.django_db(transaction=True)


def _age(*jobs: Job) -> None:
    old = timezone.now() - timedelta(minutes=5)
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(queued_at=old, dispatched_at=old)


def test_a_lost_message_is_resent_although_its_queue_is_not_empty(isolated_queue: str, settings: Any) -> None:
    settings.SLUICE_REDISPATCH_AFTER_SECONDS = 10
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete(isolated_queue)
    # given two waiting pipelines on a queue no worker consumes; the second is a chain
    # whose downstream job travels inside its upstream's message
    lost = services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")]).jobs.get()
    chain = services.pipeline_plan(
        kind="test", specs=[JobSpec("a", "noop_iso"), JobSpec("b", "noop_iso", depends_on=("a",))]
    )
    up, down = chain.jobs.order_by("id")
    assert {lost.pk, up.pk, down.pk} <= (job_ids_in_broker() or set())
    # when the first one's message vanishes (the queue still holds the other), and
    # both have waited longer than the threshold (the downstream promoted as if ready)
    message = client.lindex(isolated_queue, -1)  # the oldest: the first pipeline's
    client.lrem(isolated_queue, 1, message)
    Job.objects.filter(pk=down.pk).update(state="queued")
    _age(lost, up, down)
    assert queue_depths()[isolated_queue] == 1
    # then the reaper re-sends exactly the lost one
    assert services.reap().redispatched == [lost.pk]
    assert queue_depths()[isolated_queue] == 2
    # and a message present again is left alone
    assert services.reap().redispatched == []
