"""Our own long format: ``observations`` (patient_id, time, concept, value, unit) with optional
``patients`` and ``stays`` tables, as CSV or Parquet files, or a folder holding them.

Read through ``immunostrat.concepts.read_observations`` (lenient by default: bad rows are dropped and
counted per concept and reason). Without a stays table every patient is one stay (stay id = patient id)
running from the patient's admission_time (else the first observation) to the last observation; with
one, observations go to the patient's stay containing their time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from immunostrat.concepts import empty_patients, read_observations, read_patients
from immunostrat.concepts.observations import read_table
from immunostrat.errors import InputError
from immunostrat.sources.base import STAYS_SCHEMA, ConceptStatus, SourceData
from immunostrat.sources.collect import UTC_TIME, assign_to_stays
from immunostrat.sources.mapping import load_mapping, reported_concepts
from immunostrat.sources.tabular import parse_time

SOURCE = "long"
_SUFFIXES = (".parquet", ".csv", ".tsv")


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in _SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_stays(path: Path) -> pl.DataFrame:
    raw = read_table(path, ["stay_id", "patient_id"])
    columns = {}
    for name, dtype in STAYS_SCHEMA.items():
        if name not in raw.columns:
            columns[name] = pl.lit(None, dtype=dtype)
        elif isinstance(dtype, pl.Datetime):
            columns[name] = parse_time(name, raw.schema[name])
        elif dtype == pl.Float64:
            columns[name] = pl.col(name).cast(pl.Float64, strict=False)
        else:
            columns[name] = pl.col(name).cast(pl.String)
    return raw.select(**columns).cast(STAYS_SCHEMA).sort("stay_id")  # type: ignore[arg-type]


def _stays_from_patients(observations: pl.DataFrame, patients: pl.DataFrame) -> pl.DataFrame:
    spans = observations.group_by("patient_id").agg(
        pl.col("time").min().alias("_first"), pl.col("time").max().alias("_last")
    )
    people = pl.concat(
        [patients.select("patient_id"), spans.select("patient_id")], how="vertical_relaxed"
    ).unique()
    frame = people.join(patients, on="patient_id", how="left").join(spans, on="patient_id", how="left")
    return (
        frame.select(
            pl.col("patient_id").alias("stay_id"),
            "patient_id",
            pl.lit(None, dtype=pl.String).alias("hospital_admission_id"),
            pl.col("admission_time"),
            pl.coalesce("admission_time", "_first").alias("icu_intime"),
            pl.col("_last").alias("icu_outtime"),
            "age",
            "sex",
            "weight_kg",
            "height_cm",
            pl.lit(None, dtype=UTC_TIME).alias("death_time"),
            pl.lit(None, dtype=UTC_TIME).alias("hospital_discharge_time"),
        )
        .cast(STAYS_SCHEMA)  # type: ignore[arg-type]
        .sort("stay_id")
    )


def load_long(
    path: str | Path,
    *,
    patients: str | Path | None = None,
    stays: str | Path | None = None,
    lenient: bool = True,
) -> SourceData:
    """SourceData from our long observation format (a file, or a folder with observations.*)."""
    root = Path(path)
    if root.is_dir():
        obs_path = _find(root, "observations")
        if obs_path is None:
            raise InputError("no observations file", file=str(root), expected="observations.csv or .parquet")
        patients = patients or _find(root, "patients")
        stays = stays or _find(root, "stays")
    else:
        obs_path = root
    patient_frame = read_patients(patients) if patients is not None else empty_patients()
    read = read_observations(obs_path, patient_frame, lenient=lenient)
    observations = read.observations
    notes = [f"observations from {obs_path.name}; time anchor: {read.time_anchor}"]
    if stays is not None:
        stay_frame = _read_stays(Path(stays))
        events = observations.with_row_index("_rid").rename({"patient_id": "_subject"})
        assigned = assign_to_stays(events, stay_frame, subject="_subject")
        outside = observations.height - assigned.height
        if outside:
            notes.append(f"{outside} observations fall in no stay of their patient and were left out")
        observations = assigned.with_columns(pl.col("stay_id").alias("patient_id")).select(
            observations.columns
        )
        notes.append(f"stays from {Path(stays).name}")
    else:
        stay_frame = _stays_from_patients(observations, read.patients)
        notes.append("one stay per patient (stay id = patient id)")
    # Per-concept counts of dropped rows (the rejected rows' concepts, read back from the file).
    dropped: Counter[tuple[str, str]] = Counter()
    if read.rejected:
        raw = read_table(obs_path, ["concept"]).with_row_index("row", offset=1)
        concept_of = dict(zip(raw["row"].to_list(), raw["concept"].to_list(), strict=True))
        for error in read.rejected:
            reason = "outside the plausible range" if "plausible" in error.message else error.message
            dropped[(str(concept_of.get(error.row or 0, "")), reason)] += 1
    mapping = load_mapping(SOURCE)
    counts = dict(observations.group_by("concept").len().iter_rows())
    order = list(dict.fromkeys([*sorted(counts), *reported_concepts()]))
    report = []
    for concept in order:
        lost = "; ".join(f"{n} {reason}" for (c, reason), n in sorted(dropped.items()) if c == concept)
        detail = f"not kept: {lost}" if lost else ""
        if counts.get(concept):
            report.append(ConceptStatus(concept, int(counts[concept]), "present", detail))
        else:
            reason = str(mapping.get("absent_reason", "not in this file"))
            report.append(ConceptStatus(concept, 0, "absent", "; ".join(x for x in (reason, detail) if x)))
    dropped_table = pl.DataFrame(
        [(c, obs_path.name, r, n) for (c, r), n in sorted(dropped.items())],
        schema={"concept": pl.String, "table": pl.String, "reason": pl.String, "rows": pl.Int64},
        orient="row",
    )
    observations = observations.with_columns(pl.lit(f"{SOURCE}:{obs_path.name}").alias("source"))
    return SourceData(SOURCE, stay_frame, observations, report, notes, {"dropped": dropped_table})
