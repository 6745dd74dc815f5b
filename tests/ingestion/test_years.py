"""Creating a year syncs the unit directory; a year opens only when every enabled
module is complete (server-side rule)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ingestion import selectors, services
from ingestion.models import Report, ReportModule, Unit, Year
from ingestion.modules import MODULES
from pipelines.models import OperatorAction
from pipelines.services import ConflictError
from tests.ingestion.conftest import SAMPLES, YEAR, jobs_of, read_csv
from tests.support.fixtures import UserFactory

SAMPLE_UNITS = read_csv(SAMPLES / "units.csv")


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_creating_a_year_syncs_the_sample_directory(configured_year: Year) -> None:
    # Then every sample unit exists, with one report per unit and every module on it
    assert Unit.objects.filter(active=True).count() == len(SAMPLE_UNITS) >= 200
    assert Report.objects.filter(year=configured_year).count() == len(SAMPLE_UNITS)
    assert ReportModule.objects.filter(report__year=configured_year).count() == len(SAMPLE_UNITS) * len(MODULES)
    assert configured_year.configured_at is not None and not configured_year.is_open
    # And the sync reported its phases as it went
    sync = OperatorAction.objects.get(action="create_year").pipeline
    job = jobs_of(sync)["ingest"]
    assert job.meta["units_synced"] == len(SAMPLE_UNITS)
    assert job.meta["reports_created"] == len(SAMPLE_UNITS)
    phases = [e.payload["job"]["progress"]["phase"] for e in job.events.filter(kind="progress").order_by("seq")]
    assert phases == ["fetch", "upsert units", "create reports", "ensure modules"]
    # And creating it again is refused
    with pytest.raises(ConflictError) as again:
        services.year_create(year=YEAR, actor=None)
    assert again.value.code == "year_exists"


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_year_opens_only_once_every_enabled_module_is_complete(configured_year: Year, load: Any) -> None:
    # Given a fresh year: nothing loaded, so opening is refused with every reason
    with pytest.raises(services.YearIncomplete) as refused:
        services.year_update(year=YEAR, actor=None, is_open=True)
    assert set(refused.value.reasons) == set(MODULES)
    assert "headcount: no data entries loaded" in refused.value.message

    # When a module's data is loaded without its factors, it names what is missing
    assert load("headcount", "data_entries").status == "success"
    reasons = selectors.year_detail(year=YEAR)["incomplete_reasons"]["headcount"]
    assert reasons[0].startswith("missing factor(s): staff/administrative, staff/phd_student")

    # When every module gets factors and data except one
    for module in MODULES:
        assert load(module, "factors").status == "success"
        if module != "purchases":
            assert load(module, "data_entries").status == "success"
    detail = selectors.year_detail(year=YEAR)
    assert detail["incomplete_reasons"] == {"purchases": ["no data entries loaded"]}
    assert not detail["can_open"]
    with pytest.raises(services.YearIncomplete):
        services.year_update(year=YEAR, actor=None, is_open=True)

    # Then disabling that module is enough to open the year
    services.year_update(year=YEAR, actor=None, config_patch={"modules": [m for m in MODULES if m != "purchases"]})
    year = services.year_update(year=YEAR, actor=None, is_open=True)
    assert year.is_open
    assert list(OperatorAction.objects.filter(target_type="year").values_list("action", flat=True)) == [
        "open_year", "configure_year", "create_year"
    ]

    # And a stale factor makes the module incomplete again (named)
    services.year_update(year=YEAR, actor=None, is_open=False)
    services.year_update(year=YEAR, actor=None, config_patch={"modules": list(MODULES)})
    assert load("purchases", "data_entries").status == "success"
    factors = b"det,category,kg_co2e_per_unit,source\ngoods,lab_consumables,0.5,new\n"
    assert load("purchases", "factors", factors).status == "success"
    reasons = selectors.year_detail(year=YEAR)["incomplete_reasons"]["purchases"]
    assert reasons[0].startswith("stale factor(s), absent from the latest factors file: goods/chemicals")


PRIVATE_USER, PRIVATE_PASSWORD = "svc", "dir-pass-8f2c"
PRIVATE_AUTH = "Basic " + base64.b64encode(f"{PRIVATE_USER}:{PRIVATE_PASSWORD}".encode()).decode()


class _Directory(BaseHTTPRequestHandler):
    units = [{"id": "HTTP-1", "name": "Remote lab", "kind": "lab", "parent_id": ""},
             {"unit_id": "HTTP-2", "name": "Remote service"}]

    def do_GET(self) -> None:
        if self.path.startswith("/private/") and self.headers.get("Authorization") != PRIVATE_AUTH:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"units": self.units}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def directory_url() -> Iterator[str]:
    """A real HTTP directory service on loopback (the remote boundary, served locally)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/units.json"
    server.shutdown()


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_year_can_sync_units_from_an_http_json_directory(
    celery_worker: Any, wait_for_pipeline: Any, directory_url: str
) -> None:
    # When a year is created against an HTTP(S) JSON directory source
    _, pipeline = services.year_create(year=2031, actor=None, source=directory_url)
    done = wait_for_pipeline(pipeline.pk, timeout=60)
    # Then its units come from there
    assert done.status == "success", jobs_of(done)["ingest"].status_message
    assert sorted(Unit.objects.values_list("unit_id", "name")) == [("HTTP-1", "Remote lab"),
                                                                  ("HTTP-2", "Remote service")]
    assert Report.objects.filter(year_id=2031).count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_directory_credentials_never_show_in_the_job(
    celery_worker: Any, wait_for_pipeline: Any, directory_url: str, client: Any
) -> None:
    # Given a directory that needs a login, given in the source URL (and a token in the query)
    private = directory_url.replace("http://", f"http://{PRIVATE_USER}:{PRIVATE_PASSWORD}@").replace(
        "/units.json", "/private/units.json?token=tok-9d1e"
    )
    _, pipeline = services.year_create(year=2032, actor=None, source=private)
    done = wait_for_pipeline(pipeline.pk, timeout=60)
    # Then the sync logs in (Basic auth) and its message names the server, not the secrets
    job = jobs_of(done)["ingest"]
    assert done.status == "success", job.status_message
    assert "units synced from http://***@127.0.0.1:" in job.status_message
    assert "token=***" in job.status_message
    # And the API's job and pipeline details show the source masked too
    client.force_login(UserFactory(username="ops", is_superuser=True, is_staff=True))
    for url in (f"/api/v1/jobs/{job.pk}/", f"/api/v1/pipelines/{done.pk}/"):
        body = client.get(url).content.decode()
        assert PRIVATE_PASSWORD not in body and "tok-9d1e" not in body, url


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_failing_directory_login_names_the_server_without_the_password(
    celery_worker: Any, wait_for_pipeline: Any, directory_url: str
) -> None:
    wrong = directory_url.replace("http://", "http://svc:wrong-pass-77@").replace("/units.json", "/private/u.json")
    _, pipeline = services.year_create(year=2033, actor=None, source=wrong)
    done = wait_for_pipeline(pipeline.pk, timeout=60)
    job = jobs_of(done)["ingest"]
    assert done.status == "failed" and "401" in job.status_message
    assert "wrong-pass-77" not in job.status_message + str(job.error)
