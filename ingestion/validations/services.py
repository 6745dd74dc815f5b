"""Year validation runs (issue 15): start one (a ``validation`` pipeline of one
``validate_year`` job) and the job's body, which runs the checks of
``ingestion.validations.checks`` and stores their findings in the job's meta.

The findings live with the job (``meta.findings``, at most ``FINDINGS_KEPT``, the counts
always exact): they are the pipeline's record like any job's meta, purged with it by
retention. The "Open year" gate reads the latest completed validation of the year
(``ingestion.selectors`` ``latest_validation``).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.translation import gettext_noop

from ingestion.job_types import VALIDATE_YEAR, VALIDATION_KIND
from ingestion.models import Year
from ingestion.validations import checks
from ingestion.validations.checks import ERROR, INFO, WARNING, Finding
from pipelines.context import JobContext
from pipelines.messages import Message, msg
from pipelines.models import JobResult, OperatorActionKind, Pipeline
from pipelines.registry import Outcome
from pipelines.services import JobSpec, operator_action_record, pipeline_plan

FINDINGS_KEPT = 200


def validation_start(*, year: int, actor: Any) -> Pipeline:
    """Plan a validation of ``year``; raises ``Year.DoesNotExist``."""
    Year.objects.get(pk=year)
    with transaction.atomic():
        pipeline = pipeline_plan(
            kind=VALIDATION_KIND, specs=[JobSpec(key="validate", job_type=VALIDATE_YEAR.name)], year=year,
            created_by=actor,
        )
        operator_action_record(
            actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="pipeline",
            target_id=str(pipeline.pk), pipeline=pipeline, detail={"kind": VALIDATION_KIND, "year": year},
        )
    return pipeline


def _summary(counts: dict[str, int], first: Finding | None) -> Message:
    text = msg(gettext_noop("errors: %(errors)s, warnings: %(warnings)s, notes: %(infos)s"),
               errors=counts[ERROR], warnings=counts[WARNING], infos=counts[INFO])
    if first is None:
        return msg(gettext_noop("Year checked: %(counts)s"), counts=text)
    return msg(gettext_noop("Year checked: %(counts)s — first: %(first)s"), counts=text, first=first.message)


def validation_run(*, ctx: JobContext) -> Outcome:
    """Run every check in order, with a percentage of checks done; nothing is written.

    Result: ``warning`` when a check found an error or a warning (the run itself worked:
    the findings say what is wrong), ``success`` otherwise.
    """
    assert ctx.year is not None
    year = Year.objects.get(pk=ctx.year)
    # (stage, phase shown while it runs, check); phases are worded in backoffice.labels.
    steps = [
        ("modules_complete", "checking modules", checks.modules_complete),
        ("stale_factors", "checking factors", checks.stale_factors),
        ("units_without_report", "checking reports", checks.units_without_report),
        ("emissions_sample", "recomputing a sample", None),
        ("totals_add_up", "checking totals", checks.totals_add_up),
    ]
    findings: list[Finding] = []
    sampled = 0
    for done, (name, phase, check) in enumerate(steps):
        ctx.checkpoint()
        ctx.set_stage(name)
        ctx.progress(done, len(steps), phase=phase, force=True)
        if check is None:
            found, sampled = checks.emissions_sample(year)
            findings += found
        else:
            findings += check(year)
    findings.append(Finding(INFO, "summary", msg(
        gettext_noop("Checked %(modules)s enabled modules and %(lines)s sampled emission lines"),
        modules=len(year.enabled_modules), lines=sampled)))
    counts = {s: sum(1 for f in findings if f.severity == s) for s in (ERROR, WARNING, INFO)}
    first = next((f for f in findings if f.severity == ERROR), None) or next(
        (f for f in findings if f.severity == WARNING), None)
    meta = {
        "findings_error": counts[ERROR], "findings_warning": counts[WARNING], "findings_info": counts[INFO],
        "lines_sampled": sampled, "findings": [f.as_dict() for f in findings[:FINDINGS_KEPT]],
    }
    ctx.progress(len(steps), len(steps), phase="done", force=True)
    result = JobResult.WARNING if counts[ERROR] or counts[WARNING] else JobResult.SUCCESS
    return Outcome(result, _summary(counts, first), meta)
