"""eICU-CRD adapter (full database, or the demo copy with tables missing).

Every time in eICU is a minute offset from unit admission. Each stay's unit admission is anchored at
``immunostrat.concepts.DEFAULT_EPOCH`` (eICU publishes no dates; only the discharge year) and every
other time is that anchor plus its offset; the anchor is recorded in the notes. Missing tables make
their concepts absent (reported), never a crash.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from immunostrat.concepts import DEFAULT_EPOCH
from immunostrat.errors import InputError
from immunostrat.sources.base import STAYS_SCHEMA, SourceData
from immunostrat.sources.collect import UTC_TIME, Collector, find_table, scan_table
from immunostrat.sources.mapping import ConceptEntry, load_mapping
from immunostrat.sources.tabular import SHARED_CALLBACKS, Callback, TabularContext, gcs_sum, read_tables

SOURCE = "eicu"


def exam_gcs_components(frame: pl.DataFrame, entry: ConceptEntry) -> pl.DataFrame:
    """physicalExam paths ".../GCS/Eyes Score/4": component and score from the path, then summed."""
    path = pl.col("value")
    parts = frame.with_columns(
        path.str.extract(r"/GCS/(Eyes|Verbal|Motor) Score/", 1).alias("_component"),
        path.str.extract(r"/([0-9]+)$", 1).alias("value"),
    )
    summed = entry.model_copy(update={"options": {"component": "_component"}})
    return gcs_sum(parts, summed)


def apache_gcs(frame: pl.DataFrame, entry: ConceptEntry) -> pl.DataFrame:
    """APACHE day-1 GCS = eyes + motor + verbal, when all three were scored and not blocked by meds.

    An intubated patient (``intubated`` = 1) cannot speak: a verbal score of 1 there is the tube, not
    the patient, and counts as the presumed normal verbal score 5, the rule the MIMIC-IV mapping applies
    to "No Response-ETT" (mimic-code gcs.sql: verbal 0 -> GCS 15; ricu sed_impute "max"; Vincent 1996
    scores the GCS presumed without sedation). ``options: {intubated_verbal: charted}`` keeps it as 1.
    """
    number = {c: pl.col(c).cast(pl.Float64, strict=False) for c in ("value", "motor", "verbal")}
    if str((entry.options or {}).get("intubated_verbal", "presumed-normal")) == "presumed-normal":
        intubated = pl.col("intubated").cast(pl.Float64, strict=False) == 1
        number["verbal"] = (
            pl.when(intubated.fill_null(False) & (number["verbal"] == 1))
            .then(pl.lit(5.0))
            .otherwise(number["verbal"])
        )
    complete = pl.all_horizontal([n >= 1 for n in number.values()]) & (
        pl.col("meds").cast(pl.Int32, strict=False) != 1
    )
    return frame.filter(complete.fill_null(False)).with_columns(
        pl.sum_horizontal(list(number.values())).cast(pl.String).alias("value")
    )


CALLBACKS: dict[str, Callback] = {
    **SHARED_CALLBACKS,
    "exam_gcs_components": exam_gcs_components,
    "apache_gcs": apache_gcs,
}


def _minutes(column: str) -> pl.Expr:
    minutes = pl.col(column).cast(pl.Float64, strict=False)
    return pl.lit(DEFAULT_EPOCH).cast(UTC_TIME) + pl.duration(seconds=(minutes * 60).round(0).cast(pl.Int64))


def build_stays(root: Path) -> pl.DataFrame:
    path = find_table(root, "patient")
    if path is None:
        raise InputError(
            "eICU patient table missing", file=str(root / "patient.csv.gz"), expected="patient.csv.gz"
        )
    frame = scan_table(path).collect().cast(pl.String)
    expired = pl.col("hospitaldischargestatus").str.to_lowercase() == "expired"
    unit_expired = pl.col("unitdischargestatus").str.to_lowercase() == "expired"
    age = pl.col("age").str.strip_chars()
    return (
        frame.select(
            pl.col("patientunitstayid").alias("stay_id"),
            pl.col("uniquepid").alias("patient_id"),
            pl.col("patienthealthsystemstayid").alias("hospital_admission_id"),
            _minutes("hospitaladmitoffset").alias("admission_time"),
            pl.lit(DEFAULT_EPOCH).cast(UTC_TIME).alias("icu_intime"),
            _minutes("unitdischargeoffset").alias("icu_outtime"),
            pl.when(age == "> 89")
            .then(pl.lit("90"))
            .otherwise(age)
            .cast(pl.Float64, strict=False)
            .alias("age"),
            pl.col("gender").replace_strict({"Female": "F", "Male": "M"}, default=None).alias("sex"),
            pl.col("admissionweight").cast(pl.Float64, strict=False).alias("weight_kg"),
            pl.col("admissionheight").cast(pl.Float64, strict=False).alias("height_cm"),
            pl.when(expired)
            .then(_minutes("hospitaldischargeoffset"))
            .when(unit_expired)
            .then(_minutes("unitdischargeoffset"))
            .alias("death_time"),
            _minutes("hospitaldischargeoffset").alias("hospital_discharge_time"),
        )
        .with_columns(
            pl.when((pl.col("weight_kg") > 0.5) & (pl.col("weight_kg") < 400)).then(pl.col("weight_kg")),
            pl.when((pl.col("height_cm") > 20) & (pl.col("height_cm") < 260)).then(pl.col("height_cm")),
        )
        .cast(STAYS_SCHEMA)  # type: ignore[arg-type]
        .sort("stay_id")
    )


def load_eicu(path: str | Path, *, mapping: str | None = None) -> SourceData:
    """Stays and canonical observations from an eICU-CRD folder (CSV.gz, CSV or Parquet tables)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError("not an eICU-CRD folder", file=str(root), expected="a folder with patient.csv.gz")
    name = mapping or (
        "eicu"
        if find_table(root, "lab") is not None or find_table(root, "pyhealth-subset/lab") is None
        else "eicu-demo"
    )
    spec = load_mapping(name)
    stays = build_stays(root)
    collector = Collector(
        SOURCE,
        stays,
        notes=[
            f"mapping {name}.yaml; unit admission of every stay anchored at {DEFAULT_EPOCH.isoformat()} "
            "(eICU gives minute offsets, no dates); times = anchor + offset"
        ],
    )
    read_tables(TabularContext(root, spec, collector, CALLBACKS))
    collector.notes.append(
        "apacheApsVar day-1 worst values are used only for stays with no other row of the concept, "
        "timed at 24 h after unit admission"
    )
    return collector.build({"care_sites": care_sites(root)})


def care_sites(root: Path) -> pl.DataFrame:
    """Each stay's hospital (patient.hospitalid): eICU hospitals differ in what they chart (most record
    no microLab rows), so Sepsis-3 is assessable per hospital, not per database."""
    path = find_table(root, "patient")
    assert path is not None  # build_stays has already required it
    lazy = scan_table(path)
    if "hospitalid" not in lazy.collect_schema().names():
        return pl.DataFrame(schema={"stay_id": pl.String, "care_site": pl.String})
    frame = lazy.select("patientunitstayid", "hospitalid").collect()
    return frame.select(
        pl.col("patientunitstayid").cast(pl.String).alias("stay_id"),
        pl.col("hospitalid").cast(pl.String).alias("care_site"),
    ).sort("stay_id")
