"""django-filter filter sets for the pipelines and jobs lists.

One declaration serves both the OpenAPI document (drf-spectacular reads these filters)
and the validation: a value the document calls invalid is a 400 naming the parameter,
a value it calls valid is accepted (issue 18).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework.exceptions import ValidationError

from backoffice.api.serializers import INTEGER
from pipelines import alerts
from pipelines.models import Job, JobResult, JobState, Pipeline, PipelineStatus
from pipelines.years import YEAR_FILTER_MAX, YEAR_FILTER_MIN

SHORT_ID = re.compile(r"[0-9a-fA-F]{4,8}(-[0-9a-fA-F-]{0,27})?")


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """ISO 8601 datetime, normalised to UTC before it reaches PostgreSQL.

    PostgreSQL refuses offsets beyond ±15:59 that Python accepts (``+21:53``): without
    this a legal-looking ``?until=`` would be a 500 instead of a 400.
    """

    def filter(self, qs: QuerySet[Any], value: Any) -> QuerySet[Any]:
        if value is not None:
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                # A valid RFC 3339 instant just outside Python's range (0001-01-01T00:00+05:00):
                # it lies before (or after) every stored row, so the bound keeps its meaning.
                value = datetime.min.replace(tzinfo=UTC) if value.year == 1 else datetime.max.replace(tzinfo=UTC)
        return super().filter(qs, value)


class StrictIntegerField(forms.IntegerField):
    """Digits only: Django also reads ``2025.0`` as 2025, which ``type: integer`` refuses."""

    def to_python(self, value: Any) -> int | None:
        if isinstance(value, str) and value not in self.empty_values and not INTEGER.fullmatch(value):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


@extend_schema_field({"type": "integer", "minimum": YEAR_FILTER_MIN, "maximum": YEAR_FILTER_MAX})
class YearFilter(django_filters.NumberFilter):
    """An integer year: ``?year=0.5`` is a 400, not a filter on 0.5."""

    field_class = StrictIntegerField

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(min_value=YEAR_FILTER_MIN, max_value=YEAR_FILTER_MAX, **kwargs)


class StrictBooleanField(forms.NullBooleanField):
    """``true``/``false`` (also ``1``/``0``); anything else is an error, not "no filter"."""

    TRUE, FALSE = ("true", "True", "1"), ("false", "False", "0")
    widget = forms.TextInput  # the select widget maps unknown text to None before validation

    def to_python(self, value: Any) -> bool | None:  # type: ignore[override]  # None: not given
        if value in (None, ""):
            return None
        if value in self.TRUE or value is True:
            return True
        if value in self.FALSE or value is False:
            return False
        raise forms.ValidationError("Must be true or false.", code="invalid")

    def validate(self, value: Any) -> None:
        pass


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


class StrictFilterSet(django_filters.FilterSet):
    """A filter set whose typed parameters refuse an empty value.

    django-filter reads ``?year=`` as "no filter"; the document says an integer (enum,
    date-time, boolean, uuid), and an empty string is none of those. Text filters keep
    accepting ``''`` (a string), which means no filter.
    """

    def is_valid(self) -> bool:
        valid = super().is_valid()
        for name, flt in self.filters.items():
            if isinstance(flt, django_filters.CharFilter) and not isinstance(flt, django_filters.ChoiceFilter):
                continue
            if self.data.get(name) == "":
                self.form.add_error(name, "This field may not be blank.")
                valid = False
        return valid


class PipelineFilter(StrictFilterSet):
    year = YearFilter()
    module = django_filters.CharFilter()
    kind = django_filters.CharFilter()
    status = django_filters.ChoiceFilter(choices=PipelineStatus.choices)
    has_errors = StrictBooleanFilter(method="filter_has_errors", label="Has at least one failed job")
    alert = django_filters.ChoiceFilter(
        choices=[(k, k) for k in alerts.ALERT_KINDS], method="filter_alert", label="Has a job with this alert"
    )
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")
    q = django_filters.CharFilter(
        method="filter_q", label="Search: a pipeline id or its first characters, or text in kind/module/phase/error"
    )

    class Meta:
        model = Pipeline
        fields: list[str] = []

    # ``value: bool``: drf-spectacular documents the parameter from this hint.
    def filter_has_errors(self, queryset: QuerySet[Pipeline], name: str, value: bool) -> QuerySet[Pipeline]:
        if value is None:
            return queryset
        return queryset.filter(error_count__gt=0) if value else queryset.filter(error_count=0)

    def filter_alert(self, queryset: QuerySet[Pipeline], name: str, value: str) -> QuerySet[Pipeline]:
        return queryset.filter(pk__in=alerts.pipelines_with_alert(value)) if value else queryset

    def filter_q(self, queryset: QuerySet[Pipeline], name: str, value: str) -> QuerySet[Pipeline]:
        value = value.strip()
        if not value:
            return queryset
        try:
            return queryset.filter(pk=uuid.UUID(value))
        except ValueError:
            pass
        text = Q(kind__icontains=value) | Q(module__icontains=value) | Q(phase__icontains=value)
        text |= Q(last_error__icontains=value)
        if SHORT_ID.fullmatch(value):
            # The short id the console shows (the UUID's first characters).
            text |= Q(id__startswith=value.lower())
        if value.isdigit() and len(value) == 4:
            text |= Q(year=int(value))
        return queryset.filter(text)


class JobFilter(StrictFilterSet):
    state = django_filters.ChoiceFilter(choices=JobState.choices)
    result = django_filters.ChoiceFilter(choices=JobResult.choices)
    job_type = django_filters.CharFilter()
    queue = django_filters.CharFilter()
    year = YearFilter(field_name="pipeline__year")
    module = django_filters.CharFilter(field_name="pipeline__module")
    pipeline = django_filters.UUIDFilter(field_name="pipeline_id")
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields: list[str] = []


class StatsFilter(StrictFilterSet):
    """Narrows ``/jobs/stats/`` the same way as the jobs list."""

    year = YearFilter(field_name="pipeline__year")
    module = django_filters.CharFilter(field_name="pipeline__module")
    job_type = django_filters.CharFilter()
    queue = django_filters.CharFilter()
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields: list[str] = []


def validated(filterset_class: Any, data: Any, queryset: QuerySet[Any]) -> Any:
    """A bound filter set whose values are valid; invalid filter values are a 400 (not silently ignored)."""
    fs = filterset_class(data=data, queryset=queryset)
    if not fs.is_valid():
        raise ValidationError(fs.errors)
    return fs
