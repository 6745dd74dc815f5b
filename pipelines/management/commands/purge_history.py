"""``manage.py purge_history``: the retention dry run, then the purge in batches with its percentage.

For cron or a Kubernetes CronJob (docs/OPERATIONS.md "Retention"); beat runs the same
purge hourly (``sluice.purge_history``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import filesizeformat

from pipelines import retention
from pipelines.management.commands._common import resolve_actor


class Command(BaseCommand):
    help = ("Show what the retention purge would delete (finished pipelines, jobs, events, row errors, "
            "uploads and their files older than the cutoff), then purge it in small batches.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None,
                            help=f"keep this many days (default SLUICE_RETENTION_DAYS="
                                 f"{settings.SLUICE_RETENTION_DAYS})")
        parser.add_argument("--dry-run", action="store_true", help="only show the counts")
        parser.add_argument("--batch-size", type=int, default=None,
                            help=f"rows per transaction (default SLUICE_RETENTION_BATCH_SIZE="
                                 f"{settings.SLUICE_RETENTION_BATCH_SIZE})")
        parser.add_argument("--as", dest="username", help="user named in the operator action log")
        parser.add_argument("--reason", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        days = opts["days"]
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1")
        actor = resolve_actor(opts["username"])
        cutoff = retention.cutoff_for(days)
        dry = retention.plan(cutoff=cutoff)
        self.stdout.write(f"Finished before {cutoff:%Y-%m-%d %H:%M} UTC:")
        for s in dry.sections:
            size = f" ({filesizeformat(s.bytes)})" if s.bytes is not None else ""
            note = f"  [{s.note}]" if s.note else ""
            self.stdout.write(f"  {s.label}: {s.count}{size}{note}")
        if opts["dry_run"]:
            self.stdout.write("Dry run: nothing deleted.")
            return

        def progress(state: retention.Progress) -> None:
            self.stdout.write(f"{state.percent:5.1f}%  {state.done}/{state.total}  {state.phase}")
            self.stdout.flush()

        state = retention.purge(cutoff=cutoff, batch_size=opts["batch_size"], on_progress=progress, total=dry.units)
        retention.record(actor=actor, cutoff=cutoff, reason=opts["reason"], detail={
            "planned": dry.counts, "deleted": dict(state.deleted), "files_removed": state.files_removed,
            "bytes_freed": state.bytes_freed})
        self.stdout.write(retention.summary(state))
