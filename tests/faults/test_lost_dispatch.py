"""The reaper notices a lost message by reading the queues (real Redis), not by waiting for them to drain."""

from __future__ import annotations

import json
import time
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


def test_a_message_reserved_by_a_dead_worker_is_resent(isolated_queue: str, settings: Any) -> None:
    settings.SLUICE_REDISPATCH_AFTER_SECONDS = 10
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete(isolated_queue)
    # given a job whose message a worker reserved (prefetched) and that worker was then
    # killed: the message sits in Redis' unacked hash, where kombu keeps it for the
    # visibility timeout (1 h), and no live worker holds its task
    job = services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")]).jobs.get()
    message = client.rpop(isolated_queue)
    tag = "chaos-dead-worker-tag"
    client.hset("unacked", tag, json.dumps([json.loads(message), "", isolated_queue]))
    client.zadd("unacked_index", {tag: time.time()})
    try:
        _age(job)
        assert queue_depths()[isolated_queue] == 0
        # then the reaper does not count that message: it sends the job again now
        assert job.pk not in (job_ids_in_broker() or set())
        assert services.reap().redispatched == [job.pk]
        assert queue_depths()[isolated_queue] == 1
    finally:
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
