"""Redis restarts under a running job: a real worker subprocess and a private redis-server."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines import services
from pipelines.models import Job
from pipelines.services import JobSpec
from tests.support.fixtures import wait_for
from tests.support.redis_server import RedisServer, celery_broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]


def test_worker_rides_out_a_redis_restart_and_the_pipeline_finishes(
    private_redis: RedisServer, worker_factory: Any, effect_table: Any, isolated_queue: str, settings: Any
) -> None:
    settings.SLUICE_STALE_AFTER_SECONDS = 2
    settings.SLUICE_REDISPATCH_AFTER_SECONDS = 2
    worker = worker_factory("blip", queues=isolated_queue, REDIS_URL=private_redis.url)
    with celery_broker(private_redis.url):
        # given a two-job pipeline whose first job is mid-run
        pipeline = services.pipeline_plan(
            kind="test",
            specs=[JobSpec("a", "test_effect_iso", params={"sleep": 5}), JobSpec("b", "noop_iso", depends_on=("a",))],
        )
        a = pipeline.jobs.order_by("id").first()
        wait_for(lambda: Job.objects.get(pk=a.pk).progress_processed >= 2, message="job a to run")
        # when Redis dies (kill -9), the worker notices, and Redis comes back empty on the same port
        private_redis.kill9()
        wait_for(lambda: "Connection to broker lost" in worker.log_text(), timeout=30,
                 message="the worker to notice the broker is gone")
        private_redis.start()

        # then the worker's main process is still alive and the pipeline completes
        # (with beat's reaper running, as in production)
        def finished() -> bool:
            assert worker.proc.poll() is None, f"worker died:\n{worker.log_text()[-3000:]}"
            services.reap()
            pipeline.refresh_from_db()
            return pipeline.is_done

        wait_for(finished, timeout=60, interval=0.5, message="pipeline to finish after the Redis restart")
    assert "Unrecoverable error" not in worker.log_text()
    assert pipeline.status == "success", [(j.pk, j.state, j.result, j.status_message) for j in pipeline.jobs.all()]
    # and the running job was not interrupted (one attempt) and applied its effect once
    a.refresh_from_db()
    assert a.attempts == 1
    assert len(effect_table(a.pk)) == 1
