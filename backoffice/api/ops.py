"""Operations: job statistics, queues (pause/resume), workers, alerts."""

from __future__ import annotations

from typing import Any

import kombu.exceptions
from django.conf import settings
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice.api import selectors
from backoffice.api.base import ApiView
from backoffice.api.errors import error_responses
from backoffice.api.filters import StatsFilter
from backoffice.api.permissions import CanOperateAllModules, CanView
from backoffice.api.schema import declare_links, link
from backoffice.api.serializers import ControlInputSerializer, query_input
from pipelines import alerts, registry, services
from pipelines.models import Job
from workers.selectors import queue_list, worker_list


def _inspect_timeout() -> float:
    return settings.SLUICE_INSPECT_TIMEOUT


def _workers(*, strict: bool = False) -> list[Any]:
    """Live workers; with the broker down, none (the queue list) or a 503 (``strict``)."""
    try:
        return list(worker_list(timeout=_inspect_timeout()))
    except Exception as exc:
        if strict:
            # An empty list would claim every worker is gone: say the broker is
            # unreachable instead (config.middleware answers 503).
            raise kombu.exceptions.OperationalError(f"cannot ask the workers: {exc}") from exc
        return []


class JobStatsView(ApiView):
    class OutputSerializer(serializers.Serializer):
        total = serializers.IntegerField()
        by_state = serializers.DictField(child=serializers.IntegerField())
        by_result = serializers.DictField(child=serializers.IntegerField())
        by_job_type = serializers.DictField(child=serializers.IntegerField())
        by_queue = serializers.DictField(child=serializers.IntegerField())
        durations = serializers.DictField()
        throughput = serializers.DictField()

    # The document's parameters come from the same FilterSet that validates them.
    filterset_class = StatsFilter
    filter_backends = [DjangoFilterBackend]
    queryset = Job.objects.none()

    @extend_schema(responses={200: OutputSerializer, **error_responses(400)})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.job_stats(user=request.user, params=request.query_params)).data)


class QueueSerializer(serializers.Serializer):
    name = serializers.CharField()
    depth = serializers.IntegerField(allow_null=True, help_text="Messages waiting in Redis")
    queued_jobs = serializers.IntegerField(help_text="Jobs in state queued for this queue")
    oldest_waiting_seconds = serializers.FloatField(allow_null=True)
    running = serializers.IntegerField()
    paused = serializers.BooleanField()
    consumers = serializers.ListField(child=serializers.CharField())


class QueueListView(ApiView):
    @extend_schema(responses={200: QueueSerializer(many=True), **error_responses()})
    def get(self, request: Request) -> Response:
        return Response(QueueSerializer(queue_list(workers=_workers()), many=True).data)


class _QueueControl(ApiView):
    permission_classes = [CanView, CanOperateAllModules]
    paused = True

    @extend_schema(request=ControlInputSerializer, responses={202: QueueSerializer, **error_responses(400, 404, 409)})
    def post(self, request: Request, name: str) -> Response:
        data = ControlInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if name not in registry.queues():
            raise exceptions.NotFound(f"No such queue; known: {', '.join(registry.queues())}.")
        control = services.queue_pause if self.paused else services.queue_resume
        control(queue=name, actor=request.user, **data.validated_data)
        queue = next(q for q in queue_list(workers=[]) if q["name"] == name)
        return Response(QueueSerializer(queue).data, status=status.HTTP_202_ACCEPTED)


class QueuePauseView(_QueueControl):
    paused = True


class QueueResumeView(_QueueControl):
    paused = False


class WorkerSerializer(serializers.Serializer):
    hostname = serializers.CharField()
    queues = serializers.ListField(child=serializers.CharField())
    concurrency = serializers.IntegerField(allow_null=True)
    active = serializers.IntegerField()
    last_heartbeat = serializers.FloatField(
        allow_null=True, help_text="Unix time of the worker's last heartbeat (SLUICE_WORKER_HEARTBEAT_SECONDS)"
    )
    version = serializers.CharField(allow_blank=True, help_text="Sluice version the worker runs (package+git sha)")


class WorkerListView(ApiView):
    @extend_schema(responses={200: WorkerSerializer(many=True), **error_responses(503)})
    def get(self, request: Request) -> Response:
        return Response(WorkerSerializer(_workers(strict=True), many=True).data)


class AlertItemSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=alerts.ALERT_KINDS)
    pipeline_id = serializers.UUIDField()
    job_id = serializers.IntegerField()
    job_type = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)
    module = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)


class AlertListView(ApiView):
    permission_classes = [CanView]

    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=alerts.ALERT_KINDS, required=False)

    class OutputSerializer(serializers.Serializer):
        counts = serializers.DictField(child=serializers.IntegerField())
        total = serializers.IntegerField()
        items = AlertItemSerializer(many=True)

    @extend_schema(parameters=[InputSerializer], responses={200: OutputSerializer, **error_responses(400)})
    def get(self, request: Request) -> Response:
        kind = query_input(self.InputSerializer, request).get("kind")
        summary = alerts.alert_summary(
            jobs=selectors.jobs_visible(user=request.user), kinds=[kind] if kind else alerts.ALERT_KINDS
        )
        return Response(self.OutputSerializer(summary).data)


# --- OpenAPI links: a listed queue can be paused, a paused one resumed
declare_links("v1_queues_list", 200, {
    "PauseQueue": link("v1_queues_pause_create", "Pause the first queue", name="$response.body#/0/name"),
})
declare_links("v1_queues_pause_create", 202, {
    "ResumeQueue": link("v1_queues_resume_create", "Resume it", name="$response.body#/name"),
})
