"""Advisory locks of the ingestion app: transaction-scoped and namespaced.

Order (always): 1. ``NS_MODULE_YEAR`` (year, module): exclusive for ingest and
aggregation, shared for a per-DET recalc; 2. ``NS_DET`` (year, module, det): exclusive
for that DET's recalc. Each effect takes at most these two, in this order, before any
row lock, and the pipeline row lock comes last (at ``job_commit_effect``), so no cycle
is possible. ``NS_UPLOAD_SHA`` and ``NS_UNIT_SYNC`` are taken alone. (Namespace
``0x5110`` is the pipelines app's aggregation-suspects trigger's.)
"""

from __future__ import annotations

import zlib
from typing import Any

from django.db import connection
from psycopg import sql

NS_MODULE_YEAR = 0x5101
NS_DET = 0x5102
NS_UNIT_SYNC = 0x5103
NS_UPLOAD_SHA = 0x5104


def _key(*parts: Any) -> int:
    # crc32 folded into a signed int4 (the two-key advisory lock form); a collision
    # only serialises two unrelated scopes, it never breaks correctness.
    value = zlib.crc32(":".join(str(p) for p in parts).encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def _lock(namespace: int, *parts: Any, shared: bool = False) -> None:
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cur:
        cur.execute(sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(fn)), [namespace, _key(*parts)])


def lock_module_year(year: int, module: str, *, shared: bool = False) -> None:
    _lock(NS_MODULE_YEAR, year, module, shared=shared)


def lock_det(year: int, module: str, det: str) -> None:
    _lock(NS_DET, year, module, det)


def lock_upload_fingerprint(year: int, module: str, target: str, sha256: str) -> None:
    """Serialise the creation of uploads of one file (content) into one module-year target."""
    _lock(NS_UPLOAD_SHA, year, module, target, sha256)


def lock_unit_sync(year: int) -> None:
    _lock(NS_UNIT_SYNC, year)
