"""The unit directory sync: fetch the directory, upsert the units, one report per unit
and year, one report module per enabled module.

``unit_sync_run`` is the ``unit_sync`` job's body (each phase a progress step, each an
idempotent upsert, so a redelivered job simply redoes them); ``units_sync_now`` is the
same without a worker (demo set-up, ops). The source is ``settings.SLUICE_DIRECTORY_SOURCE``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from ingestion.locks import lock_unit_sync
from ingestion.models import Report, Year
from ingestion.parsing import open_stored
from pipelines.messages import msg
from pipelines.models import JobResult
from pipelines.redaction import redact_urls
from pipelines.registry import Outcome

if TYPE_CHECKING:
    from pipelines.context import JobContext


def directory_fetch(*, source: str, stored: bool = False) -> list[dict[str, str]]:
    """Units from the directory source: a CSV file path or an HTTP(S) JSON URL, or
    (``stored``) a CSV in ``default_storage`` that a scheduled source's fetch stored, so
    the worker running the sync need not be the one that fetched it.

    JSON may be a list of objects or ``{"units": [...]}``; keys ``unit_id`` (or
    ``id``), ``name``, ``kind``, ``parent_id``.
    """
    if stored:
        with io.TextIOWrapper(open_stored(source), encoding="utf-8-sig", newline="") as text:
            items = list(csv.DictReader(text))
    elif source.startswith(("http://", "https://")):
        with urllib.request.urlopen(_directory_request(source), timeout=30) as resp:  # noqa: S310 - scheme checked
            data = json.load(resp)
        items = data.get("units", []) if isinstance(data, dict) else data
    else:
        with open(source, encoding="utf-8-sig", newline="") as f:
            items = list(csv.DictReader(f))
    units: dict[str, dict[str, str]] = {}
    for item in items:
        unit_id = str(item.get("unit_id") or item.get("id") or "").strip()
        if not unit_id:
            continue
        units[unit_id] = {
            "unit_id": unit_id[:40],
            "name": str(item.get("name") or unit_id).strip()[:300],
            "kind": str(item.get("kind") or "").strip()[:40],
            "parent_id": str(item.get("parent_id") or "").strip()[:40],
        }
    if not units:
        raise ValueError(f"the directory source {redact_urls(source)} returned no units")
    return list(units.values())


def _directory_request(url: str) -> urllib.request.Request:
    """``https://user:password@host/…`` becomes Basic auth (urllib would take it for a host name)."""
    parts = urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)  # noqa: S310 - callers pass http(s) URLs only
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"  # IPv6 literal
    if parts.port is not None:
        netloc += f":{parts.port}"
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)))  # noqa: S310 - as above
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    return request


def units_upsert(*, units: list[dict[str, str]]) -> int:
    """Upsert the directory's units; units no longer listed are deactivated."""
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("CREATE TEMP TABLE sync_units (unit_id text, name text, kind text, parent_id text) "
                    "ON COMMIT DROP")
        with cur.cursor.copy("COPY sync_units FROM STDIN") as copy:
            for u in units:
                copy.write_row((u["unit_id"], u["name"], u["kind"], u["parent_id"]))
        cur.execute(
            """INSERT INTO ingestion_unit (unit_id, name, kind, parent_id, active, synced_at)
               SELECT unit_id, name, kind, parent_id, true, %s FROM sync_units
               ON CONFLICT (unit_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
                   parent_id = EXCLUDED.parent_id, active = true, synced_at = EXCLUDED.synced_at""",
            [now],
        )
        cur.execute(
            "UPDATE ingestion_unit SET active = false WHERE active AND unit_id NOT IN (SELECT unit_id FROM sync_units)"
        )
    return len(units)


def reports_ensure(*, year: int) -> int:
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO ingestion_report (year_id, unit_id, created_at)
               SELECT %s, unit_id, now() FROM ingestion_unit WHERE active
               ON CONFLICT (year_id, unit_id) DO NOTHING""",
            [year],
        )
        return cur.rowcount


def report_modules_ensure(*, year: int) -> int:
    modules = Year.objects.get(pk=year).enabled_modules
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO ingestion_reportmodule (report_id, module)
               SELECT r.id, m.module FROM ingestion_report r CROSS JOIN unnest(%s::text[]) AS m(module)
               WHERE r.year_id = %s
               ON CONFLICT (report_id, module) DO NOTHING""",
            [modules, year],
        )
        return cur.rowcount


def units_sync_now(*, year: int, source: str | None = None) -> int:
    """The unit sync without a worker (demo set-up, ops): same steps, same idempotence."""
    units = directory_fetch(source=source or settings.SLUICE_DIRECTORY_SOURCE)
    synced = units_upsert(units=units)
    reports_ensure(year=year)
    report_modules_ensure(year=year)
    Year.objects.filter(pk=year).update(configured_at=timezone.now())
    return synced


def unit_sync_run(*, ctx: JobContext) -> Outcome:
    """fetch → upsert units → one report per unit → report modules; each phase is progress."""
    year = ctx.year
    assert year is not None
    stored = ctx.params.get("stored_source")  # a scheduled source's stored response
    source = stored or ctx.params.get("source") or settings.SLUICE_DIRECTORY_SOURCE
    ctx.set_stage("fetch")
    ctx.progress(0, 4, phase="fetch", force=True)
    units = directory_fetch(source=source, stored=bool(stored))
    ctx.checkpoint()
    # Each phase is an idempotent upsert, so a redelivered job simply redoes them.
    ctx.set_stage("upsert units")
    ctx.progress(1, 4, phase="upsert units", force=True)
    synced = units_upsert(units=units)
    ctx.set_stage("create reports")
    ctx.progress(2, 4, phase="create reports", force=True)
    created = reports_ensure(year=year)
    ctx.set_stage("ensure modules")
    ctx.progress(3, 4, phase="ensure modules", force=True)
    modules_created = report_modules_ensure(year=year)
    reports = Report.objects.filter(year_id=year).count()
    with ctx.effect() as eff:
        lock_unit_sync(year)
        Year.objects.filter(pk=year).update(configured_at=timezone.now())
        eff.outcome = Outcome(
            JobResult.SUCCESS,
            msg(gettext_noop("%(units)s units synced from %(source)s; %(created)s reports created (%(reports)s in "
                             "%(year)s), %(modules)s report modules added"),
                units=synced, source=Path(source).name if "://" not in source else redact_urls(source),
                created=created, reports=reports, year=str(year), modules=modules_created),
            {"units_synced": synced, "reports_created": created, "report_modules_created": modules_created},
        )
    return eff.outcome
