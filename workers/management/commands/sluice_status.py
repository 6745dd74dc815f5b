from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pipelines.models import DONE_STATUSES, Pipeline
from workers import selectors


class Command(BaseCommand):
    help = "Queues (depth, waiting, running, paused), live workers and active pipelines."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer")

    def handle(self, *args: Any, **opts: Any) -> None:
        workers = selectors.worker_list(timeout=opts["timeout"])
        self.stdout.write("QUEUES")
        for q in selectors.queue_list(workers=workers):
            oldest = f"{q['oldest_waiting_seconds']:.0f}s" if q["oldest_waiting_seconds"] is not None else "-"
            self.stdout.write(
                f"  {q['name']:<10} {'PAUSED' if q['paused'] else 'running':<8} depth={q['depth']} "
                f"queued={q['queued_jobs']} oldest={oldest} running={q['running']} consumers={len(q['consumers'])}"
            )
        self.stdout.write(f"WORKERS ({len(workers)})")
        for w in workers:
            self.stdout.write(f"  {w['hostname']:<30} c={w['concurrency']} active={w['active']} "
                              f"queues={','.join(w['queues'])} v{w['version']}")
        active = Pipeline.objects.exclude(status__in=DONE_STATUSES).order_by("-created_at")[:50]
        self.stdout.write(f"ACTIVE PIPELINES ({active.count()})")
        for p in active:
            self.stdout.write(f"  {p.pk} {p.kind:<12} {p.year or '':<5} {p.module:<12} {p.status:<11} "
                              f"{p.progress_percent:5.1f}% {p.phase}")
