from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingestion import services


class Command(BaseCommand):
    help = "Upload a CSV file for a year and module (as the API does) and optionally wait for its pipeline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--year", type=int, required=True)
        parser.add_argument("--module", required=True)
        parser.add_argument("--target", default="data_entries", choices=["data_entries", "factors"])
        parser.add_argument("--user", default=None, help="username recorded as the uploader")
        parser.add_argument("--wait", action="store_true", help="wait for the pipeline to finish")

    def handle(self, *args: Any, **opts: Any) -> None:
        actor = get_user_model().objects.get(username=opts["user"]) if opts["user"] else None
        path: Path = opts["path"]
        try:
            with open(path, "rb") as f:
                upload, pipeline = services.upload_create(
                    year=opts["year"], module=opts["module"], target=opts["target"], file=f,
                    filename=path.name, actor=actor,
                )
        except services.UploadRejected as exc:
            raise CommandError(f"refused ({exc.status} {exc.code}): {exc.message}") from None
        dup = f" (same file as upload {upload.duplicate_of_id})" if upload.duplicate_of_id else ""
        self.stdout.write(f"upload {upload.pk}{dup}: pipeline {pipeline.pk}")
        if not opts["wait"]:
            return
        while not pipeline.is_done:
            time.sleep(0.5)
            pipeline.refresh_from_db()
        self.stdout.write(f"pipeline {pipeline.status}")
        for job in pipeline.jobs.order_by("id"):
            self.stdout.write(f"  {job.job_type} {job.det} {job.result}: {job.status_message}")
