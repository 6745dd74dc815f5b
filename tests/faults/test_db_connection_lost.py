"""A worker whose PostgreSQL sessions were ended (a restart, a failover) runs its next job."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from pipelines import services
from pipelines.services import JobSpec
from tests.conftest import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


APP_NAME = "sluice-conn-lost-worker"


def test_the_next_job_after_the_workers_sessions_were_ended_runs_first_time(
    worker_factory: Any, wait_for_pipeline: Any, isolated_queue: str
) -> None:
    # given a worker that ran a job (its pool process keeps a persistent connection)
    # The worker's sessions carry their own application name, so that only they are ended:
    # ending every session on the test database also killed the test process's other
    # threads' connections and failed later tests with AdminShutdown.
    worker = worker_factory("conn-lost", queues=isolated_queue, concurrency=1, PGAPPNAME=APP_NAME)
    first = services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")])
    assert wait_for_pipeline(first.pk, timeout=30).status == "success"
    # when PostgreSQL ends every other session on this database (as a restart does)
    with connection.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = %s", [APP_NAME])
        assert cur.fetchone()[0] >= 1
    # pg_terminate_backend only signals: until the backends have exited, a health check on
    # their connections can still pass (a restart, which this stands for, is over before
    # new work arrives), and the claim after it fails. Wait for them to be gone.
    def ended() -> bool:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name = %s", [APP_NAME])
            return cur.fetchone()[0] == 0
    wait_until(ended, timeout=10, message="the worker's sessions to end")
    # then the next job runs at its first delivery: the dead connection is noticed
    # before use (CONN_HEALTH_CHECKS), not by failing the job's claim on it
    second = services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop_iso")])
    done = wait_until(lambda: (p := type(second).objects.get(pk=second.pk)).is_done and p, timeout=20,
                      message="the second pipeline to finish without the reaper")
    assert done.status == "success"
    assert second.jobs.get().attempts == 1
    assert "raised unexpected" not in worker.log_text(), worker.log_text()[-6000:]
