"""Writes of scheduled sources: configure, run, pause/resume, and the fetch job's body.

A run is planned like any pipeline (``pipeline_plan``): ``source_fetch`` first, then the
jobs an upload of the same target would get (ingest → recalcs → aggregation, or the
unit sync). The fetch job stores the response as an ``Upload`` and hands its id to the
ingest job; an unchanged source ends the fetch ``skipped`` and everything after it
with it ("unchanged, skipped"), so the pipeline reads success without reloading.

A little over ~400 lines: the writes of one resource (validation of a source's settings,
its schedule, its runs and the fetch job's body) read best in one place.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from ingestion import parsing
from ingestion.job_types import CSV_INGEST, FACTOR_INGEST, LOADING_JOB_TYPES, UNIT_SYNC
from ingestion.models import Source, SourceKind, SourceRun, Upload, Year, YearRule
from ingestion.modules import MODULES, get_module
from ingestion.services import _recalc_and_aggregate, raw_response_name, upload_storage_name
from ingestion.sources import fetch, schedule
from pipelines.models import DONE_STATUSES, Job, JobResult, JobState, OperatorActionKind, Pipeline
from pipelines.redaction import redact_urls
from pipelines.registry import Outcome
from pipelines.services import ConflictError, JobSpec, operator_action_record, pipeline_plan
from pipelines.years import YEAR_MAX, YEAR_MIN

if TYPE_CHECKING:
    from pipelines.context import JobContext

PIPELINE_KIND = "source"
FETCH_JOB = "source_fetch"
EDITABLE = ("name", "kind", "location", "auth_secret", "auth_header", "module", "year_rule", "year", "cron",
            "interval_seconds", "enabled")
MIN_INTERVAL_SECONDS = 1
MAX_INTERVAL_SECONDS = 366 * 86400
# An HTTP header name (RFC 9110 token): nothing that could smuggle a second header.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class SourceInvalid(ValueError):
    """A source configuration refused; ``errors`` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class SourcePaused(ConflictError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Source {name!r} is paused.", "source_paused")


# --- configuration -------------------------------------------------------------------------------


def source_validate(values: dict[str, Any]) -> None:
    """Every rule of a source's configuration, with a message per field."""
    errors: dict[str, list[str]] = {}
    kind = values.get("kind")
    if kind not in SourceKind.values:
        errors["kind"] = [f"one of {', '.join(SourceKind.values)}"]
    location = (values.get("location") or "").strip()
    if not location:
        errors["location"] = ["an http(s) URL or an absolute file path"]
    elif not fetch.is_url(location):
        try:
            fetch.check_path(location)
        except fetch.FetchError as exc:
            errors["location"] = [exc.message]
    module = values.get("module") or ""
    if kind == SourceKind.UNIT_DIRECTORY and module:
        errors["module"] = ["the unit directory belongs to no module: leave it blank"]
    elif kind in (SourceKind.MODULE_DATA, SourceKind.MODULE_FACTORS) and module not in MODULES:
        errors["module"] = [f"one of {', '.join(MODULES)}"]
    if values.get("year_rule") not in YearRule.values:
        errors["year_rule"] = [f"one of {', '.join(YearRule.values)}"]
    elif values["year_rule"] == YearRule.FIXED:
        year = values.get("year")
        if not isinstance(year, int) or not YEAR_MIN <= year <= YEAR_MAX:
            errors["year"] = [f"a fixed year rule needs a year between {YEAR_MIN} and {YEAR_MAX}"]
    elif values.get("year") is not None:
        errors["year"] = ["only with the year rule fixed"]
    cron, interval = (values.get("cron") or "").strip(), values.get("interval_seconds")
    if bool(cron) == (interval is not None):
        errors["schedule"] = ["give exactly one of cron and interval_seconds"]
    elif cron:
        try:
            schedule.parse_cron(cron)
        except schedule.ScheduleInvalid as exc:
            errors["cron"] = [str(exc)]
    elif not isinstance(interval, int) or not MIN_INTERVAL_SECONDS <= interval <= MAX_INTERVAL_SECONDS:
        errors["interval_seconds"] = [f"a whole number of seconds from {MIN_INTERVAL_SECONDS} to "
                                      f"{MAX_INTERVAL_SECONDS:,}"]
    if not _HEADER_NAME.match(values.get("auth_header") or "Authorization"):
        errors["auth_header"] = ["an HTTP header name (letters, digits, '-')"]
    secret = values.get("auth_secret") or ""
    if secret and secret not in settings.SLUICE_SOURCE_SECRETS:
        errors["auth_secret"] = [f"no setting SLUICE_SOURCE_SECRET_{secret} in this deployment"]
    if secret and not fetch.is_url(location):
        errors["auth_secret"] = ["only HTTP(S) sources send an auth header"]
    if errors:
        raise SourceInvalid(errors)


def _defaults() -> dict[str, Any]:
    return {"auth_secret": "", "auth_header": "Authorization", "module": "", "year_rule": YearRule.CURRENT,
            "year": None, "cron": "", "interval_seconds": None, "enabled": True}


def source_create(*, actor: Any, **values: Any) -> Source:
    data = {**_defaults(), **{k: v for k, v in values.items() if k in EDITABLE}}
    data["location"] = (data.get("location") or "").strip()
    data["cron"] = " ".join((data.get("cron") or "").split())
    source_validate(data)
    try:
        with transaction.atomic():
            source = Source.objects.create(**data, created_by=actor if getattr(actor, "pk", None) else None)
            schedule.periodic_task_sync(source)
            operator_action_record(actor=actor, action=OperatorActionKind.CREATE_SOURCE, target_type="source",
                                   target_id=str(source.pk), detail=_audit_detail(source))
    except IntegrityError:
        raise SourceInvalid({"name": [f"a source named {data['name']!r} exists"]}) from None
    return source


def source_update(*, source_id: int, actor: Any, **changes: Any) -> Source:
    changes = {k: v for k, v in changes.items() if k in EDITABLE}
    if "cron" in changes:
        changes["cron"] = " ".join((changes["cron"] or "").split())
        if changes["cron"] and "interval_seconds" not in changes:
            changes["interval_seconds"] = None  # switching to cron clears the interval
    if changes.get("interval_seconds") is not None and "cron" not in changes:
        changes["cron"] = ""
    if changes.get("year_rule") not in (None, YearRule.FIXED) and "year" not in changes:
        changes["year"] = None
    try:
        with transaction.atomic():
            source = Source.objects.select_for_update().get(pk=source_id)
            before = {k: getattr(source, k) for k in EDITABLE}
            merged = {**before, **changes}
            source_validate(merged)
            for key, value in changes.items():
                setattr(source, key, value)
            if any(before[k] != merged[k] for k in ("location", "kind", "module")):
                # Another endpoint or target: its validators say nothing about this one.
                source.etag = source.last_modified = source.last_sha256 = ""
            source.save()
            schedule.periodic_task_sync(source)
            changed = sorted(k for k in changes if before[k] != merged[k])
            operator_action_record(actor=actor, action=OperatorActionKind.UPDATE_SOURCE, target_type="source",
                                   target_id=str(source.pk), detail={**_audit_detail(source), "changed": changed})
    except IntegrityError:
        raise SourceInvalid({"name": [f"a source named {changes.get('name')!r} exists"]}) from None
    return source


def source_set_enabled(*, source_id: int, enabled: bool, actor: Any, reason: str = "") -> Source:
    """Pause or resume: beat stops (or starts again) firing it; a running run is not touched."""
    with transaction.atomic():
        source = Source.objects.select_for_update().get(pk=source_id)
        if source.enabled != enabled:
            source.enabled = enabled
            source.save(update_fields=["enabled", "updated_at"])
            schedule.periodic_task_sync(source)
        operator_action_record(
            actor=actor, action=OperatorActionKind.RESUME if enabled else OperatorActionKind.PAUSE,
            target_type="source", target_id=str(source.pk), reason=reason, detail={"source": source.name},
        )
    return source


def source_delete(*, source_id: int, actor: Any) -> None:
    """The source and its schedule go; its runs' pipelines and uploads stay in the history."""
    with transaction.atomic():
        source = Source.objects.select_for_update().get(pk=source_id)
        detail = _audit_detail(source)
        task = source.periodic_task
        source.delete()
        if task is not None:
            task.delete()
        operator_action_record(actor=actor, action=OperatorActionKind.DELETE_SOURCE, target_type="source",
                               target_id=str(source_id), detail=detail)


def _audit_detail(source: Source) -> dict[str, Any]:
    return {"source": source.name, "kind": source.kind, "location": redact_urls(source.location),
            "module": source.module, "schedule": source.cron or f"every {source.interval_seconds}s",
            "enabled": source.enabled}


# --- runs ------------------------------------------------------------------------------------------


def resolve_year(source: Source, *, today: Any = None) -> int:
    today = today or timezone.now().date()
    if source.year_rule == YearRule.FIXED:
        assert source.year is not None
        return source.year
    return today.year - (1 if source.year_rule == YearRule.PREVIOUS else 0)


def active_run(source_id: int) -> SourceRun | None:
    return (SourceRun.objects.filter(source_id=source_id).exclude(pipeline__status__in=DONE_STATUSES)
            .select_related("pipeline").first())


def source_run_start(*, source_id: int, actor: Any, trigger: str = "manual") -> Pipeline:
    """Plan one run; 409 (ConflictError) while one is active, or when paused and scheduled.

    The source row is locked first, so two "Run now" clicks (or a click racing beat)
    cannot both find no active run and start two.
    """
    with transaction.atomic():
        source = Source.objects.select_for_update().get(pk=source_id)
        if trigger == "schedule" and not source.enabled:
            raise SourcePaused(source.name)
        running = active_run(source.pk)
        if running is not None:
            raise ConflictError(
                f"Source {source.name!r} is already running (pipeline {str(running.pipeline_id)[:8]}).",
                "source_running",
            )
        year = resolve_year(source)
        specs = [JobSpec(key="fetch", job_type=FETCH_JOB, params={"source_id": source.pk})]
        if source.kind == SourceKind.UNIT_DIRECTORY:
            specs.append(JobSpec(key="unit_sync", job_type=UNIT_SYNC.name, depends_on=("fetch",)))
        else:
            ingest = CSV_INGEST.name if source.kind == SourceKind.MODULE_DATA else FACTOR_INGEST.name
            specs.append(JobSpec(key="ingest", job_type=ingest, depends_on=("fetch",)))
            specs += _recalc_and_aggregate(source.module, after=("ingest",))
        pipeline = pipeline_plan(
            kind=PIPELINE_KIND, specs=specs, year=year, module=source.module, created_by=actor,
            params={"source_id": source.pk, "source": source.name, "trigger": trigger, "target": source.target},
        )
        SourceRun.objects.create(source=source, pipeline=pipeline, trigger=trigger)
        if trigger == "manual":
            operator_action_record(
                actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="source",
                target_id=str(source.pk), pipeline=pipeline, detail={"kind": PIPELINE_KIND, "source": source.name},
            )
    return pipeline


# --- the fetch job ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    name: str  # in default_storage
    line_count: int
    delimiter: str
    size: int
    sha256: str
    raw_json: str | None  # the JSON response as received, in default_storage


def scratch_dir() -> Path:
    """This process's own folder for downloads in progress: never shared, never kept."""
    return Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir())


def _auth_headers(source: Source) -> dict[str, str]:
    if not source.auth_secret:
        return {}
    value = settings.SLUICE_SOURCE_SECRETS.get(source.auth_secret)
    if not value:
        raise fetch.FetchError(f"the auth secret {source.auth_secret!r} is not set on this worker "
                               f"(SLUICE_SOURCE_SECRET_{source.auth_secret})", "secret_missing")
    return {source.auth_header or "Authorization": value}


def _store_csv(source: Source, fetched: fetch.Fetched, year: int) -> _Stored:
    """The fetched body, stored as the CSV an upload of its target would be (JSON converted).

    The response was downloaded to this worker's scratch folder; what is kept goes to
    ``default_storage`` (so any worker can ingest it): the CSV, scanned as it is written,
    and a JSON response as received. Scratch files are removed here or by the caller.
    """
    assert fetched.path is not None
    dest = upload_storage_name(year, source.module or "units", source.target)
    csv_src, raw_json = fetched.path, None
    try:
        if fetched.is_json:
            with open(fetched.path, "rb") as f:
                raw_json = default_storage.save(raw_response_name(dest), File(f))
            converted = fetched.path.with_suffix(".converted")
            csv_src = converted
            if source.kind == SourceKind.UNIT_DIRECTORY:
                fetch.json_to_csv(src=fetched.path, dest=converted, columns=fetch.UNIT_COLUMNS, list_key="units",
                                  aliases={"id": "unit_id"})
            else:
                columns = [c.name for c in get_module(source.module).columns(source.target)]
                fetch.json_to_csv(src=fetched.path, dest=converted, columns=columns, list_key="rows")
        with open(csv_src, "rb") as f:
            scan = parsing.scan_upload(f, dest, filename=f"{Path(fetched.name).stem or 'source'}.csv",
                                       max_bytes=settings.SLUICE_SOURCE_MAX_BYTES)
        if source.kind == SourceKind.UNIT_DIRECTORY:
            problems = [] if {"unit_id", "id"} & set(scan.header.columns) else ["missing required column unit_id"]
        else:
            problems = parsing.header_problems(scan.header, get_module(source.module).columns(source.target))
        if problems:
            raise fetch.FetchError("line 1: " + "; ".join(problems), "bad_header")
        if scan.line_count == 0:
            raise fetch.FetchError("the response has a header but no data rows", "no_rows")
    except BaseException as exc:
        parsing.delete_quietly(dest)
        if raw_json is not None:
            parsing.delete_quietly(raw_json)
        if isinstance(exc, parsing.FileRejected):
            raise fetch.FetchError(exc.message, exc.code) from None
        raise
    finally:
        if csv_src != fetched.path:
            csv_src.unlink(missing_ok=True)
    return _Stored(scan.name, scan.line_count, scan.header.delimiter, scan.size, scan.sha256, raw_json)


def _year_problem(source: Source, year: int) -> str:
    year_obj = Year.objects.filter(pk=year).first()
    if year_obj is None:
        return f"Year {year} does not exist: create it on Data management, or change the source's year rule"
    if source.kind != SourceKind.UNIT_DIRECTORY and year_obj.configured_at is None:
        return f"Year {year} is not set up yet: its unit sync has not succeeded"
    return ""


def source_fetch_run(*, ctx: JobContext) -> Outcome:
    """Fetch the source, store it as an upload and hand it to the next job (module docstring)."""
    source = Source.objects.filter(pk=ctx.params["source_id"]).first()
    if source is None:
        return Outcome(JobResult.ERROR, "The source was deleted before this run fetched it")
    year = ctx.year
    assert year is not None
    base_meta: dict[str, Any] = {"source_id": source.pk}
    problem = _year_problem(source, year)
    if problem:
        return Outcome(JobResult.ERROR, f"Not fetched: {problem}", base_meta)
    shown = redact_urls(source.location) if fetch.is_url(source.location) else source.location
    # The download lands in this worker's scratch folder (FILE_UPLOAD_TEMP_DIR, or the
    # system's): only what is kept is stored, by _store_csv.
    raw = scratch_dir() / f"source-{source.pk}-{uuid.uuid4().hex}.part"
    ctx.set_stage("fetch")
    ctx.progress(0, None, phase="fetching", force=True)

    def retrying(attempt: int, why: str) -> None:
        ctx.progress(0, None, phase=f"fetching, attempt {attempt} ({why[:120]})", force=True)

    def downloading(done: int, total: int | None) -> None:
        # Bytes as the unit: a real percentage when the length is declared. Throttled by
        # the context, and its cancel check stops a long download between chunks.
        ctx.progress(done, total, phase="fetching")

    stored: _Stored | None = None
    try:
        try:
            if fetch.is_url(source.location):
                fetched = fetch.fetch_url(location=source.location, dest=raw, headers=_auth_headers(source),
                                          etag=source.etag, last_modified=source.last_modified, on_attempt=retrying,
                                          on_chunk=downloading)
            else:
                fetched = fetch.fetch_file(location=source.location, dest=raw, last_sha256=source.last_sha256,
                                           on_chunk=downloading)
            if not fetched.unchanged and fetched.sha256 == source.last_sha256:
                fetched = fetch.Fetched(unchanged=True, sha256=fetched.sha256, size=fetched.size,
                                        http_status=fetched.http_status, attempts=fetched.attempts)
            meta = {**base_meta, "http_status": fetched.http_status, "attempts": fetched.attempts,
                    "bytes": fetched.size, "sha256": fetched.sha256}
            if fetched.unchanged:
                raw.unlink(missing_ok=True)
                how = ("HTTP 304 Not Modified" if fetched.http_status == 304
                       else f"same sha256 ({fetched.sha256[:12]}) as the last stored response")
                return Outcome(JobResult.SKIPPED, f"Unchanged, skipped: {how} from {shown}",
                               {**meta, "unchanged": True}, skip_downstream="the source is unchanged")
            ctx.checkpoint()
            ctx.set_stage("store")
            ctx.progress(fetched.size, fetched.size or None, phase="storing", force=True)
            stored = _store_csv(source, fetched, year)
        except fetch.FetchError as exc:
            return Outcome(JobResult.ERROR, f"Fetch failed: {exc.message}",
                       {**base_meta, "fetch_error": {"code": exc.code, "reason": exc.message}})
        with ctx.effect() as eff:
            upload = Upload.objects.create(
                year_id=year, module=source.module, target=source.target,
                original_name=f"{source.name} ({Path(fetched.name).name or 'response'})"[:255],
                stored_name=stored.name, sha256=stored.sha256,
                size=stored.size, line_count=stored.line_count, delimiter=stored.delimiter,
                pipeline_id=ctx.pipeline_id,
            )
            # The plan is eager, but which upload the next job reads is known only now. It
            # is ``not_started`` until this job finishes (in this same transaction's
            # commit), so nobody reads its params yet; a retry of it reads them again.
            following = Job.objects.filter(pipeline_id=ctx.pipeline_id, state=JobState.NOT_STARTED,
                                           job_type__in=LOADING_JOB_TYPES)
            for job in following:
                extra = ({"stored_source": stored.name} if job.job_type == UNIT_SYNC.name
                         else {"upload_id": upload.pk})
                Job.objects.filter(pk=job.pk).update(params={**(job.params or {}), **extra})
            Source.objects.filter(pk=source.pk).update(
                etag=fetched.etag[:500], last_modified=fetched.last_modified[:100], last_sha256=fetched.sha256
            )
            what = "JSON, converted to CSV" if stored.raw_json else "CSV"
            eff.outcome = Outcome(
                JobResult.SUCCESS,
                f"Fetched {filesizeformat(fetched.size)} ({what}, {stored.line_count:,} rows) from {shown}"
                + (f" after {fetched.attempts} attempts" if fetched.attempts > 1 else "")
                + f"; stored as upload #{upload.pk}",
                {**meta, "upload_id": upload.pk, "format": "json" if stored.raw_json else "csv",
                 "rows_total": stored.line_count,
                 "raw_file": stored.raw_json or ""},
            )
        return eff.outcome
    except BaseException:
        if stored is not None:
            parsing.delete_quietly(stored.name)
            if stored.raw_json is not None:
                parsing.delete_quietly(stored.raw_json)
        raise
    finally:
        raw.unlink(missing_ok=True)
