"""Words people read for the engine's codes: states, results, kinds, job types, phases.

The engine stores codes (``running``, ``csv_ingest``) and English phase words
(``validating``, ``computing fte``): stable for the API and logs. The back-office pages
show them through these maps, in the active language, server-side (template filters
``sluice``), in the live feeds (``backoffice.live`` re-renders phases per socket) and in
the pages' scripts (``js_labels``). An unknown code shows as is.
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.translation import gettext, gettext_lazy, gettext_noop, pgettext

from ingestion.modules import MODULES

STATES = {
    "not_started": gettext_noop("waiting"), "queued": gettext_noop("queued"), "running": gettext_noop("running"),
    "finished": gettext_noop("done"),
}
RESULTS = {
    "success": gettext_noop("success"), "warning": gettext_noop("warning"), "error": gettext_noop("error"),
    "cancelled": gettext_noop("cancelled"), "skipped": gettext_noop("skipped"),
}
STATUSES = {
    "not_started": gettext_noop("waiting"), "running": gettext_noop("running"), "success": gettext_noop("success"),
    "partial": gettext_noop("partial"), "failed": gettext_noop("failed"), "cancelled": gettext_noop("cancelled"),
    "superseded": gettext_noop("superseded"),
}
# The console's status filter (lazy: the form is built at import, read per request).
STATUS_CHOICES = [(k, gettext_lazy(v)) for k, v in STATUSES.items()]
ACTIONS = {
    "cancel": gettext_noop("cancel"), "retry": gettext_noop("retry"), "recover": gettext_noop("recover"),
    "pause": gettext_noop("pause"), "resume": gettext_noop("resume"), "open_year": gettext_noop("open year"),
    "close_year": gettext_noop("close year"), "create_year": gettext_noop("create year"),
    "configure_year": gettext_noop("configure year"), "upload": gettext_noop("upload"),
    "start_pipeline": gettext_noop("start pipeline"), "issue_token": gettext_noop("issue token"),
    "revoke_token": gettext_noop("revoke token"), "create_source": gettext_noop("create source"),
    "update_source": gettext_noop("update source"), "delete_source": gettext_noop("delete source"),
    "purge": gettext_noop("purge"),
}
TARGET_TYPES = {"pipeline": gettext_noop("pipeline"), "job": gettext_noop("job"), "queue": gettext_noop("queue"),
                "year": gettext_noop("year"), "upload": gettext_noop("upload"), "user": gettext_noop("user"),
                "source": gettext_noop("source"), "history": gettext_noop("history")}
EVENT_KINDS = {"state": gettext_noop("state"), "progress": gettext_noop("progress"),
               "message": gettext_noop("message"), "created": gettext_noop("created")}
KINDS = {
    "upload": gettext_noop("upload"), "rerun": gettext_noop("run again"), "recalculate": gettext_noop("recalculation"),
    "unit_sync": gettext_noop("unit sync"), "noop": gettext_noop("no-op"), "source": gettext_noop("scheduled source"),
    "retention": gettext_noop("retention purge"), "export": gettext_noop("export"),
    "validation": gettext_noop("validation"),
}
JOB_TYPES = {
    "csv_ingest": gettext_noop("data entries ingest"), "factor_ingest": gettext_noop("factors ingest"),
    "emission_recalc": gettext_noop("recalculation"), "aggregation": gettext_noop("totals"),
    "unit_sync": gettext_noop("unit sync"), "noop": gettext_noop("no-op"),
    "source_fetch": gettext_noop("source fetch"), "retention_purge": gettext_noop("retention purge"),
    "export": gettext_noop("export"), "validate_year": gettext_noop("year validation"),
}
# Phases handlers report (ingestion.services, pipelines.builtin_handlers) and the
# pipeline labels ``pipelines.dag.pipeline_progress`` derives from them.
PHASES = {
    "loading": gettext_noop("loading"), "validating": gettext_noop("validating"),
    "applying": gettext_noop("applying"), "aggregating": gettext_noop("aggregating"),
    "fetch": gettext_noop("fetching units"), "upsert units": gettext_noop("saving units"),
    "create reports": gettext_noop("creating reports"), "ensure modules": gettext_noop("adding report modules"),
    "sleeping": gettext_noop("sleeping"), "done": gettext_noop("done"),
    "writing": gettext_noop("writing rows"), "storing": gettext_noop("storing the file"),
    "checking modules": gettext_noop("checking modules"), "checking factors": gettext_noop("checking factors"),
    "checking reports": gettext_noop("checking reports"), "checking totals": gettext_noop("checking totals"),
    "recomputing a sample": gettext_noop("recomputing a sample"),
    "waiting for a worker": gettext_noop("waiting for a worker"), "not started": gettext_noop("not started"),
}
_COMPUTING = re.compile(r"^computing (?P<det>.+)$")
_SUPERSEDED = re.compile(r"^superseded by (?P<winner>.+)$")
# "<job_type>[ <det>][ (+N more)][: <phase>]" (pipelines.dag.pipeline_progress)
_RUNNING = re.compile(r"^(?P<type>[a-z_]+)(?: (?P<det>[^\s:(]+))?(?: \(\+(?P<more>\d+) more\))?(?:: (?P<phase>.+))?$")


def _word(table: dict[str, str], code: Any) -> str:
    if code is None or code == "":
        return ""
    word = table.get(str(code))
    return gettext(word) if word else str(code)


def state(code: Any) -> str:
    return _word(STATES, code)


def result(code: Any) -> str:
    return _word(RESULTS, code)


def status(code: Any) -> str:
    return _word(STATUSES, code)


def kind(code: Any) -> str:
    return _word(KINDS, code)


def job_type(code: Any) -> str:
    return _word(JOB_TYPES, code)


def action(code: Any) -> str:
    return _word(ACTIONS, code)


def target_type(code: Any) -> str:
    return _word(TARGET_TYPES, code)


def event_kind(code: Any) -> str:
    return _word(EVENT_KINDS, code)


def module(code: Any) -> str:
    """A module key as its label (the modules registry's ``gettext_noop`` labels)."""
    mod = MODULES.get(str(code)) if code else None
    return gettext(mod.label) if mod else str(code or "")


def job_look(job: Any) -> str:
    """The one word a job's chip says: its result once finished, else its state."""
    get = job.get if isinstance(job, dict) else lambda k: getattr(job, k, None)
    return result(get("result")) if get("result") else state(get("state"))


def phase(text: Any) -> str:
    """A job's or pipeline's phase in the active language."""
    if not text:
        return ""
    text = str(text)
    if text in PHASES:
        return gettext(PHASES[text])
    if m := _COMPUTING.match(text):
        return gettext("computing %(det)s") % {"det": m["det"]}
    if m := _SUPERSEDED.match(text):
        return gettext("superseded by %(winner)s") % {"winner": m["winner"]}
    m = _RUNNING.match(text)
    if m and m["type"] in JOB_TYPES:
        out = job_type(m["type"]) + (f" {m['det']}" if m["det"] else "")
        if m["more"]:
            out += " " + pgettext("more jobs running", "(+%(n)s more)") % {"n": m["more"]}
        if m["phase"]:
            out += pgettext("job: phase", ": %(phase)s") % {"phase": phase(m["phase"])}
        return out
    return text


def localize_phases(data: dict[str, Any]) -> None:
    """In a (copied) event dict: the ``progress`` phase in the active language."""
    progress = data.get("progress")
    if isinstance(progress, dict) and progress.get("phase"):
        data["progress"] = {**progress, "phase": phase(progress["phase"])}


def js_labels() -> dict[str, dict[str, str]]:
    """The maps the pages' scripts use for codes arriving live (already translated)."""
    return {
        "state": {k: gettext(v) for k, v in STATES.items()},
        "result": {k: gettext(v) for k, v in RESULTS.items()},
        "status": {k: gettext(v) for k, v in STATUSES.items()},
        "kind": {k: gettext(v) for k, v in KINDS.items()},
        "job_type": {k: gettext(v) for k, v in JOB_TYPES.items()},
        "module": {k: gettext(m.label) for k, m in MODULES.items()},
    }
