"""Source mapping files (``sources/<source>.yaml``): where each concept lives in a database, as data.

A mapping names the source's tables and, per concept, one or more entries (table, row filter such as
item ids or names, value column, unit column or fixed unit, time column, optional end-time column for
periods, optional weight column, optional small callback by name). Concepts a source cannot provide
are listed under ``absent`` with the reason. A mapping may ``inherit`` another (a demo data set
inherits its full database's mapping) and then states only the differences: its ``tables`` and
``concepts`` entries replace the parent's one by one, and a concept it lists as absent is removed
from the parent's concepts.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from immunostrat.concepts import load_concepts

# Dictionary categories that no ICU source carries; they are not listed as "not mapped" in reports.
UNREPORTED_CATEGORIES = frozenset({"lupus_finding", "finding", "urinalysis"})


class TableSpec(BaseModel):
    """Where a table lives and how its rows reach an ICU stay."""

    model_config = ConfigDict(extra="forbid")
    file: str  # path relative to the data set root, without extension (.csv.gz, .csv, .parquet tried)
    stay_column: str | None = None  # the row names its stay directly
    subject_column: str | None = None  # else: assigned by time to a stay of this subject
    before_hours: float = 0.0  # rows up to this long before ICU admission count for the stay
    after_hours: float = 0.0  # ... and after ICU discharge
    time_kind: str = "datetime"  # datetime | offset_minutes (eICU: minutes from unit admission)
    # subject_column tables: a row reaches every stay whose window holds it (not only the nearest),
    # e.g. a culture drawn in one stay also lies in the next stay's 72-h look-back
    every_stay: bool = False
    note: str = ""


class RelatedRows(BaseModel):
    """Rows of the same table that must exist for an entry's row to count, joined on ``key`` (e.g. a
    blood-gas value counts only when its specimen's type row says arterial)."""

    model_config = ConfigDict(extra="forbid")
    key: str
    where: dict[str, list[str]] = Field(default_factory=dict)
    match: dict[str, str] = Field(default_factory=dict)
    reason: str  # why a row without the related row is not kept (counted under this reason)

    @field_validator("where", mode="before")
    @classmethod
    def _texts(cls, value: dict[str, Any]) -> dict[str, list[str]]:
        return {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in (value or {}).items()}


class ConceptEntry(BaseModel):
    """One place a concept is read from (a concept may have several)."""

    model_config = ConfigDict(extra="forbid")
    table: str
    where: dict[str, list[str]] = Field(default_factory=dict)  # column -> accepted values (text)
    match: dict[str, str] = Field(default_factory=dict)  # column -> regular expression (case-insensitive)
    exclude: dict[str, str] = Field(default_factory=dict)  # column -> regular expression to leave out
    value: str | None = None  # value column
    constant: float | None = None  # fixed value instead of a column (events, e.g. antibiotic = 1)
    unit_column: str | None = None
    unit: str | None = None  # fixed unit, or the unit used where unit_column is empty / "UNK"
    unit_spelling: dict[str, str] = Field(default_factory=dict)  # source spelling -> dictionary spelling
    time: str = ""  # time column (required unless fixed_offset_minutes is given)
    time_fallback: str | None = None  # used where ``time`` is empty (e.g. chartdate for charttime)
    # a date-only fallback is known only to the day: time it at the day's last second, never before it
    fallback_end_of_day: bool = False
    end_time: str | None = None  # a period: hourly points from time to end_time
    fixed_offset_minutes: float | None = None  # a fixed time after ICU admission (eICU APACHE day 1)
    weight_column: str | None = None  # per-row body weight (kg) for per-minute drug rates
    missing_values: list[float] = Field(default_factory=list)  # sentinels meaning "not measured"
    fill_missing_stays: bool = False  # fallback: used only for stays with no other row of the concept
    requires: RelatedRows | None = None  # a related row of the same table that must exist
    callback: str | None = None  # small named transformation (see the adapter's CALLBACKS)
    options: dict[str, Any] = Field(default_factory=dict)  # callback options

    @model_validator(mode="after")
    def _needs_time(self) -> ConceptEntry:
        if not self.time and self.fixed_offset_minutes is None:
            raise ValueError(f"entry on {self.table}: needs a time column or fixed_offset_minutes")
        if self.value is None and self.constant is None:
            raise ValueError(f"entry on {self.table}: needs a value column or a constant")
        return self

    @field_validator("where", mode="before")
    @classmethod
    def _texts(cls, value: dict[str, Any]) -> dict[str, list[str]]:
        return {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in (value or {}).items()}


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy({k: v for k, v in parent.items() if k not in {"description"}})
    for key, value in child.items():
        if key in {"tables", "concepts", "absent", "options", "columns"} and isinstance(value, dict):
            merged[key] = {**parent.get(key, {}), **value}
        else:
            merged[key] = value
    for concept in child.get("absent", {}) or {}:
        merged.get("concepts", {}).pop(concept, None)
    for concept in child.get("concepts", {}) or {}:
        merged.get("absent", {}).pop(concept, None)
    merged["inherits"] = child.get("inherits")
    return merged


def _read(name: str) -> dict[str, Any]:
    path = resources.files("immunostrat.sources").joinpath(f"{name}.yaml")
    if not path.is_file():
        raise KeyError(f"no mapping file {name}.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{name}.yaml must be a mapping")
    return data


@cache
def load_mapping(name: str) -> dict[str, Any]:
    """The mapping ``name`` (file ``sources/<name>.yaml``) with its parent merged in, checked."""
    data = _read(name)
    parent = data.get("inherits")
    if parent:
        data = _merge(load_mapping(str(parent)), data)
        data["inherits"] = parent
    check_mapping(data, name)
    return data


def check_mapping(data: dict[str, Any], name: str) -> None:
    """Concept ids must be in the dictionary; table-driven entries must name known tables."""
    concepts = load_concepts()
    for concept in list(data.get("concepts", {})) + list(data.get("absent", {})):
        if concept not in concepts:
            raise ValueError(f"{name}.yaml: unknown concept {concept!r}")
    for concept in data.get("concepts", {}):
        if concept in data.get("absent", {}):
            raise ValueError(f"{name}.yaml: {concept!r} is both mapped and absent")
    tables = data.get("tables")
    if isinstance(tables, dict):
        for spec in tables.values():
            TableSpec(**spec)
        for concept in data.get("concepts", {}):
            for entry in concept_entries(data, concept):
                if entry.table not in tables:
                    raise ValueError(f"{name}.yaml: {concept} reads unknown table {entry.table!r}")


def concept_entries(data: dict[str, Any], concept: str) -> list[ConceptEntry]:
    raw = data.get("concepts", {}).get(concept) or []
    items = raw if isinstance(raw, list) else [raw]
    return [ConceptEntry(**item) for item in items]


def table_specs(data: dict[str, Any]) -> dict[str, TableSpec]:
    return {name: TableSpec(**spec) for name, spec in (data.get("tables") or {}).items()}


@cache
def antibiotics() -> dict[str, Any]:
    """The shared systemic-antibiotic name list (``antibiotics.yaml``)."""
    return _read("antibiotics")


def expand_pattern(pattern: str) -> str:
    """Named placeholders usable in ``match``/``exclude``: {antibiotics}, {antibiotic_exclude_name},
    {antibiotic_exclude_route}. Other patterns are returned as written."""
    data = antibiotics()
    names = [str(n) for n in data["names"]]
    table = {
        "{antibiotics}": "("
        + "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
        + ")",
        "{antibiotic_exclude_name}": str(data["exclude_name"]),
        "{antibiotic_exclude_route}": str(data["exclude_route"]),
    }
    return table.get(pattern.strip(), pattern)


def reported_concepts() -> list[str]:
    """Dictionary concepts every ICU source report lists (present, absent or not mapped)."""
    return [c.id for c in load_concepts() if c.category not in UNREPORTED_CATEGORIES]
