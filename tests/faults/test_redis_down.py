"""Redis down: requests still answer (or say 503), dispatch is left to the reaper, live events are re-sent.

A real uvicorn web process and a private redis-server the test stops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from ingestion.models import Upload, Year
from pipelines import publish
from pipelines.dispatch import queue_depths
from pipelines.models import Job
from pipelines.services import reap
from tests.support.fixtures import UserFactory, wait_for
from tests.support.redis_server import RedisServer, celery_broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CSV = b"unit_id,det,category,fte,comment\nENG-0001,staff,researcher,1.5,x\n"


@pytest.fixture
def api(web_server: Any, private_redis: RedisServer) -> httpx.Client:
    server = web_server(REDIS_URL=private_redis.url)
    admin = UserFactory(username="ops", is_superuser=True, is_staff=True)
    token = Token.objects.create(user=admin).key
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=60) as client:
        assert client.get("/api/v1/pipelines/").status_code == 200  # Redis up: the throttle counted it
        yield client


def test_token_api_answers_while_redis_is_down(api: httpx.Client, private_redis: RedisServer) -> None:
    private_redis.kill9()
    started = time.monotonic()
    responses = [api.get("/api/v1/pipelines/") for _ in range(5)]
    elapsed = time.monotonic() - started
    # the throttle falls back to a local counter: answers, not 500s, and no long hang
    assert [r.status_code for r in responses] == [200] * 5
    assert elapsed < 10, f"5 requests took {elapsed:.1f}s with Redis down"


def test_an_endpoint_that_needs_redis_says_503(api: httpx.Client, private_redis: RedisServer) -> None:
    private_redis.kill9()
    response = api.get("/api/v1/workers/")
    assert response.status_code == 503
    assert response.json()["code"] == "redis_unavailable" and response.headers["Retry-After"] == "5"


def test_upload_with_redis_down_is_accepted_and_sent_by_the_reaper_when_redis_returns(
    api: httpx.Client, private_redis: RedisServer, settings: Any
) -> None:
    Year.objects.create(year=2035, configured_at=timezone.now())
    private_redis.kill9()
    # when a file is uploaded while Redis is down
    started = time.monotonic()
    response = api.post(
        "/api/v1/years/2035/modules/headcount/uploads/", data={"target": "data_entries"},
        files={"file": ("h.csv", CSV, "text/csv")},
    )
    elapsed = time.monotonic() - started
    # then it is accepted at once, the upload stored, and its jobs marked as never sent
    assert response.status_code == 202, response.text
    assert elapsed < 10, f"the upload took {elapsed:.1f}s with Redis down"
    upload = Upload.objects.get(pk=response.json()["upload_id"])
    queued = Job.objects.filter(pipeline_id=upload.pipeline_id, state="queued")
    assert queued.exists() and not queued.filter(dispatched_at__isnull=False).exists()
    # and when Redis is back, the reaper's next round sends them (no lost-message wait)
    private_redis.start()
    # No grace: the job may have been queued less than any grace ago (a fast run took
    # 0.098 s from the upload to here, and a 0.1 s grace left the job to the next round).
    settings.SLUICE_UNSENT_GRACE_SECONDS = 0
    with celery_broker(private_redis.url):
        report = reap()
        assert sorted(report.redispatched) == sorted(queued.values_list("pk", flat=True))
        assert queue_depths()["ingest"] >= 1
    assert not Job.objects.filter(pipeline_id=upload.pipeline_id, state="queued", dispatched_at__isnull=True).exists()


def test_a_live_batch_published_while_redis_is_down_is_delivered_when_it_returns(settings: Any) -> None:
    redis_server = RedisServer(persistent=True)  # group memberships survive the restart
    try:
        settings.CHANNEL_LAYERS = {
            "default": {**settings.CHANNEL_LAYERS["default"],
                        "CONFIG": {**settings.CHANNEL_LAYERS["default"]["CONFIG"], "hosts": [redis_server.url]}}
        }
        publish._publisher.reset()  # this process's publisher, rebuilt on the private Redis
        receiver = publish._own_layer()

        async def subscribe() -> str:
            channel = await receiver.new_channel()
            await receiver.group_add(publish.CONSOLE_GROUP, channel)
            return str(channel)

        channel = asyncio.run(subscribe())
        redis_server.kill9()
        publish.publish([{"pipeline_id": "p-1", "seq": 1, "type": "pipeline.state", "pipeline": {}}])
        # the publisher tried, failed, and retries
        wait_for(lambda: publish._get().failing_since is not None, timeout=10, message="a failed publish")
        redis_server.start()
        assert publish.flush(timeout=20), "the batch was neither delivered nor given up"

        async def receive() -> dict[str, Any]:
            return dict(await asyncio.wait_for(receiver.receive(channel), timeout=5))

        message = asyncio.run(receive())
        assert message["type"] == "events.batch" and message["events"][0]["seq"] == 1
    finally:
        publish._publisher.reset()
        redis_server.stop()
