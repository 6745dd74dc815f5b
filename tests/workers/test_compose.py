"""docker-compose.yml's structure (Docker itself cannot run on the development machine):
uploads go to the S3-compatible service, and no folder is shared between web and workers."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import ROOT

APP_SERVICES = ("migrate", "web", "worker", "worker-ingest", "beat")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_web_and_workers_store_files_in_the_s3_service_and_share_no_folder() -> None:
    services = compose()["services"]
    s3 = services["s3"]
    bucket_flag = next(arg for arg in s3["command"] if arg.startswith("-bucket="))
    for name in APP_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["SLUICE_STORAGE"] == "s3", name
        assert env["SLUICE_S3_ENDPOINT_URL"] == "http://s3:8333", name
        assert bucket_flag == f"-bucket={env['SLUICE_S3_BUCKET']}", name  # the bucket exists at start
        assert "SLUICE_MEDIA_ROOT" not in env, name
        assert not service.get("volumes"), f"{name} mounts {service.get('volumes')}"
        # The store is up before anything uses it (directly, or through migrate)
        assert "s3" in service["depends_on"] or "migrate" in service["depends_on"], name
    assert services["migrate"]["depends_on"]["s3"] == {"condition": "service_healthy"}
    # Two worker services consume the ingest queue: either may ingest what web stored
    assert "ingest" in services["worker-ingest"]["command"]
    assert "media" not in compose()["volumes"]
