"""MIMIC-IV adapter (full database layout, or the demo with its MEDS chart events).

``load_mimic_iv(path)`` reads hosp/ and icu/ under ``path`` through ``mimic-iv.yaml``. With
``icu/chartevents`` present it is the chart source; without it (the demo) ``mimic-iv-demo.yaml`` applies
and chart values come from a MEDS event file (``meds_path=``, or found next to the data set as the
demo mapping says). Times are the database's (date-shifted) times, read as UTC.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from immunostrat.concepts.units import UREG
from immunostrat.errors import InputError
from immunostrat.sources.base import STAYS_SCHEMA, SourceData
from immunostrat.sources.collect import UTC_TIME, Collector, assign_to_stays, find_table, scan_table
from immunostrat.sources.mapping import TableSpec, load_mapping
from immunostrat.sources.tabular import SHARED_CALLBACKS, Provided, TabularContext, parse_time, read_tables

SOURCE = "mimic-iv"
_LB_TO_KG = float(UREG.Quantity(1.0, "lb").to("kg").magnitude)
_IN_TO_CM = float(UREG.Quantity(1.0, "inch").to("cm").magnitude)


def _read(root: Path, file: str, columns: list[str]) -> pl.DataFrame:
    path = find_table(root, file)
    if path is None:
        raise InputError(
            "MIMIC-IV table missing", file=str(root / file), expected=f"{file}.csv.gz or .parquet"
        )
    return scan_table(path).select(columns).collect()


def meds_chartevents(meds_file: Path, min_itemid: int = 220000) -> pl.LazyFrame:
    """MEDS ``LAB//<itemid>//<unit>`` events at or above ``min_itemid`` shaped like icu/chartevents.

    float32 values are written as their shortest decimal text (33546.0, 98.7), which is the rounding
    the design asks for before any band edge is compared.
    """
    parts = pl.col("code").str.split("//")
    return (
        pl.scan_parquet(meds_file)
        .with_row_index("source_row", offset=1)
        .filter(pl.col("code").str.starts_with("LAB//"))
        .with_columns(
            parts.list.get(1, null_on_oob=True).alias("itemid"),
            parts.list.get(2, null_on_oob=True).alias("valueuom"),
        )
        .filter(pl.col("itemid").cast(pl.Int64, strict=False) >= min_itemid)
        .select(
            pl.col("source_row"),
            pl.col("subject_id").cast(pl.String),
            pl.col("time").alias("charttime"),
            "itemid",
            pl.col("value").cast(pl.String).alias("valuenum"),
            pl.when(pl.col("valueuom") == "UNK").then(None).otherwise(pl.col("valueuom")).alias("valueuom"),
            pl.lit(None, dtype=pl.String).alias("value"),
        )
    )


def meds_tube_verbal(chart: pl.LazyFrame, root: Path, mapping: dict[str, object]) -> pl.LazyFrame:
    """MEDS keeps GCS verbal "No Response-ETT" only as its number, 1 (text values are not in MEDS). A
    verbal 1 charted during invasive ventilation (procedureevents, ``meds.tube_itemids``) is given the
    text "No Response-ETT" back, so that the GCS rule of the full database applies (mimic-iv.yaml gcs)."""
    meds = dict(mapping.get("meds") or {})  # type: ignore[call-overload]
    tube = [str(i) for i in meds.get("tube_itemids", [])]
    verbal = str(meds.get("verbal_itemid", ""))
    path = find_table(root, "icu/procedureevents")
    if not tube or not verbal or path is None:
        return chart
    raw = scan_table(path).select("subject_id", "itemid", "starttime", "endtime").collect()
    periods = raw.filter(pl.col("itemid").cast(pl.String).is_in(tube)).select(
        pl.col("subject_id").cast(pl.String),
        parse_time("starttime", raw.schema["starttime"]).alias("_start"),
        parse_time("endtime", raw.schema["endtime"]).alias("_end"),
    )
    time = pl.col("charttime").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    candidates = chart.filter(
        (pl.col("itemid") == verbal) & (pl.col("valuenum").cast(pl.Float64, strict=False) == 1)
    )
    tubed = (
        candidates.join(periods.lazy(), on="subject_id", how="inner")
        .filter((time >= pl.col("_start")) & (time <= pl.col("_end")))
        .select("source_row")
        .unique()
        .with_columns(pl.lit("No Response-ETT").alias("_tube"))
    )
    return (
        chart.join(tubed, on="source_row", how="left")
        .with_columns(pl.coalesce("_tube", "value").alias("value"))
        .drop("_tube")
    )


def _chart_rows(
    chart: pl.LazyFrame | None, itemids: list[int], stays: pl.DataFrame, by_stay: bool
) -> pl.DataFrame:
    """stay_id, itemid, time, number for the given chart item ids (stay attributes)."""
    schema: dict[str, pl.DataType] = {
        "stay_id": pl.String(),
        "itemid": pl.String(),
        "time": UTC_TIME,
        "number": pl.Float64(),
    }
    if chart is None or not itemids:
        return pl.DataFrame(schema=schema)
    ids = [str(i) for i in itemids]
    frame = chart.filter(pl.col("itemid").cast(pl.String).is_in(ids)).collect()
    frame = frame.with_columns(
        parse_time("charttime", frame.schema["charttime"]).alias("time"),
        pl.col("valuenum").cast(pl.Float64, strict=False).alias("number"),
        pl.col("itemid").cast(pl.String),
    ).filter(pl.col("number").is_not_null() & pl.col("time").is_not_null())
    if by_stay:
        frame = frame.with_columns(pl.col("stay_id").cast(pl.String))
    else:
        frame = assign_to_stays(
            frame.with_columns(pl.col("subject_id").alias("_subject"), pl.col("source_row").alias("_rid")),
            stays,
            subject="_subject",
        )
    return frame.select(list(schema)).cast(schema)  # type: ignore[arg-type]


def _first(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    return frame.sort("time").group_by("stay_id").agg(pl.col("number").first().alias(name))


def build_stays(
    root: Path, mapping: dict[str, object], chart: pl.LazyFrame | None, chart_by_stay: bool
) -> pl.DataFrame:
    """One row per icustays row: admission, age (anchor_age + years since anchor_year), sex, weight,
    height, death (admissions.deathtime, else patients.dod) and hospital discharge."""
    icu = _read(root, "icu/icustays", ["subject_id", "hadm_id", "stay_id", "intime", "outtime"])
    adm = _read(root, "hosp/admissions", ["hadm_id", "admittime", "dischtime", "deathtime"])
    pat = _read(root, "hosp/patients", ["subject_id", "gender", "anchor_age", "anchor_year", "dod"])
    frame = icu.join(adm, on="hadm_id", how="left").join(pat, on="subject_id", how="left")
    frame = frame.with_columns(
        [
            parse_time(c, frame.schema[c]).alias(c)
            for c in ("intime", "outtime", "admittime", "dischtime", "deathtime", "dod")
        ]
    )
    age = pl.col("anchor_age").cast(pl.Float64, strict=False) + (
        pl.col("intime").dt.year() - pl.col("anchor_year").cast(pl.Int32, strict=False)
    ).cast(pl.Float64)
    stays = frame.select(
        pl.col("stay_id").cast(pl.String),
        pl.col("subject_id").cast(pl.String).alias("patient_id"),
        pl.col("hadm_id").cast(pl.String).alias("hospital_admission_id"),
        pl.col("admittime").alias("admission_time"),
        pl.col("intime").alias("icu_intime"),
        pl.col("outtime").alias("icu_outtime"),
        age.alias("age"),
        pl.col("gender")
        .cast(pl.String)
        .str.to_uppercase()
        .replace({"FEMALE": "F", "MALE": "M"})
        .alias("sex"),
        pl.coalesce("deathtime", "dod").alias("death_time"),
        pl.col("dischtime").alias("hospital_discharge_time"),
    )
    spec = dict(mapping.get("stays") or {})  # type: ignore[call-overload]
    kg_ids = [int(i) for i in spec.get("weight_kg_itemids", [])]
    lb_ids = [int(i) for i in spec.get("weight_lb_itemids", [])]
    cm_ids = [int(i) for i in spec.get("height_cm_itemids", [])]
    in_ids = [int(i) for i in spec.get("height_in_itemids", [])]
    chart_rows = _chart_rows(chart, kg_ids + lb_ids + cm_ids + in_ids, stays, chart_by_stay)
    weights = []
    for itemid in kg_ids:
        weights.append(_first(chart_rows.filter(pl.col("itemid") == str(itemid)), f"w{itemid}"))
    lbs = chart_rows.filter(pl.col("itemid").is_in([str(i) for i in lb_ids])).with_columns(
        pl.col("number") * _LB_TO_KG
    )
    weights.insert(1, _first(lbs, "w_lb"))
    infusion = find_table(root, "icu/inputevents")
    if infusion is not None:
        raw = scan_table(infusion).select("stay_id", "starttime", "patientweight").collect()
        iw = raw.select(
            pl.col("stay_id").cast(pl.String),
            parse_time("starttime", raw.schema["starttime"]).alias("time"),
            pl.col("patientweight").cast(pl.Float64, strict=False).alias("number"),
        ).filter(pl.col("number") > 0)
        weights.insert(2, _first(iw, "w_infusion"))
    heights = [
        _first(chart_rows.filter(pl.col("itemid").is_in([str(i) for i in cm_ids])), "h_cm"),
        _first(
            chart_rows.filter(pl.col("itemid").is_in([str(i) for i in in_ids])).with_columns(
                pl.col("number") * _IN_TO_CM
            ),
            "h_in",
        ),
    ]
    omr = _omr(root, stays, spec)
    for table in [*weights, *heights, omr]:
        stays = stays.join(table, on="stay_id", how="left")
    weight_cols = [t.columns[1] for t in weights] + (
        ["omr_weight_kg"] if "omr_weight_kg" in stays.columns else []
    )
    height_cols = ["h_cm", "h_in"] + (["omr_height_cm"] if "omr_height_cm" in stays.columns else [])
    plausible_w = [pl.when((pl.col(c) >= 0.5) & (pl.col(c) <= 400)).then(pl.col(c)) for c in weight_cols]
    plausible_h = [pl.when((pl.col(c) >= 20) & (pl.col(c) <= 260)).then(pl.col(c)) for c in height_cols]
    stays = stays.with_columns(
        pl.coalesce(plausible_w).round(3).alias("weight_kg"),
        pl.coalesce(plausible_h).round(1).alias("height_cm"),
    )
    return stays.select(list(STAYS_SCHEMA)).cast(STAYS_SCHEMA).sort("stay_id")  # type: ignore[arg-type]


def _omr(root: Path, stays: pl.DataFrame, spec: dict[str, object]) -> pl.DataFrame:
    """Last OMR weight/height charted on or before the ICU admission date."""
    path = find_table(root, "hosp/omr")
    empty = stays.select("stay_id")
    if path is None:
        return empty
    omr = scan_table(path).select("subject_id", "chartdate", "result_name", "result_value").collect()
    omr = omr.with_columns(
        parse_time("chartdate", omr.schema["chartdate"]).alias("date"),
        pl.col("result_value")
        .cast(pl.String)
        .str.extract(r"^\s*([0-9.]+)", 1)
        .cast(pl.Float64, strict=False)
        .alias("v"),
        pl.col("subject_id").cast(pl.String),
    ).filter(pl.col("v").is_not_null())
    out = empty
    for key, factor, name in (
        ("omr_weight_lb", _LB_TO_KG, "omr_weight_kg"),
        ("omr_height_in", _IN_TO_CM, "omr_height_cm"),
    ):
        label = spec.get(key)
        if not label:
            continue
        rows = omr.filter(pl.col("result_name") == str(label))
        joined = (
            stays.select("stay_id", pl.col("patient_id").alias("subject_id"), "icu_intime")
            .join(rows, on="subject_id", how="inner")
            .filter(pl.col("date") <= pl.col("icu_intime"))
            .sort("date")
            .group_by("stay_id")
            .agg((pl.col("v").last() * factor).alias(name))
        )
        out = out.join(joined, on="stay_id", how="left")
    return out


def _find_meds(root: Path, mapping: dict[str, object]) -> Path | None:
    meds = dict(mapping.get("meds") or {})  # type: ignore[call-overload]
    for candidate in meds.get("search", []):
        path = (root / str(candidate)).resolve()
        if path.is_file():
            return path
    return None


def load_mimic_iv(
    path: str | Path, *, meds_path: str | Path | None = None, mapping: str | None = None
) -> SourceData:
    """Stays and canonical observations from a MIMIC-IV folder (hosp/ + icu/)."""
    root = Path(path)
    if not (root / "hosp").is_dir() or not (root / "icu").is_dir():
        raise InputError("not a MIMIC-IV folder", file=str(root), expected="a folder with hosp/ and icu/")
    has_chartevents = find_table(root, "icu/chartevents") is not None
    name = mapping or ("mimic-iv" if has_chartevents else "mimic-iv-demo")
    spec = load_mapping(name)
    notes = [f"mapping {name}.yaml; times are MIMIC-IV's date-shifted times, read as UTC"]
    use_meds = meds_path is not None or (spec.get("chart_source") == "meds" and not has_chartevents)
    provided: dict[str, Provided] = {}
    chart: pl.LazyFrame | None = None
    chart_by_stay = True
    if use_meds:
        meds_file = Path(meds_path) if meds_path is not None else _find_meds(root, spec)
        if meds_file is None or not meds_file.is_file():
            notes.append(
                "icu/chartevents missing and no MEDS file found: chart concepts are absent (pass meds_path=)"
            )
        else:
            min_itemid = int(dict(spec.get("meds") or {}).get("min_chart_itemid", 220000))
            chart = meds_tube_verbal(meds_chartevents(meds_file, min_itemid), root, spec)
            chart_by_stay = False
            provided["chartevents"] = Provided(
                chart,
                TableSpec(file="icu/chartevents", subject_column="subject_id"),
                f"meds/{meds_file.name}",
            )
            notes.append(
                f"chart values from MEDS file {meds_file.name} (float32 values read as their shortest "
                "decimal; rows given to the subject's ICU stay containing their time; text values such as "
                "the O2 device are not in MEDS; GCS verbal 1 during invasive ventilation is read as "
                "'No Response-ETT')"
            )
    elif has_chartevents:
        chart_path = find_table(root, "icu/chartevents")
        assert chart_path is not None
        chart = scan_table(chart_path)
    stays = build_stays(root, spec, chart, chart_by_stay)
    collector = Collector(SOURCE, stays, notes=notes)
    ctx = TabularContext(root, spec, collector, dict(SHARED_CALLBACKS), provided)
    read_tables(ctx)
    collector.notes.append(
        "mechanical_ventilation: procedureevents invasive/non-invasive ventilation periods as hourly points"
        + ("" if use_meds else ", plus O2 delivery device text in chartevents")
    )
    collector.notes.append(
        "vasopressor and ventilation periods are expanded to hourly points; "
        "tables['intervals'] has their start/end"
    )
    return collector.build()
