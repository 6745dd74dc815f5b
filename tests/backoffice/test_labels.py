"""Every code the platform writes has a label, so the console, the action log and the
admin never show a raw code (``create_source``, ``source_fetch``) or, in French, English."""

from __future__ import annotations

from django.utils import translation

from backoffice import labels
from ingestion.sources import services as sources
from pipelines import registry, retention
from pipelines.models import OperatorActionKind


def test_every_action_job_type_and_pipeline_kind_has_a_label() -> None:
    assert set(OperatorActionKind.values) - set(labels.ACTIONS) == set()
    # (the test suite registers job types of its own: not the platform's)
    platform = {t for t in registry.registered_job_types()
                if not registry.get_handler(t).func.__module__.startswith("tests.")}
    assert platform - set(labels.JOB_TYPES) == set()
    assert {sources.PIPELINE_KIND, retention.PURGE_PIPELINE_KIND} - set(labels.KINDS) == set()
    assert {"source", "history"} - set(labels.TARGET_TYPES) == set()  # sources' and the purge's records


def test_the_new_labels_read_in_french() -> None:
    with translation.override("fr"):
        assert labels.action("create_source") == "création de source"
        assert labels.job_type(sources.FETCH_JOB) == "récupération de source"
        assert labels.kind(retention.PURGE_PIPELINE_KIND) == "purge de rétention"
