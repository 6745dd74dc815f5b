from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from ingestion import services, unit_sync
from ingestion.models import Source, Upload, Year
from ingestion.modules import MODULES, TARGETS
from ingestion.sources import services as source_services

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class Command(BaseCommand):
    help = (
        "Create the demo superuser, a demo year (unit sync) and load every sample CSV through the upload "
        "service (idempotent); used by `make run`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", required=True)
        parser.add_argument("--year", type=int, default=2025)
        parser.add_argument("--no-data", action="store_true", help="only the user")

    def handle(self, *args: Any, **opts: Any) -> None:
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=opts["username"], defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.org"}
        )
        if created:
            user.set_password(opts["password"])
            user.save()
        self.stdout.write(f"demo user {user.username} {'created' if created else 'exists'}")
        if opts["no_data"]:
            return
        year = opts["year"]
        if Year.objects.filter(pk=year).exists():
            self.stdout.write(f"demo year {year} exists")
        else:
            _, pipeline = services.year_create(year=year, actor=user)
            self.stdout.write(f"demo year {year} created; unit sync pipeline {pipeline.pk}")
        if Year.objects.get(pk=year).configured_at is None:
            # `make run` prepares data before the worker starts: sync the directory
            # here so the uploads below are accepted (the planned unit_sync pipeline
            # runs again once the worker is up; it is idempotent).
            synced = unit_sync.units_sync_now(year=year)
            self.stdout.write(f"synced {synced} units for {year}")
        # Factors first, so the data uploads' recalcs find them. Idempotent: a sample
        # already uploaded to this year is not uploaded again.
        for target in reversed(TARGETS):
            for module in MODULES:
                path = SAMPLES / f"{module}_{target}.csv"
                if Upload.objects.filter(year_id=year, module=module, target=target, original_name=path.name).exists():
                    continue
                with open(path, "rb") as f:
                    upload, pipeline = services.upload_create(
                        year=year, module=module, target=target, file=f, filename=path.name, actor=user
                    )
                self.stdout.write(f"uploaded {path.name}: upload {upload.pk}, pipeline {pipeline.pk}")
        # One scheduled source, so the Sources page shows a card that runs (docs/SOURCES.md).
        if not Source.objects.exists():
            source = source_services.source_create(
                actor=user, name="Demo: headcount factors (sample file)", kind="module_factors",
                location=str(SAMPLES / "headcount_factors.csv"), module="headcount", year_rule="fixed", year=year,
                interval_seconds=300,
            )
            pipeline = source_services.source_run_start(source_id=source.pk, actor=user)
            self.stdout.write(f"demo source {source.name!r} every 5 minutes; first run: pipeline {pipeline.pk}")
