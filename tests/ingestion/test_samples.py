"""Every shipped sample loads with `success`, and the emissions and totals equal an
independent computation from the same CSV files."""

from __future__ import annotations

from typing import Any

import pytest

from ingestion import selectors
from ingestion.models import DataEntry, Factor, Total
from ingestion.modules import MODULES
from tests.ingestion.conftest import YEAR, jobs_of, reference_totals, sample

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_every_sample_loads_with_success_and_totals_match_an_independent_computation(
    configured_year: Any, load: Any
) -> None:
    for module in MODULES:
        # Given the module's factors, when its data entries are uploaded
        factors = load(module, "factors")
        assert factors.status == "success", [j.status_message for j in factors.jobs.all()]
        data = load(module, "data_entries")

        # Then every job of both pipelines succeeded, with honest counts
        assert data.status == "success", [(j.job_type, j.det, j.status_message) for j in data.jobs.all()]
        jobs = jobs_of(data)
        rows = len(sample(module, "data_entries").read_text(encoding="utf-8-sig").strip().splitlines()) - 1
        assert jobs["ingest"].result == "success"
        assert jobs["ingest"].meta["rows_loaded"] == rows
        assert jobs["ingest"].meta["rows_rejected"] == 0
        assert jobs["ingest"].status_message == f"{rows:,} rows loaded"
        assert DataEntry.objects.filter(year=YEAR, module=module).count() == rows
        assert Factor.objects.filter(year=YEAR, module=module, stale=False).count() == jobs_of(factors)[
            "ingest"
        ].meta["factors_upserted"]
        assert sorted(k for k in jobs if k.startswith("recalc:")) == sorted(
            f"recalc:{d}" for d in MODULES[module].det_keys
        )
        assert sum(1 for j in data.jobs.all() if j.job_type == "aggregation") == 1

        # And the totals equal the reference computed from the CSV files
        expected = reference_totals(module, sample(module, "data_entries"), sample(module, "factors"))
        totals = selectors.year_totals(year=YEAR, module=module)
        got = {u["unit_id"]: u["kg_co2e"] for u in totals["units"]}
        assert got.keys() == expected.keys()
        for unit_id, kg in expected.items():
            assert got[unit_id] == pytest.approx(kg, rel=1e-9)
        (module_total,) = totals["modules"]
        assert module_total["kg_co2e"] == pytest.approx(sum(expected.values()), rel=1e-9)
        assert module_total["pipeline_id"] == str(data.pk)
        assert Total.objects.filter(year=YEAR, module=module).count() == len(expected) + 1

    # Finally every module is complete and the year may open
    detail = selectors.year_detail(year=YEAR)
    assert detail["incomplete_reasons"] == {}
    assert all(m["complete"] for m in detail["modules"])
