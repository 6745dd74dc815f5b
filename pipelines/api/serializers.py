"""Output shapes shared by the pipeline and job views (and their OpenAPI schema).

List items and live events use the same small job dict (``events.job_dict``): an
allow-listed ``counts`` instead of the raw meta, which may hold thousands of row errors.
"""

from __future__ import annotations

from rest_framework import serializers

from pipelines.models import JobResult, JobState, PipelineStatus


class ProgressSerializer(serializers.Serializer):
    processed = serializers.IntegerField()
    total = serializers.IntegerField(allow_null=True)
    percent = serializers.FloatField(allow_null=True)
    phase = serializers.CharField(allow_blank=True)


class JobSummarySerializer(serializers.Serializer):
    """Exactly ``pipelines.events.job_dict``."""

    id = serializers.IntegerField()
    job_type = serializers.CharField()
    det = serializers.CharField(allow_blank=True)
    queue = serializers.CharField()
    state = serializers.ChoiceField(choices=JobState.choices)
    result = serializers.ChoiceField(choices=JobResult.choices, allow_null=True)
    status_message = serializers.CharField(allow_blank=True)
    progress = ProgressSerializer()
    counts = serializers.DictField(help_text="Allow-listed count keys of the job's meta.")
    attempts = serializers.IntegerField()


class PipelineStateSerializer(serializers.Serializer):
    """Exactly ``pipelines.events.pipeline_dict``."""

    id = serializers.UUIDField()
    kind = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)
    module = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=PipelineStatus.choices)
    progress = ProgressSerializer()
    jobs_total = serializers.IntegerField()
    jobs_finished = serializers.IntegerField()
    error_count = serializers.IntegerField()


class PipelineItemSerializer(PipelineStateSerializer):
    warning_count = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    jobs = JobSummarySerializer(many=True)


class EdgeSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    depends_on = serializers.IntegerField()


class PipelineDetailSerializer(PipelineItemSerializer):
    params = serializers.DictField()
    edges = EdgeSerializer(many=True)
    seq = serializers.IntegerField(help_text="Last event seq of this pipeline: replay/stream from here.")
    pipeline_seq = serializers.IntegerField()


class EventSerializer(serializers.Serializer):
    """One event: the stored payload, the same object WebSocket and SSE clients receive."""

    type = serializers.ChoiceField(choices=["job.update", "pipeline.update"])
    seq = serializers.IntegerField()
    pipeline_seq = serializers.IntegerField()
    pipeline_id = serializers.UUIDField()
    kind = serializers.CharField()
    job = JobSummarySerializer(allow_null=True)
    pipeline = PipelineStateSerializer()


class JobErrorSerializer(serializers.Serializer):
    type = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
    traceback = serializers.CharField(allow_blank=True)
    stage = serializers.CharField(allow_blank=True)


class JobListItemSerializer(JobSummarySerializer):
    pipeline_id = serializers.UUIDField()
    year = serializers.IntegerField(allow_null=True)
    module = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class JobDetailSerializer(JobListItemSerializer):
    depends_on = serializers.ListField(child=serializers.IntegerField())
    params = serializers.DictField()
    meta = serializers.DictField(help_text="The full meta: counts, stats and the first row errors.")
    error = JobErrorSerializer(allow_null=True)
    max_attempts = serializers.IntegerField()
    celery_task_id = serializers.CharField(allow_blank=True)
    worker = serializers.CharField(allow_blank=True)
    heartbeat_at = serializers.DateTimeField(allow_null=True)
    cancel_requested = serializers.BooleanField()
    queued_at = serializers.DateTimeField(allow_null=True)


class AcceptedSerializer(serializers.Serializer):
    """The answer to a control: it was accepted; follow the pipeline for the effect."""

    pipeline = PipelineStateSerializer()
    job = JobSummarySerializer(allow_null=True, required=False)


class ControlInputSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)
