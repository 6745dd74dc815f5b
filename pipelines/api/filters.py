"""django-filter filter sets for the pipelines and jobs lists."""

from __future__ import annotations

import re
import uuid
from datetime import UTC
from typing import Any

import django_filters
from django.db.models import Q, QuerySet
from rest_framework.exceptions import ValidationError

from pipelines import alerts
from pipelines.models import Job, JobResult, JobState, Pipeline, PipelineStatus

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
                raise ValidationError({self.field_name: ["Date out of range."]}, "invalid")
        return super().filter(qs, value)


class PipelineFilter(django_filters.FilterSet):
    year = django_filters.NumberFilter()
    module = django_filters.CharFilter()
    kind = django_filters.CharFilter()
    status = django_filters.ChoiceFilter(choices=PipelineStatus.choices)
    has_errors = django_filters.BooleanFilter(method="filter_has_errors", label="Has at least one failed job")
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

    def filter_has_errors(self, queryset: QuerySet[Pipeline], name: str, value: bool | None) -> QuerySet[Pipeline]:
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


class JobFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=JobState.choices)
    result = django_filters.ChoiceFilter(choices=JobResult.choices)
    job_type = django_filters.CharFilter()
    queue = django_filters.CharFilter()
    year = django_filters.NumberFilter(field_name="pipeline__year")
    module = django_filters.CharFilter(field_name="pipeline__module")
    pipeline = django_filters.UUIDFilter(field_name="pipeline_id")
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields: list[str] = []


class StatsFilter(django_filters.FilterSet):
    """Narrows ``/jobs/stats/`` the same way as the jobs list."""

    year = django_filters.NumberFilter(field_name="pipeline__year")
    module = django_filters.CharFilter(field_name="pipeline__module")
    job_type = django_filters.CharFilter()
    queue = django_filters.CharFilter()
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields: list[str] = []


def filtered(filterset_class: Any, data: Any, queryset: QuerySet[Any]) -> QuerySet[Any]:
    """Apply a filter set; invalid filter values are a 400 (not silently ignored)."""
    fs = filterset_class(data=data, queryset=queryset)
    if not fs.is_valid():
        raise ValidationError(fs.errors)
    return fs.qs
