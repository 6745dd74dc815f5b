"""Years, modules, uploads and totals over the API (placeholder, filled below)."""

from __future__ import annotations

urlpatterns: list = []
