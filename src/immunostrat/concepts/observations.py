"""Reading and validating observations into the canonical long table (design.md section 2).

Input: ``patient_id, time, concept, value, unit`` (CSV or Parquet; time ISO 8601 or hours since
admission) and an optional patient table ``patient_id, age, sex, weight_kg, height_cm
[, admission_time]``. Output columns: ``patient_id, time (UTC), concept, value (canonical unit),
unit (canonical), source, source_row``. Validation is vectorised: one conversion per distinct
(concept, unit) pair, then column arithmetic, so a million rows read in about a second.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.concepts.dictionary import load_concepts
from immunostrat.concepts.units import DECIMALS, UnitError, conversion_for
from immunostrat.errors import InputError

OBSERVATION_COLUMNS = ("patient_id", "time", "concept", "value", "unit")
PATIENT_COLUMNS = ("patient_id", "age", "sex", "weight_kg", "height_cm")
CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "time": pl.Datetime("us", "UTC"),
    "concept": pl.String(),
    "value": pl.Float64(),
    "unit": pl.String(),
    "source": pl.String(),
    "source_row": pl.Int64(),
}
PATIENT_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "age": pl.Float64(),
    "sex": pl.String(),
    "weight_kg": pl.Float64(),
    "height_cm": pl.Float64(),
    "admission_time": pl.Datetime("us", "UTC"),
}
# Hours-since-admission times with no admission time in the patient table are anchored here; the
# anchor used is recorded in ObservationSet.time_anchor.
DEFAULT_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MAX_RELATIVE_HOURS = 24 * 366 * 10  # ten years of a stay: larger numbers are not hours since admission

# Patient-table plausible ranges: physiological limits that catch typing and unit mistakes.
_PATIENT_RANGES = {"age": (0.0, 120.0), "weight_kg": (0.5, 400.0), "height_cm": (20.0, 260.0)}
_SEX = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}


@dataclass
class ObservationSet:
    """Validated observations plus what was dropped (``--lenient``) and how times were anchored."""

    observations: pl.DataFrame
    patients: pl.DataFrame
    rejected: list[InputError] = field(default_factory=list)
    time_anchor: str = "absolute"


def empty_observations() -> pl.DataFrame:
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def empty_patients() -> pl.DataFrame:
    return pl.DataFrame(schema=PATIENT_SCHEMA)


def _check_header(header: list[str], required: Iterable[str], file: str) -> None:
    seen: set[str] = set()
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise InputError(
                "duplicate column in header",
                file=file,
                row=None,
                field=name,
                value=name,
                expected=f"each column once (column {position} repeats it)",
            )
        seen.add(name)
    for name in required:
        if name not in seen:
            raise InputError(
                "missing column",
                file=file,
                field=name,
                value=",".join(header),
                expected=f"columns {', '.join(required)}",
            )


def read_table(path: str | Path, required: Iterable[str]) -> pl.DataFrame:
    """Read a CSV or Parquet file with every column as text, after checking its header."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InputError("file not found", file=name, expected="an existing CSV or Parquet file")
    suffix = path.suffix.lower()
    required = list(required)
    if suffix == ".parquet":
        frame = pl.read_parquet(path)
        _check_header(frame.columns, required, name)
        return frame.with_columns(pl.all().cast(pl.String))
    if suffix not in {".csv", ".txt", ".tsv"}:
        raise InputError("unsupported file type", file=name, value=suffix, expected=".csv or .parquet")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
    separator = "\t" if suffix == ".tsv" else ","
    header = next(csv.reader(io.StringIO(first), delimiter=separator), [])
    header = [h.strip() for h in header]
    _check_header(header, required, name)
    try:
        frame = pl.read_csv(path, infer_schema=False, separator=separator, encoding="utf8-lossy")
    except pl.exceptions.ComputeError as exc:
        raise InputError(f"unreadable CSV: {exc}".splitlines()[0], file=name) from exc
    return frame.rename({old: old.strip() for old in frame.columns})


def _to_utc(column: pl.Expr) -> pl.Expr:
    return column.str.strip_chars().str.to_datetime(strict=False, time_zone="UTC", time_unit="us")


def _parse_time_slow(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_times(text: pl.Series) -> pl.Series:
    """ISO 8601 strings to UTC datetimes (naive times are taken as UTC); unparseable -> null."""
    fast = pl.DataFrame({"t": text}).select(_to_utc(pl.col("t")))["t"]
    missing = fast.is_null() & text.is_not_null() & (text.str.strip_chars() != "")
    if missing.any():
        values = fast.to_list()
        texts = text.to_list()
        for i in missing.arg_true().to_list():
            values[i] = _parse_time_slow(texts[i])
        fast = pl.Series("t", values, dtype=pl.Datetime("us", "UTC"))
    return fast


def _error_rows(
    frame: pl.DataFrame,
    mask: pl.Expr,
    field_name: str,
    value: pl.Expr,
    message: pl.Expr | str,
    expected: pl.Expr | str,
) -> pl.DataFrame:
    as_expr = lambda x: pl.lit(x) if isinstance(x, str) else x  # noqa: E731
    return frame.filter(mask).select(
        pl.col("source_row"),
        pl.lit(field_name).alias("field"),
        value.cast(pl.String).alias("value"),
        as_expr(message).cast(pl.String).alias("message"),
        as_expr(expected).cast(pl.String).alias("expected"),
    )


def read_patients(path: str | Path) -> pl.DataFrame:
    """Read and validate the patient table."""
    raw = read_table(path, ["patient_id"])
    return validate_patients(raw, source=str(path))


def validate_patients(raw: pl.DataFrame, source: str = "patients") -> pl.DataFrame:
    """Validate a patient table given as text columns; raises InputError on the first bad row."""
    frame = raw.with_row_index("source_row", offset=1).with_columns(pl.col("source_row").cast(pl.Int64))
    for name in ("age", "sex", "weight_kg", "height_cm", "admission_time"):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
    duplicated = frame.filter(~pl.col("patient_id").is_first_distinct())
    if duplicated.height:
        row = duplicated.row(0, named=True)
        raise InputError(
            "patient listed twice",
            file=source,
            row=row["source_row"],
            field="patient_id",
            value=row["patient_id"],
            expected="one row per patient",
        )
    out: dict[str, Any] = {"patient_id": frame["patient_id"].cast(pl.String)}
    for name, (low, high) in _PATIENT_RANGES.items():
        text = frame[name].cast(pl.String).str.strip_chars()
        number = text.cast(pl.Float64, strict=False)
        bad = (number.is_null() & text.is_not_null() & (text != "")) | (number < low) | (number > high)
        if bad.any():
            i = bad.arg_true()[0]
            raise InputError(
                f"{name} is not a number in the plausible range",
                file=source,
                row=int(frame["source_row"][i]),
                field=name,
                value=text[i],
                expected=f"a number from {low:g} to {high:g}",
            )
        out[name] = number
    sex_text = frame["sex"].cast(pl.String).str.strip_chars().str.to_lowercase()
    sex = sex_text.replace_strict(_SEX, default=None, return_dtype=pl.String)
    bad_sex = sex.is_null() & sex_text.is_not_null() & (sex_text != "")
    if bad_sex.any():
        i = bad_sex.arg_true()[0]
        raise InputError(
            "unknown sex",
            file=source,
            row=int(frame["source_row"][i]),
            field="sex",
            value=frame["sex"][i],
            expected="F or M (female/male)",
        )
    out["sex"] = sex
    adm_text = frame["admission_time"].cast(pl.String)
    admission = parse_times(adm_text)
    bad_adm = admission.is_null() & adm_text.is_not_null() & (adm_text.str.strip_chars() != "")
    if bad_adm.any():
        i = bad_adm.arg_true()[0]
        raise InputError(
            "admission_time is not an ISO 8601 time",
            file=source,
            row=int(frame["source_row"][i]),
            field="admission_time",
            value=adm_text[i],
            expected="e.g. 2024-03-01T08:00:00Z",
        )
    out["admission_time"] = admission
    return pl.DataFrame(out).cast(PATIENT_SCHEMA)  # type: ignore[arg-type]


def _conversion_table(pairs: pl.DataFrame) -> pl.DataFrame:
    rows: list[tuple[Any, ...]] = []
    for concept, unit in pairs.iter_rows():
        try:
            conv = conversion_for(concept, unit)
            rows.append((concept, unit, conv.scale, conv.offset, conv.per_weight_kg, None, None))
        except UnitError as exc:
            rows.append((concept, unit, None, None, None, str(exc), exc.expected))
    return pl.DataFrame(
        rows,
        schema={
            "concept": pl.String,
            "unit": pl.String,
            "_scale": pl.Float64,
            "_offset": pl.Float64,
            "_per_weight": pl.Boolean,
            "_unit_error": pl.String,
            "_unit_expected": pl.String,
        },
        orient="row",
    )


def canonicalize(
    raw: pl.DataFrame,
    *,
    source: str,
    patients: pl.DataFrame | None = None,
    lenient: bool = False,
    source_rows: pl.Series | None = None,
) -> tuple[pl.DataFrame, list[InputError], str]:
    """Validate raw text observations and convert them to canonical units.

    Returns (canonical frame, rejected rows, time anchor). Strict mode raises InputError on the
    first bad row (in file order); lenient mode drops bad rows and returns each as an InputError.
    """
    concepts = load_concepts()
    patients = patients if patients is not None else empty_patients()
    frame = raw.select([pl.col(c).cast(pl.String) for c in OBSERVATION_COLUMNS])
    rows = source_rows if source_rows is not None else pl.int_range(1, raw.height + 1, eager=True)
    frame = frame.with_columns(
        rows.cast(pl.Int64).alias("source_row"),
        pl.col("patient_id").str.strip_chars(),
        pl.col("concept").str.strip_chars(),
        pl.col("unit").fill_null("").str.strip_chars(),
        pl.col("value").str.strip_chars(),
        pl.col("time").str.strip_chars(),
    )
    errors: list[pl.DataFrame] = []
    errors.append(
        _error_rows(
            frame,
            pl.col("patient_id").is_null() | (pl.col("patient_id") == ""),
            "patient_id",
            pl.col("patient_id"),
            "missing patient_id",
            "a patient identifier",
        )
    )
    known = pl.col("concept").is_in(concepts.ids())
    errors.append(
        _error_rows(
            frame,
            ~known,
            "concept",
            pl.col("concept"),
            "unknown concept",
            "a concept id from `immunostrat concepts`",
        )
    )
    # Value: numeric text. Binary concepts also take true/false/yes/no.
    value_text = pl.col("value").str.to_lowercase()
    boolean = value_text.replace_strict(
        {"true": "1", "yes": "1", "false": "0", "no": "0"}, default=value_text
    )
    frame = frame.with_columns(boolean.cast(pl.Float64, strict=False).alias("_number"))
    errors.append(
        _error_rows(
            frame,
            known & pl.col("_number").is_null(),
            "value",
            pl.col("value"),
            "value is not a number",
            "a number (decimal point '.', no thousands separator)",
        )
    )
    errors.append(
        _error_rows(
            frame,
            known & pl.col("_number").is_nan(),
            "value",
            pl.col("value"),
            "value is not a number",
            "a finite number",
        )
    )
    # Units: one conversion per distinct (concept, unit) pair.
    pairs = frame.filter(known).select("concept", "unit").unique()
    frame = frame.join(_conversion_table(pairs), on=["concept", "unit"], how="left")
    errors.append(
        _error_rows(
            frame,
            known & pl.col("_unit_error").is_not_null(),
            "unit",
            pl.col("unit"),
            pl.col("_unit_error"),
            pl.col("_unit_expected"),
        )
    )
    # Weight-based drug rates need the patient's recorded weight (never a fixed weight).
    frame = frame.join(
        patients.select("patient_id", "weight_kg", "admission_time"), on="patient_id", how="left"
    )
    needs_weight = pl.col("_per_weight").fill_null(False)
    errors.append(
        _error_rows(
            frame,
            needs_weight & pl.col("weight_kg").is_null(),
            "unit",
            pl.col("unit"),
            pl.format("{} in {} needs the patient's weight", pl.col("concept"), pl.col("unit")),
            "weight_kg for this patient in the patient table, or a rate per kg",
        )
    )
    converted = pl.col("_number") * pl.col("_scale") + pl.col("_offset")
    converted = (
        pl.when(needs_weight).then(converted / pl.col("weight_kg")).otherwise(converted).round(DECIMALS)
    )
    frame = frame.with_columns(converted.alias("_canonical"))
    # Plausible range, checked in the canonical unit.
    bounds = pl.DataFrame(
        [(c.id, c.plausible[0], c.plausible[1], c.canonical_unit, c.range_text()) for c in concepts],
        schema={
            "concept": pl.String,
            "_low": pl.Float64,
            "_high": pl.Float64,
            "_canonical_unit": pl.String,
            "_range_text": pl.String,
        },
        orient="row",
    )
    frame = frame.join(bounds, on="concept", how="left")
    outside = pl.col("_canonical").is_not_null() & (
        (pl.col("_canonical") < pl.col("_low")) | (pl.col("_canonical") > pl.col("_high"))
    )
    errors.append(
        _error_rows(
            frame,
            outside,
            "value",
            pl.col("value"),
            pl.format("{} = {} is outside the plausible range", pl.col("concept"), pl.col("_canonical")),
            pl.col("_range_text"),
        )
    )
    # Time: ISO 8601, or hours since admission (anchored to admission_time, else DEFAULT_EPOCH).
    # A number is hours since admission only when finite and within MAX_RELATIVE_HOURS: "20240301" is
    # an ISO 8601 basic date, not 20 million hours.
    hours = pl.col("time").cast(pl.Float64, strict=False)
    valid_hours = hours.is_finite() & (hours.abs() <= MAX_RELATIVE_HOURS)
    frame = frame.with_columns(pl.when(valid_hours).then(hours).otherwise(None).alias("_hours"))
    absolute = parse_times(frame["time"])
    frame = frame.with_columns(absolute.alias("_absolute"))
    relative = frame.select(pl.col("_hours").is_not_null().any()).item()
    anchor_used = "absolute"
    if relative:
        with_adm = frame.select(
            (pl.col("_hours").is_not_null() & pl.col("admission_time").is_not_null()).any()
        ).item()
        without_adm = frame.select(
            (pl.col("_hours").is_not_null() & pl.col("admission_time").is_null()).any()
        ).item()
        anchor_used = "hours since admission_time" if with_adm else ""
        if without_adm:
            anchor_used = (anchor_used + "; " if anchor_used else "") + (
                f"hours since {DEFAULT_EPOCH.isoformat()} (no admission_time)"
            )
    anchor = pl.coalesce(pl.col("admission_time"), pl.lit(DEFAULT_EPOCH).cast(pl.Datetime("us", "UTC")))
    time = (
        pl.when(pl.col("_hours").is_not_null())
        .then(anchor + pl.duration(microseconds=(pl.col("_hours") * 3_600_000_000).round(0).cast(pl.Int64)))
        .otherwise(pl.col("_absolute"))
    )
    frame = frame.with_columns(time.alias("_time"))
    errors.append(
        _error_rows(
            frame,
            pl.col("_time").is_null(),
            "time",
            pl.col("time"),
            "time is neither ISO 8601 nor hours since admission",
            "e.g. 2024-03-01T08:00:00Z or 12.5",
        )
    )
    error_frame = pl.concat(errors).sort("source_row", maintain_order=True)
    rejected = [
        InputError(
            r["message"],
            file=source,
            row=r["source_row"],
            field=r["field"],
            value=r["value"],
            expected=r["expected"],
        )
        for r in error_frame.unique(subset=["source_row"], keep="first", maintain_order=True).iter_rows(
            named=True
        )
    ]
    if rejected and not lenient:
        raise rejected[0]
    bad_rows = error_frame["source_row"].unique()
    good = frame.filter(~pl.col("source_row").is_in(bad_rows.implode()))
    out = good.select(
        pl.col("patient_id"),
        pl.col("_time").alias("time"),
        pl.col("concept"),
        pl.col("_canonical").alias("value"),
        pl.col("_canonical_unit").alias("unit"),
        pl.lit(source).alias("source"),
        pl.col("source_row"),
    ).cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    return out.sort("patient_id", "time", "concept", "source_row"), rejected, anchor_used


def read_observations(
    path: str | Path, patients: str | Path | pl.DataFrame | None = None, *, lenient: bool = False
) -> ObservationSet:
    """Read, validate and convert a long observation file (and its optional patient table)."""
    raw = read_table(path, OBSERVATION_COLUMNS)
    if isinstance(patients, pl.DataFrame):
        patient_frame = patients
    elif patients is not None:
        patient_frame = read_patients(patients)
    else:
        patient_frame = empty_patients()
    frame, rejected, anchor = canonicalize(raw, source=str(path), patients=patient_frame, lenient=lenient)
    return ObservationSet(frame, patient_frame, rejected, anchor)


def observations_from_records(
    records: Iterable[Mapping[str, Any]],
    patients: Iterable[Mapping[str, Any]] | pl.DataFrame | None = None,
    *,
    source: str = "request",
    lenient: bool = False,
) -> ObservationSet:
    """Validate in-memory records (e.g. an API request body) exactly as a file would be."""
    rows = [{c: (None if r.get(c) is None else str(r.get(c))) for c in OBSERVATION_COLUMNS} for r in records]
    raw = pl.DataFrame(rows, schema={c: pl.String for c in OBSERVATION_COLUMNS})
    if patients is None:
        patient_frame = empty_patients()
    elif isinstance(patients, pl.DataFrame):
        patient_frame = patients
    else:
        prow = [{k: (None if v is None else str(v)) for k, v in p.items()} for p in patients]
        columns = sorted({k for p in prow for k in p} | {"patient_id"})
        patient_frame = validate_patients(pl.DataFrame(prow, schema={c: pl.String for c in columns}), source)
    frame, rejected, anchor = canonicalize(raw, source=source, patients=patient_frame, lenient=lenient)
    return ObservationSet(frame, patient_frame, rejected, anchor)
