from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pipelines import counters


class Command(BaseCommand):
    help = (
        "The trigger-kept job counters behind /jobs/stats/ and the console's cards "
        "(pipelines.counters), and the aggregation_amplified alert's suspects: --check compares "
        "them with a direct count of the jobs, "
        "--rebuild recounts them (safe while workers run), --compact folds their delta rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--check", action="store_true", help="exit 1 if any count differs from the jobs")
        group.add_argument("--rebuild", action="store_true", help="recount from the jobs, then check")
        group.add_argument("--compact", action="store_true", help="fold delta rows (beat does it every minute)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["compact"]:
            self.stdout.write(f"compacted: {counters.compact()} rows removed")
            return
        if opts["rebuild"]:
            counters.rebuild()
            self.stdout.write("rebuilt from the jobs")
        drift = counters.check()
        bad = {table: rows for table, rows in drift.items() if rows}
        for table, rows in bad.items():
            for *key, kept, direct in rows[:20]:
                self.stdout.write(f"{table} {tuple(key)}: kept {kept}, jobs {direct}")
            if len(rows) > 20:
                self.stdout.write(f"{table}: … {len(rows) - 20} more")
        if bad:
            raise CommandError("counters differ from the jobs: run `manage.py sluice_counters --rebuild`")
        self.stdout.write("counters match the jobs")
