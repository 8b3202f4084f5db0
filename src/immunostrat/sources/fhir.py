"""FHIR R4 adapter: Bundles (JSON) or NDJSON of Patient, Encounter, Observation and
MedicationAdministration.

Small inputs are validated with ``fhir.resources.R4B`` (R4-era resources; ``fhir.resources`` 7+
defaults to R5); bulk NDJSON is read as plain JSON (full validation costs ~0.1 ms per resource,
design.md section 4). Encounters become stays (ambulatory ones excepted); without encounters each
patient is one stay. Observation LOINC codes map through the concept dictionary; vasopressor rates
come from MedicationAdministration.dosage.rateQuantity, antibiotics from its medication name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.sources.base import STAYS_SCHEMA, SourceData
from immunostrat.sources.collect import UTC_TIME, Collector, assign_to_stays, expand_hourly
from immunostrat.sources.mapping import antibiotics, load_mapping
from immunostrat.sources.tabular import parse_time

SOURCE = "fhir"
_TYPES = ("Patient", "Encounter", "Observation", "MedicationAdministration")


def _iter_file(path: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(file label, entry number, resource) for every resource in a Bundle/resource JSON or NDJSON."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".ndjson":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield path.name, number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        "invalid JSON line", file=str(path), row=number, expected="one resource per line"
                    ) from exc
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", file=str(path), row=exc.lineno) from exc
    if data.get("resourceType") == "Bundle":
        for number, entry in enumerate(data.get("entry") or [], start=1):
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield path.name, number, entry["resource"]
    else:
        yield path.name, 1, data


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".json", ".ndjson"})
        if files:
            return files
    raise InputError(
        "no FHIR files", file=str(path), expected="a Bundle .json, an .ndjson file, or a folder of them"
    )


def _validate(
    resources: list[tuple[str, int, dict[str, Any]]],
) -> tuple[list[tuple[str, int, dict[str, Any]]], Counter[str]]:
    """Keep resources that validate as FHIR R4 (fhir.resources.R4B); count the others by type."""
    from fhir.resources.R4B import get_fhir_model_class

    kept, bad = [], Counter[str]()
    for item in resources:
        rtype = str(item[2].get("resourceType"))
        try:
            get_fhir_model_class(rtype).model_validate(item[2])
        except Exception:  # pydantic ValidationError and unknown types alike
            bad[rtype] += 1
            continue
        kept.append(item)
    return kept, bad


def _ref(value: Any) -> str | None:
    """The id in a reference "Patient/123" (or "urn:uuid:..")."""
    if not isinstance(value, dict) or not value.get("reference"):
        return None
    reference = str(value["reference"])
    return reference.rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _loinc_codes(codeable: Any, system: str) -> list[str]:
    if not isinstance(codeable, dict):
        return []
    return [
        str(c.get("code"))
        for c in codeable.get("coding") or []
        if c.get("system") == system and c.get("code")
    ]


def _name(codeable: Any) -> str:
    if not isinstance(codeable, dict):
        return ""
    parts = [str(codeable.get("text") or "")] + [
        str(c.get("display") or "") for c in codeable.get("coding") or []
    ]
    return " ".join(p for p in parts if p)


def _when(resource: dict[str, Any], prefix: str) -> tuple[str | None, str | None]:
    if resource.get(f"{prefix}DateTime"):
        return str(resource[f"{prefix}DateTime"]), None
    period = resource.get(f"{prefix}Period") or {}
    if period.get("start"):
        return str(period["start"]), period.get("end")
    return (str(resource["issued"]) if resource.get("issued") else None), None


def load_fhir(path: str | Path, *, validate: bool | str = "auto") -> SourceData:
    """Stays and canonical observations from FHIR R4 Bundles / NDJSON under ``path``."""
    root = Path(path)
    items = [item for f in _files(root) for item in _iter_file(f)]
    return load_fhir_resources(items, validate=validate, label=root.name)


def load_fhir_resources(
    items: Iterable[tuple[str, int, dict[str, Any]]], *, validate: bool | str = "auto", label: str = "fhir"
) -> SourceData:
    mapping = load_mapping(SOURCE)
    resources = [i for i in items if i[2].get("resourceType") in _TYPES]
    notes = []
    do_validate = validate is True or (
        validate == "auto" and len(resources) <= int(mapping["validate_max_resources"])
    )
    invalid: Counter[str] = Counter()
    if do_validate:
        resources, invalid = _validate(resources)
        notes.append(f"{len(resources)} resources validated as FHIR R4 (fhir.resources.R4B)")
    else:
        notes.append(f"{len(resources)} resources read as plain JSON (no model validation: bulk input)")
    for rtype, n in invalid.items():
        notes.append(f"{n} {rtype} resources failed FHIR R4 validation and were left out")
    by_type: dict[str, list[tuple[str, int, dict[str, Any]]]] = {t: [] for t in _TYPES}
    for item in resources:
        by_type[str(item[2]["resourceType"])].append(item)
    system = str(mapping["loinc_system"])
    # Observation rows (and their components).
    code_to_concept: dict[str, str] = {}
    for c in load_concepts():
        for code in c.loinc:
            code_to_concept.setdefault(code, c.id)
    for code in mapping["culture_loinc"]:
        code_to_concept[str(code)] = "culture"
    for code in mapping["weight_loinc"]:
        code_to_concept[str(code)] = "_weight"
    for code in mapping["height_loinc"]:
        code_to_concept[str(code)] = "_height"
    excluded = set(mapping["observation_status_excluded"])
    obs_rows: list[dict[str, Any]] = []
    unmapped: Counter[str] = Counter()
    for file, number, res in by_type["Observation"]:
        if res.get("status") in excluded:
            continue
        when, _ = _when(res, "effective")
        parts = [res, *(res.get("component") or [])]
        for part in parts:
            codes = _loinc_codes(part.get("code"), system)
            concept = next((code_to_concept[c] for c in codes if c in code_to_concept), None)
            if concept is None:
                if part is res and not res.get("component"):
                    unmapped[",".join(codes) or "no LOINC"] += 1
                continue
            quantity = part.get("valueQuantity") or {}
            value = quantity.get("value")
            unit = quantity.get("code") or quantity.get("unit") or ""
            if concept == "culture":
                value, unit = 1, ""
            obs_rows.append(
                {
                    "subject": _ref(res.get("subject")),
                    "encounter": _ref(res.get("encounter")),
                    "time": when,
                    "concept": concept,
                    "value": None if value is None else str(value),
                    "unit": str(unit),
                    "table": f"{file}:Observation",
                    "source_row": number,
                }
            )
    # MedicationAdministration: vasopressor rates and antibiotics.
    vaso = {
        concept: re.compile(pattern, re.IGNORECASE) for concept, pattern in mapping["vasopressors"].items()
    }
    abx = antibiotics()
    abx_names = re.compile("|".join(re.escape(str(n)) for n in abx["names"]), re.IGNORECASE)
    abx_exclude = re.compile(str(abx["exclude_name"]), re.IGNORECASE)
    route_exclude = re.compile(str(abx["exclude_route"]), re.IGNORECASE)
    med_excluded = set(mapping["medication_status_excluded"])
    med_rows: list[dict[str, Any]] = []
    for file, number, res in by_type["MedicationAdministration"]:
        if res.get("status") in med_excluded:
            continue
        name = _name(res.get("medicationCodeableConcept"))
        start, end = _when(res, "effective")
        dosage = res.get("dosage") or {}
        route = _name(dosage.get("route"))
        base = {
            "subject": _ref(res.get("subject")),
            "encounter": _ref(res.get("context")) or _ref(res.get("encounter")),
            "time": start,
            "end": end,
            "table": f"{file}:MedicationAdministration",
            "source_row": number,
        }
        for concept, pattern in vaso.items():
            if pattern.search(name):
                rate = dosage.get("rateQuantity") or {}
                med_rows.append(
                    {
                        **base,
                        "concept": concept,
                        "value": None if rate.get("value") is None else str(rate.get("value")),
                        "unit": str(rate.get("code") or rate.get("unit") or ""),
                    }
                )
                break
        else:
            if (
                abx_names.search(name)
                and not abx_exclude.search(name)
                and not route_exclude.search(route.strip())
            ):
                med_rows.append({**base, "end": None, "concept": "antibiotic", "value": "1", "unit": ""})
    stays, stay_kind = _stays(by_type, obs_rows, med_rows, mapping)
    notes.append(f"stays from {stay_kind}")
    collector = Collector(SOURCE, stays, notes=notes)
    for concept, reason in (mapping.get("absent") or {}).items():
        collector.absent(concept, str(reason))
    for code, n in unmapped.most_common(5):
        collector.notes.append(f"{n} Observations with LOINC {code} have no dictionary concept (not read)")
    _add_rows(collector, obs_rows + med_rows, stays)
    return collector.build()


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {
        "subject": pl.String,
        "encounter": pl.String,
        "time": pl.String,
        "end": pl.String,
        "concept": pl.String,
        "value": pl.String,
        "unit": pl.String,
        "table": pl.String,
        "source_row": pl.Int64,
    }
    frame = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)
    return frame.with_columns(
        parse_time("time", pl.String()).alias("time"), parse_time("end", pl.String()).alias("end")
    )


def _stays(
    by_type: dict[str, list[tuple[str, int, dict[str, Any]]]],
    obs_rows: list[dict[str, Any]],
    med_rows: list[dict[str, Any]],
    mapping: dict[str, Any],
) -> tuple[pl.DataFrame, str]:
    people: dict[str, dict[str, Any]] = {}
    for _, _, res in by_type["Patient"]:
        people[str(res.get("id"))] = {
            "sex": {"female": "F", "male": "M"}.get(str(res.get("gender", "")).lower()),
            "birth": res.get("birthDate"),
        }
    skip = set(mapping["non_stay_encounter_classes"])
    encounters = []
    for _, _, res in by_type["Encounter"]:
        klass = res.get("class") or {}
        if isinstance(klass, dict) and klass.get("code") in skip:
            continue
        period = res.get("period") or {}
        encounters.append(
            {
                "stay_id": str(res.get("id")),
                "patient_id": _ref(res.get("subject")),
                "start": period.get("start"),
                "end": period.get("end"),
            }
        )
    if encounters:
        frame = pl.DataFrame(
            encounters, schema={k: pl.String for k in ("stay_id", "patient_id", "start", "end")}
        )
        kind = "Encounter resources"
    else:
        rows = _frame(obs_rows + med_rows) if obs_rows or med_rows else None
        if rows is None or rows.height == 0:
            frame = pl.DataFrame(schema={k: pl.String for k in ("stay_id", "patient_id", "start", "end")})
        else:
            frame = rows.group_by("subject").agg(
                pl.col("time").min().alias("s"), pl.col("time").max().alias("e")
            )
            frame = frame.select(
                pl.col("subject").alias("stay_id"),
                pl.col("subject").alias("patient_id"),
                pl.col("s").dt.to_string("%Y-%m-%dT%H:%M:%S").alias("start"),
                pl.col("e").dt.to_string("%Y-%m-%dT%H:%M:%S").alias("end"),
            )
        kind = "patients (no Encounter resources: one stay per patient)"
    person = pl.DataFrame(
        [{"patient_id": k, "sex": v["sex"], "birth": v["birth"]} for k, v in people.items()],
        schema={"patient_id": pl.String, "sex": pl.String, "birth": pl.String},
    )
    frame = frame.join(person, on="patient_id", how="left").with_columns(
        parse_time("start", pl.String()).alias("icu_intime"),
        parse_time("end", pl.String()).alias("icu_outtime"),
        parse_time("birth", pl.String()).alias("_birth"),
    )
    stays = frame.select(
        "stay_id",
        "patient_id",
        pl.lit(None, dtype=pl.String).alias("hospital_admission_id"),
        pl.col("icu_intime").alias("admission_time"),
        "icu_intime",
        "icu_outtime",
        ((pl.col("icu_intime") - pl.col("_birth")).dt.total_days() / 365.25).floor().alias("age"),
        "sex",
        pl.lit(None, dtype=pl.Float64).alias("weight_kg"),
        pl.lit(None, dtype=pl.Float64).alias("height_cm"),
        pl.lit(None, dtype=UTC_TIME).alias("death_time"),
        pl.lit(None, dtype=UTC_TIME).alias("hospital_discharge_time"),
    )
    return stays.cast(STAYS_SCHEMA).sort("stay_id"), kind  # type: ignore[arg-type]


def _add_rows(collector: Collector, rows: list[dict[str, Any]], stays: pl.DataFrame) -> None:
    if not rows:
        return
    frame = _frame(rows).with_row_index("_rid")
    known = stays["stay_id"].implode()
    direct = frame.filter(pl.col("encounter").is_in(known)).with_columns(pl.col("encounter").alias("stay_id"))
    rest = frame.filter(~pl.col("encounter").is_in(known).fill_null(False))
    windowed = assign_to_stays(rest.rename({"subject": "_subject"}), stays, subject="_subject")
    windowed = windowed.rename({"_subject": "subject"})
    assigned = pl.concat([direct, windowed.select(direct.columns)], how="vertical_relaxed")
    for concept, n in (
        rest.join(windowed.select("_rid"), on="_rid", how="anti").group_by("concept").len().iter_rows()
    ):
        collector.skip(str(concept), "fhir", "outside every stay", int(n))
    # Weight / height for the stays table; per-minute vasopressor rates use it.
    sizes = assigned.filter(pl.col("concept").is_in(["_weight", "_height"]))
    if sizes.height:
        firsts = (
            sizes.with_columns(pl.col("value").cast(pl.Float64, strict=False))
            .sort("time")
            .group_by("stay_id", "concept")
            .agg(pl.col("value").first(), pl.col("unit").first())
        )
        # body weight is kg and height cm in UCUM-coded vitals; other units are left out of the stay table
        weight = firsts.filter((pl.col("concept") == "_weight") & pl.col("unit").is_in(["kg", "[kg]"]))
        height = firsts.filter((pl.col("concept") == "_height") & pl.col("unit").is_in(["cm"]))
        stays = stays.join(
            weight.select("stay_id", pl.col("value").alias("_w")), on="stay_id", how="left"
        ).join(height.select("stay_id", pl.col("value").alias("_h")), on="stay_id", how="left")
        stays = stays.with_columns(pl.col("_w").alias("weight_kg"), pl.col("_h").alias("height_cm")).drop(
            "_w", "_h"
        )
        collector.stays = stays
    assigned = assigned.filter(~pl.col("concept").str.starts_with("_"))
    for (concept, table), part in assigned.partition_by(["concept", "table"], as_dict=True).items():
        empty = part.filter(pl.col("value").is_null() | pl.col("time").is_null())
        collector.skip(str(concept), str(table), "no value or no time", empty.height)
        part = part.filter(pl.col("value").is_not_null() & pl.col("time").is_not_null())
        with_end = part.filter(pl.col("end").is_not_null() & (pl.col("end") > pl.col("time")))
        if with_end.height:
            collector.intervals.append(
                with_end.select(
                    "stay_id", "concept", pl.col("time").alias("start"), pl.col("end"), "table", "source_row"
                )
            )
            points = expand_hourly(with_end.rename({"end": "end_time"}), stop_value="0")
            part = pl.concat(
                [part.filter(~pl.col("_rid").is_in(with_end["_rid"].implode())).drop("end"), points]
            )
        collector.add(str(concept), part, table=str(table))
