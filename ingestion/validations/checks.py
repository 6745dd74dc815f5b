"""The checks of a year validation (issue 15), read-only: each returns findings.

A finding has a severity (``error``: the year should not open; ``warning``: worth a
look; ``info``: what was checked), the check that made it, the module it is about
(blank: year-wide) and a message stored as a translation key plus parameters, so the
console and the Data management page show it in the reader's language.

Nothing here writes: the checks read the data the pipelines wrote and recompute a
sample of it independently (``emissions_sample``), so a validation can run while
uploads run, and never changes what it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.utils.translation import gettext_noop

from ingestion.models import Factor, Unit, Year
from ingestion.modules import MODULES
from ingestion.selectors import module_incomplete_reasons
from pipelines.messages import Message, msg

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)
# Emission lines recomputed from the data entries per validation (a random sample).
SAMPLE_LINES = 500
# Relative tolerance of a float comparison (sums of products in another order).
TOLERANCE = 1e-6
NAMED = 5


@dataclass(frozen=True)
class Finding:
    severity: str
    check: str
    message: Message
    module: str = ""
    # Machine-readable specifics (ids, amounts) for API clients.
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "check": self.check, "module": self.module,
                "message": str(self.message), "message_i18n": self.message.as_json(), "detail": self.detail}


def _label(module: str) -> Message | str:
    return msg(MODULES[module].label) if module in MODULES else module


def _names(items: list[str], total: int) -> str:
    more = f" (+{total - NAMED})" if total > NAMED else ""
    return ", ".join(items[:NAMED]) + more


def _differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(a - b) > TOLERANCE * max(abs(a), abs(b), 1.0)


def modules_complete(year: Year) -> list[Finding]:
    """Every enabled module has its data, its factors and current totals."""
    out = []
    if not year.enabled_modules:
        out.append(Finding(ERROR, "modules_complete", msg(gettext_noop("No module is enabled for this year"))))
    for module in year.enabled_modules:
        for reason in module_incomplete_reasons(year=year.year, module=module):
            out.append(Finding(ERROR, "modules_complete", msg(gettext_noop("%(module)s is incomplete: %(reason)s"),
                                                              module=_label(module), reason=reason), module))
    return out


def stale_factors(year: Year) -> list[Finding]:
    """Factors absent from their module's latest factors file (kept, not applied)."""
    out = []
    for module in year.enabled_modules:
        keys = list(Factor.objects.filter(year=year.year, module=module, stale=True).order_by("det", "category")
                    .values_list("det", "category"))
        if keys:
            named = _names([f"{d}/{c}" for d, c in keys], len(keys))
            out.append(Finding(WARNING, "stale_factors", msg(
                gettext_noop("%(module)s: %(n)s stale factor(s), not applied: %(keys)s"), module=_label(module),
                n=len(keys), keys=named), module, {"stale": len(keys)}))
    return out


def units_without_report(year: Year) -> list[Finding]:
    """Every active unit of the directory has a report for the year (the unit sync made them)."""
    if year.configured_at is None:
        return [Finding(ERROR, "units_without_report", msg(gettext_noop("The year's units were never synced")))]
    missing = list(Unit.objects.filter(active=True).exclude(reports__year=year).order_by("unit_id")
                   .values_list("unit_id", flat=True))
    if not missing:
        return []
    return [Finding(ERROR, "units_without_report", msg(
        gettext_noop("%(n)s active unit(s) without a report for the year: %(units)s; run the unit sync again"),
        n=len(missing), units=_names(missing, len(missing))), detail={"units": missing[:100]})]


_SAMPLE_SQL = """
    WITH sample AS (
        SELECT module, det, unit_id, category, kg_co2e FROM ingestion_emissionline
        WHERE year = %(year)s AND module = ANY(%(modules)s) ORDER BY random() LIMIT %(n)s
    ), fresh AS (
        SELECT d.module, d.det, d.unit_id, d.category, sum(d.activity * d.modifier * f.kg_co2e_per_unit) AS kg
        FROM ingestion_modulestate s
        JOIN ingestion_dataentry d ON d.upload_id = s.data_upload_id AND d.year = s.year AND d.module = s.module
        LEFT JOIN ingestion_factor f ON f.year = d.year AND f.module = d.module AND f.det = d.det
             AND f.category = d.category AND NOT f.stale
        WHERE s.year = %(year)s
          AND (d.module, d.det, d.unit_id, d.category) IN (SELECT module, det, unit_id, category FROM sample)
        GROUP BY d.module, d.det, d.unit_id, d.category
    )
    SELECT sm.module, sm.det, sm.unit_id, sm.category, sm.kg_co2e, fr.kg, fr.module IS NOT NULL
    FROM sample sm LEFT JOIN fresh fr USING (module, det, unit_id, category)
    ORDER BY sm.module, sm.det, sm.unit_id, sm.category
"""


def emissions_sample(year: Year) -> tuple[list[Finding], int]:
    """Recompute a random sample of emission lines from the data entries and factors.

    Returns the findings and how many lines were checked. The formula is written again
    here (activity x modifier x factor, summed per unit x DET x category) rather than
    calling ``ingestion.emissions``: a bug there must not check itself.
    """
    with connection.cursor() as cur:
        cur.execute(_SAMPLE_SQL, {"year": year.year, "modules": year.enabled_modules, "n": SAMPLE_LINES})
        rows = cur.fetchall()
    wrong: dict[str, list[str]] = {}
    for module, det, unit_id, category, stored, fresh, has_data in rows:
        if not has_data or _differs(stored, fresh):
            wrong.setdefault(module, []).append(f"{unit_id} {det}/{category}: {stored} ≠ {fresh if has_data else '—'}")
    out = [
        Finding(ERROR, "emissions_sample", msg(
            gettext_noop("%(module)s: %(n)s of the sampled emission lines differ from a fresh recomputation: "
                         "%(lines)s; recalculate the module"), module=_label(module), n=len(lines),
            lines=_names(lines, len(lines))), module, {"lines": lines[:50]})
        for module, lines in sorted(wrong.items())
    ]
    return out, len(rows)


_TOTALS_SQL = """
    WITH unit_totals AS (
        SELECT module, unit_id, kg_co2e FROM ingestion_total
        WHERE year = %(year)s AND unit_id <> '' AND module = ANY(%(modules)s)
    ), lines AS (
        SELECT module, unit_id, COALESCE(sum(kg_co2e), 0) AS kg FROM ingestion_emissionline
        WHERE year = %(year)s AND module = ANY(%(modules)s) GROUP BY module, unit_id
    )
    SELECT 'module', m.module, '', m.kg_co2e, (SELECT COALESCE(sum(u.kg_co2e), 0) FROM unit_totals u
                                            WHERE u.module = m.module)
    FROM ingestion_total m WHERE m.year = %(year)s AND m.unit_id = '' AND m.module = ANY(%(modules)s)
    UNION ALL
    SELECT 'unit', COALESCE(u.module, l.module), COALESCE(u.unit_id, l.unit_id), u.kg_co2e, l.kg
    FROM unit_totals u FULL JOIN lines l ON l.module = u.module AND l.unit_id = u.unit_id
    ORDER BY 1, 2, 3
"""


def totals_add_up(year: Year) -> list[Finding]:
    """A module's total is the sum of its units' totals, and each unit's total the sum of
    its emission lines (units with lines but no total, or the reverse, are named too)."""
    with connection.cursor() as cur:
        cur.execute(_TOTALS_SQL, {"year": year.year, "modules": year.enabled_modules})
        rows = cur.fetchall()
    out = []
    units: dict[str, list[str]] = {}
    for scope, module, unit_id, total, parts in rows:
        if not _differs(total, parts):
            continue
        if scope == "module":
            out.append(Finding(ERROR, "totals_add_up", msg(
                gettext_noop("%(module)s: the module total %(total)s kg CO2e is not the sum of its units' totals "
                             "(%(parts)s kg CO2e)"), module=_label(module), total=float(total), parts=float(parts)),
                module, {"total": total, "sum_of_units": parts}))
        else:
            units.setdefault(module, []).append(f"{unit_id}: {total} ≠ {parts}")
    for module, items in sorted(units.items()):
        out.append(Finding(ERROR, "totals_add_up", msg(
            gettext_noop("%(module)s: %(n)s unit total(s) differ from the sum of their emission lines: %(units)s"),
            module=_label(module), n=len(items), units=_names(items, len(items))), module, {"units": items[:50]}))
    return out
