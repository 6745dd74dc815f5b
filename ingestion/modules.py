"""The module registry: each module's data-entry types (DETs), CSV schemas and formula.

A module is described by data, not code: the loader generates its validation and
typing SQL from these column definitions (``ingestion.validation``), the API publishes
them (``GET /modules/``), and the empty templates are derived from them. Adding a
module means adding one ``ModuleDef`` below plus its sample files.

Every data-entries file has the same key columns (``unit_id``, ``det``, ``category``),
one activity column named per module (``fte``, ``distance_km`` …) and at most one
modifier column; emissions are ``activity x modifier x factor`` where the module says
how the modifier is read (a round trip doubles the distance, a building share scales
the energy …). Factors files share one schema: kg CO2e per unit of activity, keyed by
DET and category.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Labels stay plain English strings here (the API's contract); marked for the
# catalogue so pages can show them translated (``gettext(mod.label)``).
from django.utils.translation import gettext_noop

from pipelines.errors import DomainError

TARGET_DATA = "data_entries"
TARGET_FACTORS = "factors"
TARGETS = (TARGET_DATA, TARGET_FACTORS)

# Column roles the loader understands.
ROLE_UNIT = "unit_id"
ROLE_DET = "det"
ROLE_CATEGORY = "category"
ROLE_ACTIVITY = "activity"
ROLE_MODIFIER = "modifier"
ROLE_FACTOR = "factor"
ROLE_TEXT = "text"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "str" | "decimal" | "int" | "bool" | "choice"
    required: bool = True
    unit: str = ""
    allowed: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    # A strict lower bound (lifetime_years > 0) rather than ``min_value``'s >=.
    exclusive_min: bool = False
    role: str = ROLE_TEXT
    description: str = ""
    max_length: int = 200

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "unit": self.unit,
            "allowed": list(self.allowed),
            "min": self.min_value,
            "max": self.max_value,
            "description": self.description,
        }


@dataclass(frozen=True)
class Det:
    key: str
    label: str
    # Categories the sample factor files cover; informative (the template and docs),
    # not a constraint: factor files may define new categories.
    categories: tuple[str, ...]


@dataclass(frozen=True)
class ModuleDef:
    key: str
    label: str
    dets: tuple[Det, ...]
    activity: Column
    formula: str
    modifier: Column | None = None
    # SQL giving the float8 multiplier from ``{v}``, the trimmed text of the modifier
    # column (validated before it is evaluated); ``modifier_value`` is its Python twin.
    modifier_sql: str = "1.0"
    extra: tuple[Column, ...] = field(default_factory=tuple)

    @property
    def det_keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dets)

    def columns(self, target: str) -> tuple[Column, ...]:
        if target == TARGET_DATA:
            cols = [
                Column("unit_id", "str", role=ROLE_UNIT, description="Unit id from the directory", max_length=40),
                Column("det", "choice", allowed=self.det_keys, role=ROLE_DET, description="Data-entry type"),
                Column("category", "str", role=ROLE_CATEGORY, description="Category, as in the factors file"),
                self.activity,
            ]
            if self.modifier is not None:
                cols.append(self.modifier)
            cols.append(Column("comment", "str", required=False, description="Free text", max_length=500))
            return tuple(cols)
        if target == TARGET_FACTORS:
            return (
                Column("det", "choice", allowed=self.det_keys, role=ROLE_DET, description="Data-entry type"),
                Column("category", "str", role=ROLE_CATEGORY, description="Category the factor applies to"),
                Column(
                    "kg_co2e_per_unit", "decimal", unit=f"kg CO2e per {self.activity.unit}", min_value=0,
                    role=ROLE_FACTOR, description="Emission factor",
                ),
                Column("source", "str", required=False, description="Where the factor comes from", max_length=500),
            )
        raise KeyError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")

    def modifier_value(self, raw: str) -> float:
        """Python twin of ``modifier_sql`` (used by docs and tests as the reference)."""
        raw = (raw or "").strip().lower()
        if self.key == "professional_travel":
            return 2.0 if raw in TRUE_WORDS else 1.0
        if self.key == "buildings":
            return (float(raw) if raw else 100.0) / 100.0
        if self.key == "equipment":
            return 1.0 / float(raw) if raw else 1.0
        return 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "formula": self.formula,
            "dets": [{"key": d.key, "label": d.label, "categories": list(d.categories)} for d in self.dets],
            "targets": {t: [c.as_dict() for c in self.columns(t)] for t in TARGETS},
        }


TRUE_WORDS = ("true", "yes", "1", "y")
BOOL_WORDS = (*TRUE_WORDS, "false", "no", "0", "n")

MODULES: dict[str, ModuleDef] = {
    m.key: m
    for m in (
        ModuleDef(
            key="headcount",
            label=gettext_noop("Headcount"),
            dets=(
                Det("staff", "Staff",
                    ("professor", "researcher", "postdoc", "phd_student", "technician", "administrative")),
                Det("students", "Students", ("bachelor", "master")),
            ),
            activity=Column("fte", "decimal", unit="FTE", min_value=0, max_value=10000, role=ROLE_ACTIVITY,
                            description="Full-time equivalents"),
            formula="fte x factor",
        ),
        ModuleDef(
            key="professional_travel",
            label=gettext_noop("Professional travel"),
            dets=(
                Det("plane", "Plane", ("short_haul_economy", "medium_haul_economy", "long_haul_economy",
                                       "long_haul_business")),
                Det("train", "Train", ("regional", "high_speed", "international")),
                Det("car", "Car", ("petrol", "diesel", "electric")),
            ),
            activity=Column("distance_km", "decimal", unit="km", min_value=0, max_value=1e9, role=ROLE_ACTIVITY,
                            description="One-way distance travelled"),
            modifier=Column("round_trip", "bool", required=False, allowed=BOOL_WORDS, role=ROLE_MODIFIER,
                            description="true doubles the distance"),
            modifier_sql="CASE WHEN lower({v}) IN ('true','yes','1','y') THEN 2.0 ELSE 1.0 END",
            formula="distance_km x (2 if round_trip else 1) x factor",
        ),
        ModuleDef(
            key="buildings",
            label=gettext_noop("Buildings"),
            dets=(
                Det("electricity", "Electricity", ("grid_mix", "renewable_contract")),
                Det("heating", "Heating", ("natural_gas", "district_heating", "heating_oil", "heat_pump")),
                Det("cooling", "Cooling", ("chilled_water",)),
            ),
            activity=Column("energy_kwh", "decimal", unit="kWh", min_value=0, max_value=1e12, role=ROLE_ACTIVITY,
                            description="Energy used by the building"),
            modifier=Column("share_percent", "decimal", required=False, unit="%", min_value=0, max_value=100,
                            role=ROLE_MODIFIER, description="The unit's share of the building (default 100)"),
            modifier_sql="COALESCE(NULLIF({v}, '')::float8, 100.0) / 100.0",
            formula="energy_kwh x share_percent / 100 x factor",
        ),
        ModuleDef(
            key="equipment",
            label=gettext_noop("Equipment"),
            dets=(
                Det("it", "IT equipment", ("laptop", "desktop", "monitor", "server", "printer")),
                Det("lab", "Laboratory equipment", ("centrifuge", "ultra_low_freezer", "microscope", "fume_hood")),
            ),
            activity=Column("count", "int", unit="item", min_value=0, max_value=1e9, role=ROLE_ACTIVITY,
                            description="Number of items"),
            modifier=Column("lifetime_years", "decimal", required=False, unit="year", min_value=0,
                            exclusive_min=True, max_value=100, role=ROLE_MODIFIER,
                            description="Amortisation period (default 1: the factor is already per year)"),
            modifier_sql="1.0 / COALESCE(NULLIF({v}, '')::float8, 1.0)",
            formula="count x factor / lifetime_years",
        ),
        ModuleDef(
            key="purchases",
            label=gettext_noop("Purchases"),
            dets=(
                Det("goods", "Goods", ("lab_consumables", "it_supplies", "furniture", "chemicals")),
                Det("services", "Services", ("catering", "cleaning", "consulting", "maintenance")),
            ),
            activity=Column("amount_eur", "decimal", unit="EUR", min_value=0, max_value=1e12, role=ROLE_ACTIVITY,
                            description="Amount spent, excluding VAT"),
            formula="amount_eur x factor",
        ),
    )
}


class UnknownModule(DomainError, LookupError):
    # A LookupError too: callers that look a module up may catch it as "not found".
    status = 404
    code = "unknown_module"


def get_module(key: str) -> ModuleDef:
    try:
        return MODULES[key]
    except KeyError:
        raise UnknownModule(f"unknown module {key!r}; known: {', '.join(MODULES)}") from None
