"""/workers/ reports each worker's real version and the time of its own last heartbeat."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.fixtures import UserFactory, wait_for
from workers.heartbeat import heartbeats, sluice_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_workers_report_version_and_their_own_heartbeat(worker_factory: Any, settings: Any) -> None:
    settings.SLUICE_INSPECT_TIMEOUT = 2.0
    worker = worker_factory("hb", concurrency=1, SLUICE_WORKER_HEARTBEAT_SECONDS="0.5")
    client = APIClient()
    client.force_login(UserFactory(username="ops", is_superuser=True, is_staff=True))

    def mine() -> dict[str, Any] | None:
        rows = client.get("/api/v1/workers/").json()
        return next((w for w in rows if w["hostname"].startswith("hb@")), None)

    row = wait_for(lambda: (r := mine()) and r["last_heartbeat"] and r, timeout=20, message="hb in /workers/")
    # The code the worker runs: the package version plus this checkout's git sha.
    assert row["version"] == sluice_version() and "+g" in row["version"]
    # The heartbeat is the one the worker itself wrote, not the time of the request...
    first = row["last_heartbeat"]
    stored = heartbeats([row["hostname"]])[row["hostname"]]["heartbeat"]
    assert first <= stored <= time.time()
    # ...and it advances while the worker lives, in the worker's rhythm.
    later = wait_for(lambda: (r := mine()) and r["last_heartbeat"] >= first + 0.5 and r, timeout=10)
    assert later["last_heartbeat"] <= time.time()

    # A worker that stops answering keeps its last heartbeat on record, which stops moving.
    worker.kill9()
    last = heartbeats([row["hostname"]])[row["hostname"]]["heartbeat"]
    time.sleep(1.0)
    assert heartbeats([row["hostname"]])[row["hostname"]]["heartbeat"] == last
