from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from pipelines import services


class Command(BaseCommand):
    help = "Run the reaper once (beat runs it every SLUICE_REAPER_INTERVAL_SECONDS)."

    def handle(self, *args: Any, **opts: Any) -> None:
        report = services.reap()
        self.stdout.write(f"recovered={report.recovered} failed={report.failed} redispatched={report.redispatched}")
