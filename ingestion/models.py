"""Reporting years, units, uploads and the loaded data.

The big tables (``DataEntry``, ``RowError``, ``EmissionLine``) are written only with
set-based SQL (``ingestion.staging``, ``ingestion.apply``, ``ingestion.emissions``: COPY
into a staging table, then ``INSERT … SELECT``); the ORM models exist for reads, admin
and migrations. They carry no foreign keys to ``Unit``/``Upload`` on purpose: a per-row
FK check would cost more than the load itself, and validation already joins against
the unit directory.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from ingestion.modules import MODULES


class Year(models.Model):
    year = models.IntegerField(verbose_name=_("year"), primary_key=True)
    is_open = models.BooleanField(verbose_name=_("open to users"), default=False)
    configured_at = models.DateTimeField(verbose_name=_("units synced at"), null=True, blank=True)
    # {"modules": [enabled module keys], "module_settings": {key: {...}}}
    config = models.JSONField(verbose_name=_("configuration"), default=dict, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("year")
        verbose_name_plural = _("years")
        ordering = ["-year"]

    def __str__(self) -> str:
        return str(self.year)

    @property
    def enabled_modules(self) -> list[str]:
        enabled = (self.config or {}).get("modules")
        return [m for m in MODULES if enabled is None or m in enabled]


class Unit(models.Model):
    """An organisational unit from the directory source (upserted by ``unit_sync``)."""

    unit_id = models.CharField(max_length=40, primary_key=True)
    name = models.CharField(max_length=300)
    kind = models.CharField(max_length=40, blank=True, default="")
    parent_id = models.CharField(max_length=40, blank=True, default="")
    active = models.BooleanField(default=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["unit_id"]

    def __str__(self) -> str:
        return f"{self.unit_id} {self.name}"


class Report(models.Model):
    """One unit's report for one year (created by ``unit_sync``)."""

    year = models.ForeignKey(Year, on_delete=models.CASCADE, related_name="reports")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="reports")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["year", "unit"], name="report_year_unit")]

    def __str__(self) -> str:
        return f"{self.year_id}/{self.unit_id}"



class ReportModule(models.Model):
    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="modules")
    module = models.CharField(max_length=40)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["report", "module"], name="report_module_unique")]

    def __str__(self) -> str:
        return f"{self.report_id}/{self.module}"



class Upload(models.Model):
    """A stored original file: what was uploaded, by whom, and its fingerprint."""

    year = models.ForeignKey(Year, verbose_name=_("year"), on_delete=models.CASCADE, related_name="uploads")
    module = models.CharField(verbose_name=_("module"), max_length=40)
    target = models.CharField(verbose_name=_("target"), max_length=20)
    original_name = models.CharField(verbose_name=_("file name"), max_length=255)
    stored_name = models.CharField(verbose_name=_("stored name"), max_length=255)
    sha256 = models.CharField(verbose_name=_("sha256"), max_length=64)
    size = models.BigIntegerField(verbose_name=_("size"))
    # Physical lines after the header, counted while streaming to storage: the
    # progress total of its ingest; ``row_count`` is the parsed record count.
    line_count = models.BigIntegerField(verbose_name=_("lines"), default=0)
    row_count = models.BigIntegerField(verbose_name=_("rows"), null=True, blank=True)
    delimiter = models.CharField(verbose_name=_("delimiter"), max_length=1, default=",")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("uploaded by"),
        null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    duplicate_of = models.ForeignKey(
        "self", verbose_name=_("duplicate of"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
    )
    pipeline = models.ForeignKey(
        "pipelines.Pipeline", verbose_name=_("pipeline"),
        null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(verbose_name=_("uploaded at"), auto_now_add=True)

    class Meta:
        verbose_name = _("upload")
        verbose_name_plural = _("uploads")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["year", "module", "target", "sha256"], name="upload_fingerprint")]

    def __str__(self) -> str:
        return f"upload {self.pk} {self.year_id}/{self.module}/{self.target} {self.original_name}"


class DataEntry(models.Model):
    """One validated activity row of a module-year (replaced whole by each upload)."""

    year = models.IntegerField()
    module = models.CharField(max_length=40)
    det = models.CharField(max_length=60)
    unit_id = models.CharField(max_length=40)
    category = models.CharField(max_length=200)
    activity = models.FloatField()
    modifier = models.FloatField(default=1.0)
    comment = models.TextField(blank=True, default="")
    upload_id = models.BigIntegerField()
    source_row = models.BigIntegerField()

    # No Meta.indexes: the table is partitioned by LIST (upload_id), one partition per
    # upload (migration 0007, ``ingestion.apply``). Every reader selects one upload's rows
    # (``ModuleState.data_upload_id``): that is one whole partition, found without an index.

    def __str__(self) -> str:
        return f"{self.year}/{self.module}/{self.det} {self.unit_id} {self.category}"



class Factor(models.Model):
    """kg CO2e per unit of activity, by natural key (year, module, det, category)."""

    year = models.IntegerField()
    module = models.CharField(max_length=40)
    det = models.CharField(max_length=60)
    category = models.CharField(max_length=200)
    kg_co2e_per_unit = models.FloatField()
    source = models.TextField(blank=True, default="")
    # Missing from the latest factors upload of the module-year: kept for the record,
    # not applied, and named in the year's incomplete reasons when data needs it.
    stale = models.BooleanField(default=False)
    upload_id = models.BigIntegerField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["year", "module", "det", "category"], name="factor_natural_key")
        ]

    def __str__(self) -> str:
        return f"{self.year}/{self.module}/{self.det}/{self.category} = {self.kg_co2e_per_unit}"



class RowError(models.Model):
    """Every row error of an ingest job (the job meta keeps only the first 1,000)."""

    job_id = models.BigIntegerField()
    row = models.BigIntegerField(null=True)
    column = models.CharField(max_length=200, blank=True, default="")
    reason = models.TextField()

    class Meta:
        indexes = [models.Index(fields=["job_id", "row"], name="rowerror_job_row")]

    def __str__(self) -> str:
        return f"job {self.job_id} row {self.row} {self.column}: {self.reason}"



class EmissionLine(models.Model):
    """Emissions of one unit x DET x category, recomputed per DET by ``emission_recalc``."""

    year = models.IntegerField()
    module = models.CharField(max_length=40)
    det = models.CharField(max_length=60)
    unit_id = models.CharField(max_length=40)
    category = models.CharField(max_length=200)
    activity = models.FloatField()
    rows = models.IntegerField()
    factor = models.FloatField(null=True)
    kg_co2e = models.FloatField(null=True)  # null: no (fresh) factor for this category
    pipeline_id = models.UUIDField(null=True)

    class Meta:
        indexes = [models.Index(fields=["year", "module", "det"], name="emission_scope")]

    def __str__(self) -> str:
        return f"{self.year}/{self.module}/{self.det} {self.unit_id} {self.category}"



class Total(models.Model):
    """kg CO2e per unit x module x year (``unit_id`` set) and per module x year (blank)."""

    year = models.IntegerField()
    module = models.CharField(max_length=40)
    unit_id = models.CharField(max_length=40, blank=True, default="")
    kg_co2e = models.FloatField()
    rows_without_factor = models.BigIntegerField(default=0)
    pipeline_id = models.UUIDField(null=True)
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["year", "module", "unit_id"], name="total_scope")]

    def __str__(self) -> str:
        return f"{self.year}/{self.module}/{self.unit_id or '*'} = {self.kg_co2e}"



class ModuleState(models.Model):
    """Version counters of one module-year, the basis of aggregation coalescing.

    Every effect that changes what the totals depend on (data replace, factor upsert,
    a recalc) bumps ``data_version``; an aggregation that finds ``totals_version``
    already equal has nothing to recompute (another pipeline's aggregation did it).
    """

    year = models.IntegerField()
    module = models.CharField(max_length=40)
    data_version = models.BigIntegerField(default=0)
    # Which ingest is applied: a job id only grows, so an ingest that reaches its
    # commit after a later-planned one (two uploads racing) does not overwrite it.
    data_job_id = models.BigIntegerField(null=True)
    data_upload_id = models.BigIntegerField(null=True)
    data_rows = models.BigIntegerField(default=0)
    factors_job_id = models.BigIntegerField(null=True)
    factors_upload_id = models.BigIntegerField(null=True)
    totals_version = models.BigIntegerField(default=0)
    totals_pipeline_id = models.UUIDField(null=True)
    totals_computed_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["year", "module"], name="module_state_scope")]

    def __str__(self) -> str:
        return f"{self.year}/{self.module} v{self.data_version}"


class SourceKind(models.TextChoices):
    UNIT_DIRECTORY = "unit_directory", _("unit directory")
    MODULE_DATA = "module_data", _("module data entries")
    MODULE_FACTORS = "module_factors", _("module emission factors")


class YearRule(models.TextChoices):
    CURRENT = "current_year", _("the current year")
    PREVIOUS = "previous_year", _("the previous year")
    FIXED = "fixed", _("a fixed year")


class Source(models.Model):
    """A named, recurring ingestion from an HTTP(S) endpoint or a file (issue 14).

    Each run is an ordinary pipeline (``source_fetch`` → the ingest or unit sync it
    feeds), recorded in ``SourceRun``. The schedule lives in a django-celery-beat
    ``PeriodicTask`` kept in step by ``ingestion.sources.services``; the secret for the
    auth header is never stored here, only the *name* of the setting that holds it.
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=SourceKind.choices)
    # http(s):// URL, or an absolute path under one of SLUICE_SOURCE_PATH_ROOTS.
    location = models.CharField(max_length=2000)
    # Key of settings.SLUICE_SOURCE_SECRETS (env SLUICE_SOURCE_SECRET_<NAME>): the header's value.
    auth_secret = models.CharField(max_length=100, blank=True, default="")
    auth_header = models.CharField(max_length=100, blank=True, default="Authorization")
    module = models.CharField(max_length=40, blank=True, default="")  # blank for the unit directory
    year_rule = models.CharField(max_length=20, choices=YearRule.choices, default=YearRule.CURRENT)
    year = models.IntegerField(null=True, blank=True)  # with year_rule "fixed"
    # Exactly one of the two: a 5-field cron expression (UTC) or an interval.
    cron = models.CharField(max_length=100, blank=True, default="")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Validators of the last stored response: sent as If-None-Match / If-Modified-Since,
    # and its sha256 compared, so an unchanged source is skipped instead of reloaded.
    etag = models.CharField(max_length=500, blank=True, default="")
    last_modified = models.CharField(max_length=100, blank=True, default="")
    last_sha256 = models.CharField(max_length=64, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def target(self) -> str:
        return {SourceKind.MODULE_DATA: "data_entries", SourceKind.MODULE_FACTORS: "factors"}.get(
            SourceKind(self.kind), "units"
        )


class SourceRun(models.Model):
    """One run of a source: its pipeline (the engine's record) and what started it."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="runs")
    pipeline = models.OneToOneField("pipelines.Pipeline", on_delete=models.CASCADE, related_name="+")
    trigger = models.CharField(max_length=20)  # "schedule" | "manual"
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["source", "-created_at"], name="sourcerun_newest")]

    def __str__(self) -> str:
        return f"{self.source_id} {self.trigger} {self.pipeline_id}"


class ExportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    XLSX = "xlsx", "XLSX"


class Export(models.Model):
    """A year's results written to a file by an ``export`` job (issue 15).

    The file is stored through Django's storage API (``default_storage``) under
    ``stored_name``; ``sha256``/``size``/``rows`` are filled in by the job when the
    file is complete (blank until then: the pipeline says how far it got).
    """

    year = models.ForeignKey(Year, verbose_name=_("year"), on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(verbose_name=_("format"), max_length=10, choices=ExportFormat.choices)
    pipeline = models.ForeignKey(
        "pipelines.Pipeline", verbose_name=_("pipeline"), null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    stored_name = models.CharField(verbose_name=_("stored name"), max_length=255, blank=True, default="")
    sha256 = models.CharField(verbose_name=_("sha256"), max_length=64, blank=True, default="")
    size = models.BigIntegerField(verbose_name=_("size"), null=True, blank=True)
    rows = models.BigIntegerField(verbose_name=_("rows"), null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("created by"), null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("export")
        verbose_name_plural = _("exports")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"export {self.pk} {self.year_id} {self.format}"

    @property
    def filename(self) -> str:
        """The name a download is saved under."""
        return f"sluice-{self.year_id}-results-{self.pk}.{self.format}"
