"""Output shapes shared by the pipeline and job views (and their OpenAPI schema).

List items and live events use the same small job dict (``events.job_dict``): an
allow-listed ``counts`` instead of the raw meta, which may hold thousands of row errors.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers
from rest_framework.settings import api_settings

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
    status_key = serializers.CharField(
        allow_blank=True, help_text="The message's English gettext msgid (empty: plain text); the admin pages "
        "and WebSocket feeds render it with status_params in the reader's language.")
    status_params = serializers.DictField(help_text="Parameters of status_key (a value may be a nested "
                                          "{key, params} message).")
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


# --- live messages (SSE frames and WebSocket messages) -------------------------------------
# Not returned by a DRF view: ``backoffice.api.schema.add_live_components`` registers them
# as components, the SSE operation and docs/LIVE.md point at them, and the tests validate
# every event they receive against them.


class JobUpdateEventSerializer(EventSerializer):
    """A job changed (``kind``: state, progress, message, …): the job and its pipeline as they are now."""

    type = serializers.ChoiceField(choices=["job.update"])
    job = JobSummarySerializer()


class PipelineUpdateEventSerializer(EventSerializer):
    """The pipeline changed on its own (finished, cancelled, superseded…); ``job`` is null."""

    type = serializers.ChoiceField(choices=["pipeline.update"])


LIVE_EVENTS: dict[str, Any] = {"job.update": JobUpdateEventSerializer, "pipeline.update": PipelineUpdateEventSerializer}


class SnapshotPipelineSerializer(PipelineStateSerializer):
    pipeline_seq = serializers.IntegerField(help_text="Apply an event only if its pipeline_seq is newer.")


class SnapshotJobSerializer(JobSummarySerializer):
    pipeline_id = serializers.UUIDField()


class YearRowSerializer(serializers.Serializer):
    module = serializers.CharField(allow_blank=True)
    kind = serializers.CharField()
    active = serializers.UUIDField(allow_null=True)
    latest = serializers.UUIDField(allow_null=True)


class SnapshotMessageSerializer(serializers.Serializer):
    """The whole state of a feed, current to ``seq``: replace what you hold, then apply events after it."""

    type = serializers.ChoiceField(choices=["snapshot"])
    feed = serializers.ChoiceField(choices=["console", "pipeline", "year"])
    seq = serializers.IntegerField()
    pipelines = SnapshotPipelineSerializer(many=True)
    jobs = SnapshotJobSerializer(many=True)
    edges = EdgeSerializer(many=True, required=False, help_text="feed=pipeline only")
    year = serializers.IntegerField(required=False, help_text="feed=year only")
    rows = YearRowSerializer(many=True, required=False, help_text="feed=year only")


class ReplayedMessageSerializer(serializers.Serializer):
    """The stored events after ``?after=`` were sent (``count`` of them); live events follow."""

    type = serializers.ChoiceField(choices=["replayed"])
    seq = serializers.IntegerField()
    count = serializers.IntegerField()


WEBSOCKET_MESSAGES: dict[str, Any] = {
    **LIVE_EVENTS, "snapshot": SnapshotMessageSerializer, "replayed": ReplayedMessageSerializer,
}


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


# JSON types each input field takes as is. DRF also coerces ``0``→false, ``1``→"1" and
# ``"5"``→5; the document says boolean, string, integer, so those are 400s (issue 18).
_JSON_TYPES: tuple[tuple[type[serializers.Field], tuple[type, ...]], ...] = (
    (serializers.BooleanField, (bool,)),
    (serializers.IntegerField, (int,)),
    (serializers.FloatField, (int, float)),
    (serializers.CharField, (str,)),
    (serializers.ChoiceField, (str,)),
)


def _json_type_error(field: serializers.Field, value: Any) -> str | None:
    for field_class, types in _JSON_TYPES:
        if isinstance(field, field_class):
            if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
                return None
            if value is None and field.allow_null:
                return None
            return f"Expected {'a boolean' if bool in types else 'a string' if str in types else 'a number'}."
    return None


class JsonInputSerializer(serializers.Serializer):
    """A JSON request body, validated exactly as the OpenAPI document describes it.

    Every value has the JSON type its field documents (no coercion). Object rules are
    class attributes read by both the validation and this OpenAPI document:
    ``reject_unknown_keys`` — a key the serializer does not declare is a 400 naming it
    (``additionalProperties: false``), so a typo is never silently dropped;
    ``min_properties`` — at least that many keys (``minProperties``).
    """

    reject_unknown_keys = False
    min_properties = 0

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            errors: dict[str, list[str]] = {}
            for key, value in data.items():
                field = self.fields.get(key)
                if field is None:
                    if self.reject_unknown_keys:
                        errors[key] = [f"Unknown key; known: {', '.join(self.fields)}."]
                elif (message := _json_type_error(field, value)) is not None:
                    errors[key] = [message]
            if errors:
                raise serializers.ValidationError(errors, "invalid")
            if len(data) < self.min_properties:
                raise serializers.ValidationError(
                    {api_settings.NON_FIELD_ERRORS_KEY: [
                        f"Give at least {self.min_properties} of: {', '.join(self.fields)}."
                    ]}, "empty",
                )
        return super().to_internal_value(data)


class StrictObjectSerializer(JsonInputSerializer):
    """A JSON object whose every key is known."""

    reject_unknown_keys = True


class ControlInputSerializer(JsonInputSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)


INTEGER = re.compile(r"-?[0-9]+")  # an integer query parameter, as the document types it


def query_input(serializer_class: type[serializers.Serializer], request: Any) -> dict[str, Any]:
    """Validate query parameters with ``serializer_class``; a 400 names the bad one.

    A plain dict, not the QueryDict: DRF reads ``?unit=`` from a QueryDict as "not
    given", while the document (``minLength: 1``, an enum) calls it invalid (issue 18).
    """
    params = request.query_params.dict()
    serializer = serializer_class(data=params)
    # An integer is digits: DRF would also read ``1.0`` (and `` 1``) as 1, a number the
    # document's ``type: integer`` refuses (found by schemathesis, issue 18).
    not_integers = {
        name: ["A valid integer is required."] for name, field in serializer.fields.items()
        if isinstance(field, serializers.IntegerField) and name in params and not INTEGER.fullmatch(params[name])
    }
    if not_integers:
        raise serializers.ValidationError(not_integers, "invalid")
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
