from __future__ import annotations

from django.apps import AppConfig


class IngestionConfig(AppConfig):
    name = "ingestion"
    verbose_name = "Ingestion"

    def ready(self) -> None:
        # Tells the engine's retention what ingestion hangs off a pipeline (issue 9 layering).
        from ingestion import retention  # noqa: F401
        from ingestion.exports import retention as export_retention  # noqa: F401
