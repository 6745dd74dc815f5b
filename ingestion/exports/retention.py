"""Exports under retention: an export goes with the pipeline that produced it.

Registered with ``pipelines.retention`` like ``ingestion.retention``'s hook. The export
rows are deleted in their pipelines' batch; each stored file is deleted through the
storage API only after that batch's transaction commits (a crash in between leaves a
file without a row, never a row pointing at a missing file).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils.translation import gettext_lazy as _

from ingestion.models import Export
from pipelines.models import Job, Pipeline
from pipelines.retention import Section, SweepBatch, register_hook


def _delete_stored(names: list[str]) -> None:
    for name in names:
        default_storage.delete(name)


class ExportRetention:
    def protected_pipelines(self) -> list[QuerySet[Any]]:
        return []

    def plan(self, *, cutoff: datetime, purging: QuerySet[Pipeline], jobs: QuerySet[Job]) -> list[Section]:
        exports = Export.objects.filter(pipeline__in=purging.values("id"))
        stored = exports.exclude(stored_name="")
        return [
            Section("exports", _("exports"), exports.count()),
            Section("export_files", _("stored export files"), stored.count(),
                    bytes=stored.aggregate(n=Sum("size"))["n"] or 0,
                    note=_("removed after the exports' deletion commits")),
        ]

    def delete_with_pipelines(self, *, pipeline_ids: list[Any], job_ids: list[int]) -> dict[str, int]:
        exports = Export.objects.filter(pipeline_id__in=pipeline_ids)
        names = [n for n in exports.values_list("stored_name", flat=True) if n]
        deleted, _ = exports.delete()
        if names:
            transaction.on_commit(lambda: _delete_stored(names))
        counts = {"exports": deleted, "export_files": len(names)}
        return {key: n for key, n in counts.items() if n}  # a purge of no export does not mention exports

    def sweep_batch(self, *, cutoff: datetime, batch_size: int) -> SweepBatch:
        return SweepBatch(deleted={})


register_hook(ExportRetention())
