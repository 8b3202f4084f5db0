"""PhysioNet/CinC 2019 adapter: a folder of hourly ``.psv`` files (one ICU stay each).

All files are read in one parallel polars scan. Times: each stay's ICU admission is anchored at
``immunostrat.concepts.DEFAULT_EPOCH`` (the files carry no dates) and a row's time is ICU admission +
``ICULOS`` hours (the end of that hour, when its values were known). ``SepsisLabel`` goes to
``tables['labels']`` (hourly) and ``tables['sepsis_onset']`` (per stay: t_sepsis = first labelled hour
+ 6 h, unless the first labelled row is the file's first row).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from immunostrat.concepts import DEFAULT_EPOCH
from immunostrat.errors import InputError
from immunostrat.sources.base import STAYS_SCHEMA, SourceData
from immunostrat.sources.collect import UTC_TIME, Collector
from immunostrat.sources.mapping import load_mapping

SOURCE = "physionet2019"


def psv_files(path: str | Path, limit: int | None = None) -> list[Path]:
    root = Path(path)
    if root.is_file():
        return [root]
    files = sorted(root.rglob("*.psv"))
    if not files:
        raise InputError("no .psv files found", file=str(root), expected="PhysioNet 2019 hourly .psv files")
    return files[:limit] if limit is not None else files


def _hours(column: pl.Expr) -> pl.Expr:
    return pl.duration(microseconds=(column.cast(pl.Float64) * 3_600_000_000).round(0).cast(pl.Int64))


def load_physionet2019(path: str | Path, *, limit: int | None = None) -> SourceData:
    """Stays, canonical observations and SepsisLabel from PhysioNet 2019 files under ``path``."""
    mapping = load_mapping(SOURCE)
    files = psv_files(path, limit)
    columns: dict[str, dict[str, str]] = mapping["columns"]
    hour = str(mapping["hour_column"])
    label = str(mapping["label_column"])
    keep = [*columns, "Age", "Gender", "HospAdmTime", hour, label]
    frame = (
        pl.scan_csv(
            [str(f) for f in files],
            separator="|",
            null_values=["NaN", "nan", ""],
            infer_schema=False,
            include_file_paths="_file",
        )
        .select("_file", *keep)
        .with_columns(pl.int_range(1, pl.len() + 1).over("_file").cast(pl.Int64).alias("source_row"))
        .collect()
    )
    names = frame.select(pl.col("_file").unique()).with_columns(
        pl.col("_file").str.extract(r"([^/\\]+)\.psv$", 1).alias("stay_id")
    )
    frame = frame.join(names, on="_file", how="left").drop("_file")
    epoch = pl.lit(DEFAULT_EPOCH).cast(UTC_TIME)
    frame = frame.with_columns(
        pl.col(hour).cast(pl.Float64, strict=False).alias("_hour"),
        pl.col(label).cast(pl.Int8, strict=False).alias("_label"),
    ).with_columns((epoch + _hours(pl.col("_hour"))).alias("time"))
    stays = _stays(frame, epoch)
    collector = Collector(SOURCE, stays)
    collector.notes.append(
        f"{len(files)} files; ICU admission anchored at {DEFAULT_EPOCH.isoformat()} (no dates in the files); "
        "row time = ICU admission + ICULOS hours"
    )
    for concept, reason in (mapping.get("absent") or {}).items():
        collector.absent(concept, str(reason))
    spec_frame = pl.DataFrame(
        {
            "variable": list(columns),
            "concept": [c["concept"] for c in columns.values()],
            "unit": [c.get("unit", "") for c in columns.values()],
            "by_magnitude": [c.get("callback") == "fio2_unit_by_magnitude" for c in columns.values()],
        }
    )
    long = (
        frame.select("stay_id", "time", "source_row", *columns)
        .unpivot(index=["stay_id", "time", "source_row"], on=list(columns))
        .drop_nulls("value")
        .join(spec_frame, on="variable", how="left")
    )
    number = pl.col("value").cast(pl.Float64, strict=False)
    long = long.with_columns(
        pl.when(pl.col("by_magnitude") & (number > 1))
        .then(pl.lit("%"))
        .otherwise(pl.col("unit"))
        .alias("unit")
    )
    for (column,), rows in long.partition_by(["variable"], as_dict=True, maintain_order=True).items():
        concept = str(rows["concept"][0])
        collector.add(
            concept, rows.select("stay_id", "time", "value", "unit", "source_row"), table=str(column)
        )
    labels = frame.select(
        "stay_id", "time", pl.col("_hour").alias("iculos"), pl.col("_label").alias("sepsis_label")
    ).sort("stay_id", "time")
    data = collector.build(
        {"labels": labels, "sepsis_onset": _onsets(labels, int(mapping["label_shift_hours"]))}
    )
    # Trace each value to its file: source = physionet2019:<column>, source_row = the row in the stay's file.
    data.notes.append("source = physionet2019:<column>; source_row = data row in <stay_id>.psv")
    return data


def _stays(frame: pl.DataFrame, epoch: pl.Expr) -> pl.DataFrame:
    per = frame.group_by("stay_id").agg(
        pl.col("Age").cast(pl.Float64, strict=False).first().alias("age"),
        pl.col("Gender").cast(pl.Float64, strict=False).first().alias("_gender"),
        pl.col("HospAdmTime").cast(pl.Float64, strict=False).first().alias("_hosp"),
        pl.col("_hour").max().alias("_last"),
    )
    return (
        per.select(
            "stay_id",
            pl.col("stay_id").alias("patient_id"),
            pl.lit(None, dtype=pl.String).alias("hospital_admission_id"),
            (epoch + _hours(pl.col("_hosp"))).alias("admission_time"),
            epoch.alias("icu_intime"),
            (epoch + _hours(pl.col("_last"))).alias("icu_outtime"),
            "age",
            pl.col("_gender")
            .replace_strict({0.0: "F", 1.0: "M"}, default=None, return_dtype=pl.String)
            .alias("sex"),
            pl.lit(None, dtype=pl.Float64).alias("weight_kg"),
            pl.lit(None, dtype=pl.Float64).alias("height_cm"),
            pl.lit(None, dtype=UTC_TIME).alias("death_time"),
            pl.lit(None, dtype=UTC_TIME).alias("hospital_discharge_time"),
        )
        .cast(STAYS_SCHEMA)  # type: ignore[arg-type]
        .sort("stay_id")
    )


def _onsets(labels: pl.DataFrame, shift_hours: int) -> pl.DataFrame:
    """Per stay: any label, first labelled time, and t_sepsis (first label + shift, unless the first
    labelled row is the stay's first row: then onset precedes the data and is left null)."""
    per = labels.group_by("stay_id").agg(
        (pl.col("sepsis_label") == 1).any().alias("sepsis_label_any"),
        pl.col("time").filter(pl.col("sepsis_label") == 1).min().alias("first_label_time"),
        pl.col("time").min().alias("_first_row"),
    )
    onset = (
        pl.when(
            pl.col("first_label_time").is_not_null() & (pl.col("first_label_time") > pl.col("_first_row"))
        )
        .then(pl.col("first_label_time") + pl.duration(hours=shift_hours))
        .otherwise(None)
    )
    return per.with_columns(onset.alias("sepsis_onset_time")).drop("_first_row").sort("stay_id")
