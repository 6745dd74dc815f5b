"""A typed client generated from ``/api/schema/`` runs the main flow of docs/API.md
(issue 18): the document is usable, not only valid.

``openapi-python-client`` generates the package into a temporary directory (never
committed; no formatter hooks, no network); the flow then runs against a live server
with a real worker: token → create a year → follow its pipeline → upload a module's
factors and data entries → follow that pipeline to its end → read the totals.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from pipelines.models import DONE_STATUSES
from tests.backoffice.api.conftest import LIVE_PASSWORD
from tests.conftest import wait_until
from tests.ingestion.conftest import reference_totals, sample
from tests.support.browser import Server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PACKAGE = "sluice_client"
YEAR = 2031
MODULE = "headcount"
DONE = {status.value for status in DONE_STATUSES}


@pytest.fixture
def generated(live_api: Server, tmp_path: Path) -> Iterator[ModuleType]:
    schema = tmp_path / "openapi.json"
    schema.write_bytes(httpx.get(f"{live_api.base}/api/schema/?format=json", timeout=30).content)
    config = tmp_path / "config.yaml"
    config.write_text(f"post_hooks: []\npackage_name_override: {PACKAGE}\n")  # no ruff run on the output
    result = subprocess.run(
        [str(Path(sys.executable).with_name("openapi-python-client")), "generate", "--path", str(schema),
         "--output-path", str(tmp_path / PACKAGE), "--config", str(config), "--meta", "none"],
        capture_output=True, text=True, timeout=120,
    )
    # A construct the generator cannot type is a warning and a skipped or untyped endpoint.
    assert result.returncode == 0 and "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_generated_client_runs_the_documented_flow(live_api: Server, generated: ModuleType) -> None:
    def part(name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.{name}")

    api_v1, models, types = part("api.v1"), part("models"), part("types")
    for operation in ("v1_auth_token_create", "v1_years_create", "v1_years_modules_uploads_create",
                      "v1_pipelines_retrieve", "v1_pipelines_events_retrieve", "v1_years_totals_retrieve"):
        importlib.import_module(f"{api_v1.__name__}.{operation}")

    # A token for username + password, on a client without credentials (the endpoint needs none).
    anonymous = generated.Client(base_url=live_api.base, raise_on_unexpected_status=True)
    token = api_v1.v1_auth_token_create.sync(
        client=anonymous, body=models.AuthTokenRequest(username="live", password=LIVE_PASSWORD)
    )
    assert isinstance(token, models.TokenOutput), token
    client = generated.AuthenticatedClient(
        base_url=live_api.base, token=token.token, prefix="Token", raise_on_unexpected_status=True
    )

    def follow(pipeline_id: Any) -> tuple[Any, list[Any]]:
        """The pipeline's events until it is done (as a client without SSE would), then its DAG."""
        events: list[Any] = []

        def done() -> Any:
            after = events[-1].seq if events else 0
            page = api_v1.v1_pipelines_events_retrieve.sync(pipeline_id, client=client, after=after)
            assert isinstance(page, models.PipelineEventsOutput), page
            events.extend(page.events)
            detail = api_v1.v1_pipelines_retrieve.sync(pipeline_id, client=client)
            assert isinstance(detail, models.PipelineDetail), detail
            return detail if detail.status.value in DONE else None

        detail = wait_until(done, timeout=90, interval=0.2, message=f"pipeline {pipeline_id} to finish")
        return detail, events

    # 1. Create a year: its unit sync pipeline runs on the worker.
    created = api_v1.v1_years_create.sync(client=client, body=models.YearListInputRequest(year=YEAR))
    assert isinstance(created, models.YearListCreated), created
    sync, _ = follow(created.pipeline_id)
    assert sync.status == models.StatusEnum.SUCCESS

    # 2. Upload the module's factors, then its data entries, following each pipeline to its end.
    for target in (models.TargetEnum.FACTORS, models.TargetEnum.DATA_ENTRIES):
        path = sample(MODULE, target.value)
        upload = api_v1.v1_years_modules_uploads_create.sync(
            YEAR, MODULE, client=client,
            body=models.UploadCreateInputRequest(
                file=types.File(payload=io.BytesIO(path.read_bytes()), file_name=path.name, mime_type="text/csv"),
                target=target,
            ),
        )
        assert isinstance(upload, models.UploadCreateOutput), upload
        detail, events = follow(upload.pipeline_id)
        assert detail.status == models.StatusEnum.SUCCESS, detail.last_error
        assert {job.id for job in detail.jobs} == set(upload.job_ids)
        seqs = [event.seq for event in events]
        assert seqs == sorted(set(seqs)) and seqs, "the event history is in order, without repeats"

    # 3. The totals equal the ones computed from the CSV files by hand.
    totals = api_v1.v1_years_totals_retrieve.sync(YEAR, client=client, module=MODULE)
    assert isinstance(totals, models.YearTotalsOutput), totals
    expected = reference_totals(MODULE, sample(MODULE, "data_entries"), sample(MODULE, "factors"))
    assert {unit.unit_id: unit.kg_co2e for unit in totals.units} == pytest.approx(expected, rel=1e-9)
    assert totals.kg_co2e == pytest.approx(sum(expected.values()), rel=1e-9)
