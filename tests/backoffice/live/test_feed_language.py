"""Live feeds speak the reader's language: job messages re-rendered per socket."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backoffice.live.conftest import Socket, db, flush_publisher, make_user, plan, run_pipeline, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_dispatch")]


def _messages(snapshot: dict[str, Any], pid: str) -> set[str]:
    return {j["status_message"] for j in snapshot["jobs"] if j["pipeline_id"] == pid}


async def test_each_socket_reads_job_messages_in_its_own_language() -> None:
    # Given the same viewer on the console feed in French (browser language), in French
    # (the admin's language selector, over an English browser) and in English
    user = await db(make_user, "amelie")
    cookie = await db(session_cookie, user)
    pipeline = await db(plan, width=2, year=2031, module="energy")
    pid = str(pipeline.pk)
    sockets = {
        "fr-browser": Socket("/ws/pipelines/", cookie=cookie, accept_language="fr-FR,fr;q=0.9"),
        "fr-selector": Socket("/ws/pipelines/", cookie=cookie, accept_language="en-US", language_cookie="fr"),
        "en": Socket("/ws/pipelines/", cookie=cookie, accept_language="en-US"),
    }
    snaps = {}
    for name, socket in sockets.items():
        assert await socket.connect() == (True, None), name
        snaps[name] = await socket.next()

    # Then the snapshot's waiting jobs read in each socket's language
    assert _messages(snaps["fr-browser"], pid) == {"En attente d'un worker", "En attente des tâches amont"}
    assert _messages(snaps["fr-selector"], pid) == _messages(snaps["fr-browser"], pid)
    assert _messages(snaps["en"], pid) == {"Waiting for a worker", "Waiting for upstream jobs"}

    # When the pipeline runs, the live events carry the message in each language too
    await db(run_pipeline, pipeline.pk)
    await db(flush_publisher)
    for name, socket in sockets.items():
        running = await socket.until(lambda m: (m.get("job") or {}).get("state") == "running")
        expected = "Running on live-tests" if name == "en" else "En cours sur live-tests"
        assert running["job"]["status_message"] == expected, name
        # ...with the key and parameters a client may render itself
        assert running["job"]["status_key"] == "Running on %(worker)s"
        assert running["job"]["status_params"] == {"worker": "live-tests"}
        await socket.close()
