"""Job handlers for ingestion kinds (csv_ingest, factor_ingest, unit_sync, emission_recalc, aggregation)."""

from __future__ import annotations
