"""Reading and validating observations into the canonical long table (design.md section 2).

Input: ``patient_id, time, concept, value, unit`` (CSV or Parquet; time ISO 8601 or hours since
admission, or every time in one named strftime format; concept an id, LOINC code, alias or site code;
delimiter ',' or detected from the header) and an optional patient table ``patient_id, age, sex,
weight_kg, height_cm [, admission_time]``. Output columns: ``patient_id, time (UTC), concept,
value (canonical unit), unit (canonical), source, source_row``. Validation is vectorised: one
conversion per distinct (concept, unit) pair, then column arithmetic, so a million rows read in about
a second.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.concepts.dictionary import ConceptDictionary, load_concepts
from immunostrat.concepts.site_codes import SiteCodes
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
PATIENT_RANGES = {"age": (0.0, 120.0), "weight_kg": (0.5, 400.0), "height_cm": (20.0, 260.0)}
_SEX = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}


@dataclass
class ObservationSet:
    """Validated observations plus what was dropped (``--lenient``) and how times were anchored."""

    observations: pl.DataFrame
    patients: pl.DataFrame
    rejected: list[InputError] = field(default_factory=list)
    time_anchor: str = "absolute"
    notes: list[str] = field(default_factory=list)


def empty_observations() -> pl.DataFrame:
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def empty_patients() -> pl.DataFrame:
    return pl.DataFrame(schema=PATIENT_SCHEMA)


def _check_header(header: list[str], required: Iterable[str], file: str, delimiter: str = ",") -> None:
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
                value=delimiter.join(header),
                expected=f"columns {', '.join(required)}"
                + ("" if delimiter == "," else f" (read with the delimiter {DELIMITERS[delimiter]})"),
            )


DELIMITERS = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


def _split_header(line: str, delimiter: str) -> list[str]:
    return [h.strip() for h in next(csv.reader(io.StringIO(line), delimiter=delimiter), [])]


def detect_delimiter(header_line: str, required: Iterable[str], file: str) -> str:
    """The delimiter of a CSV header: the one candidate (',', ';', tab, '|') it contains, else the one
    candidate that yields every required column; anything else is an error naming what was found."""
    counts = {d: header_line.count(d) for d in DELIMITERS}
    present = [d for d, n in counts.items() if n]
    if len(present) <= 1:
        return present[0] if present else ","
    wanted = set(required)
    fitting = [d for d in present if wanted <= set(_split_header(header_line, d))]
    if len(fitting) == 1:
        return fitting[0]
    found = ", ".join(f"{counts[d]} x {DELIMITERS[d]}" for d in present)
    raise InputError(
        "cannot tell the delimiter of the header",
        file=file,
        field="header",
        value=header_line.strip(),
        expected=f"one delimiter (',', ';', tab or '|') between the column names; found {found}",
    )


def read_table(path: str | Path, required: Iterable[str], notes: list[str] | None = None) -> pl.DataFrame:
    """Read a CSV or Parquet file with every column as text, after checking its header.

    A CSV's delimiter is detected from its header line (',', ';', tab or '|'); a detected delimiter
    other than ',' is reported in ``notes``.
    """
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
    separator = "\t" if suffix == ".tsv" else detect_delimiter(first, required, name)
    header = _split_header(first, separator)
    _check_header(header, required, name, separator)
    if separator != "," and suffix != ".tsv" and notes is not None:
        notes.append(f"{name}: read with the delimiter {DELIMITERS[separator]} (detected from the header)")
    try:
        frame = pl.read_csv(path, infer_schema=False, separator=separator, encoding="utf8-lossy")
    except pl.exceptions.ComputeError as exc:
        raise InputError(f"unreadable CSV: {exc}".splitlines()[0], file=name) from exc
    return frame.rename({old: old.strip() for old in frame.columns})


# ISO 8601 as files write it: extended (2024-03-01T08:00:00.5+02:00, space or T) or basic (20240301T0800Z).
# Anything else, 06/01/2025 above all (6 January or 1 June?), is refused, never guessed.
ISO_8601_PATTERN = (
    r"^(?:\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
    r"|\d{8}(?:T\d{4}(?:\d{2}(?:[.,]\d+)?)?)?)"
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?$"
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_SLASH_DATE = re.compile(r"\s*(\d{1,2})[/.](\d{1,2})[/.](\d{2,4})\b.*")
TIME_EXPECTED = (
    "ISO 8601 (e.g. 2024-03-01T08:00:00Z), hours since admission (e.g. 12.5), "
    "or --date-format naming the format (e.g. '%d/%m/%Y %H:%M')"
)


def time_error_text(value: str | None, date_format: str | None = None) -> tuple[str, str]:
    """(message, expected) for a time that could not be read."""
    if date_format is not None:
        return (
            f"time does not match --date-format {date_format!r}",
            f"every time written exactly as {date_format!r} (strftime)",
        )
    match = _SLASH_DATE.fullmatch(value or "")
    if match:
        first, second = int(match.group(1)), int(match.group(2))
        if 1 <= first <= 12 and 1 <= second <= 12 and first != second:
            return (
                f"ambiguous date: {first} {_MONTHS[second - 1]} or {second} {_MONTHS[first - 1]}? "
                "A date that is not ISO 8601 is never guessed",
                TIME_EXPECTED,
            )
        return ("time is not ISO 8601: a day/month date order is never guessed", TIME_EXPECTED)
    return ("time is neither ISO 8601 nor hours since admission", TIME_EXPECTED)


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


def _parse_with_format(text: pl.Series, date_format: str) -> pl.Series:
    try:
        parsed = text.str.strip_chars().str.strptime(pl.Datetime("us"), date_format, strict=False, exact=True)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError) as exc:
        raise InputError(
            f"unusable date format: {exc}".splitlines()[0],
            field="--date-format",
            value=date_format,
            expected="a strftime format such as '%d/%m/%Y %H:%M'",
        ) from None
    dtype = parsed.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return parsed.dt.convert_time_zone("UTC").alias("t")
    return parsed.dt.replace_time_zone("UTC").alias("t")


def parse_times(text: pl.Series, date_format: str | None = None) -> pl.Series:
    """Time strings to UTC datetimes (naive times are taken as UTC); unreadable -> null.

    Without ``date_format`` only ISO 8601 is read; with it (strftime) every value must match it exactly.
    """
    text = text.cast(pl.String)
    if date_format is not None:
        return _parse_with_format(text, date_format)
    # Non-ISO text is nulled before parsing, so that polars never infers its format from it.
    stripped = pl.col("t").str.strip_chars()
    iso_only = pl.when(stripped.str.contains(ISO_8601_PATTERN)).then(stripped)
    text, fast = (
        pl.DataFrame({"t": text})
        .lazy()
        .select(iso_only.alias("text"), _to_utc(iso_only).alias("t"))
        .collect()
        .get_columns()
    )
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
    kind: str = "",
    detail: pl.Expr | None = None,
) -> pl.DataFrame:
    """The rows ``mask`` marks as bad. ``kind`` names errors whose text is written per row afterwards
    (``_error_text``) from ``detail``: only bad rows pay for that."""
    as_expr = lambda x: pl.lit(x) if isinstance(x, str) else x  # noqa: E731
    return frame.filter(mask).select(
        pl.col("source_row"),
        pl.lit(field_name).alias("field"),
        value.cast(pl.String).alias("value"),
        as_expr(message).cast(pl.String).alias("message"),
        as_expr(expected).cast(pl.String).alias("expected"),
        pl.lit(kind).alias("kind"),
        (pl.lit(None, dtype=pl.String) if detail is None else detail.cast(pl.String)).alias("detail"),
    )


def _error_text(
    row: Mapping[str, Any], concepts: ConceptDictionary, date_format: str | None
) -> tuple[str, str]:
    if row["kind"] == "time":
        return time_error_text(row["value"], date_format)
    if row["kind"] == "unit_slip":
        concept_id, _, canonical = str(row["detail"]).partition("|")
        return concepts[concept_id].unit_slip_text(float(canonical))
    return row["message"], row["expected"]


def read_patients(path: str | Path, *, date_format: str | None = None) -> pl.DataFrame:
    """Read and validate the patient table."""
    raw = read_table(path, ["patient_id"])
    return validate_patients(raw, source=str(path), date_format=date_format)


def validate_patients(
    raw: pl.DataFrame, source: str = "patients", *, date_format: str | None = None
) -> pl.DataFrame:
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
    for name, (low, high) in PATIENT_RANGES.items():
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
    admission = parse_times(adm_text, date_format)
    bad_adm = admission.is_null() & adm_text.is_not_null() & (adm_text.str.strip_chars() != "")
    if bad_adm.any():
        i = bad_adm.arg_true()[0]
        message, expected = time_error_text(adm_text[i], date_format)
        raise InputError(
            message.replace("time", "admission_time", 1)
            if date_format
            else "admission_time is not an ISO 8601 time",
            file=source,
            row=int(frame["source_row"][i]),
            field="admission_time",
            value=adm_text[i],
            expected=expected
            if date_format
            else "e.g. 2024-03-01T08:00:00Z, or --date-format naming the format",
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
    date_format: str | None = None,
    site_codes: SiteCodes | None = None,
) -> tuple[pl.DataFrame, list[InputError], str]:
    """Validate raw text observations and convert them to canonical units.

    Returns (canonical frame, rejected rows, time anchor). Strict mode raises InputError on the
    first bad row (in file order); lenient mode drops bad rows and returns each as an InputError.
    ``date_format`` (strftime): every time must match it (no ISO, no hours since admission).
    ``site_codes``: the concept column may also hold a site code; its unit fills an empty unit cell.
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
    # Concept: one resolver (id, LOINC, alias; then the site's codes) per distinct name, joined back.
    names = _concept_names(frame["concept"], site_codes)
    if names["_concept_text"].equals(names["concept"]) and names["_site_unit"].is_null().all():
        # Every name is already a concept id (the usual file): no join over every row.
        frame = frame.with_columns(
            pl.col("concept").alias("_concept_text"), pl.lit(None, dtype=pl.String).alias("_concept_expected")
        )
    else:
        frame = frame.rename({"concept": "_concept_text"}).join(
            names, on="_concept_text", how="left", nulls_equal=False
        )
        frame = frame.with_columns(
            pl.when((pl.col("unit") == "") & pl.col("_site_unit").is_not_null())
            .then(pl.col("_site_unit"))
            .otherwise(pl.col("unit"))
            .alias("unit")
        )
    known = pl.col("concept").is_not_null()
    errors.append(
        _error_rows(
            frame,
            ~known,
            "concept",
            pl.col("_concept_text"),
            "unknown concept",
            pl.col("_concept_expected").fill_null(concepts.unknown_expected("")),
        )
    )
    # Value: numeric text. Binary concepts also take true/false/yes/no.
    value_text = pl.col("value").str.to_lowercase()
    boolean = value_text.replace_strict(
        {"true": "1", "yes": "1", "false": "0", "no": "0"}, default=value_text
    )
    frame = frame.with_columns(boolean.cast(pl.Float64, strict=False).alias("_number"))
    comma = pl.col("value").str.contains(r"^[+-]?\d+,\d+$").fill_null(False)
    errors.append(
        _error_rows(
            frame,
            known & pl.col("_number").is_null(),
            "value",
            pl.col("value"),
            pl.when(comma)
            .then(pl.lit("value has a comma (decimal comma or thousands separator: never guessed)"))
            .otherwise(pl.lit("value is not a number")),
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
        [
            (
                c.id,
                c.plausible[0],
                c.plausible[1],
                c.canonical_unit,
                c.range_text(),
                c.unit_slip_floor.below if c.unit_slip_floor else None,
            )
            for c in concepts
        ],
        schema={
            "concept": pl.String,
            "_low": pl.Float64,
            "_high": pl.Float64,
            "_canonical_unit": pl.String,
            "_range_text": pl.String,
            "_floor": pl.Float64,
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
    # Unit-slip floor: a value no measurement gives but a unit slip does (thousands, percent).
    errors.append(
        _error_rows(
            frame,
            ~outside & (pl.col("_canonical") < pl.col("_floor")).fill_null(False),
            "value",
            pl.col("value"),
            "below the unit-slip floor",
            "",
            kind="unit_slip",
            detail=pl.format("{}|{}", pl.col("concept"), pl.col("_canonical")),
        )
    )
    # Time: ISO 8601, or hours since admission (anchored to admission_time, else DEFAULT_EPOCH).
    # A number is hours since admission only when finite and within MAX_RELATIVE_HOURS: "20240301" is
    # an ISO 8601 basic date, not 20 million hours.
    # With a named date format every time must match it: no second way to read a time.
    hours = pl.col("time").cast(pl.Float64, strict=False)
    valid_hours = hours.is_finite() & (hours.abs() <= MAX_RELATIVE_HOURS) & pl.lit(date_format is None)
    frame = frame.with_columns(pl.when(valid_hours).then(hours).otherwise(None).alias("_hours"))
    absolute = parse_times(frame["time"], date_format)
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
            TIME_EXPECTED,
            kind="time",
        )
    )
    error_frame = pl.concat(errors).sort("source_row", maintain_order=True)
    rejected = [
        InputError(
            message,
            file=source,
            row=r["source_row"],
            field=r["field"],
            value=r["value"],
            expected=expected,
        )
        for r in error_frame.unique(subset=["source_row"], keep="first", maintain_order=True).iter_rows(
            named=True
        )
        for message, expected in [_error_text(r, concepts, date_format)]
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


def _concept_names(names: pl.Series, site_codes: SiteCodes | None) -> pl.DataFrame:
    """Each distinct concept cell -> concept id (null: unknown), the site code's unit, the error hint."""
    concepts = load_concepts()
    rows: list[tuple[str, str | None, str | None, str | None]] = []
    for text in names.drop_nulls().unique().to_list():
        site = site_codes.lookup(text) if site_codes is not None else None
        concept_id = site.concept if site is not None else concepts.resolve(text)
        hint = None if concept_id is not None else concepts.unknown_expected(text)
        rows.append((text, concept_id, site.unit if site is not None else None, hint))
    return pl.DataFrame(
        rows,
        schema={
            "_concept_text": pl.String,
            "concept": pl.String,
            "_site_unit": pl.String,
            "_concept_expected": pl.String,
        },
        orient="row",
    )


def read_observations(
    path: str | Path,
    patients: str | Path | pl.DataFrame | None = None,
    *,
    lenient: bool = False,
    date_format: str | None = None,
    site_codes: SiteCodes | None = None,
) -> ObservationSet:
    """Read, validate and convert a long observation file (and its optional patient table)."""
    notes: list[str] = []
    raw = read_table(path, OBSERVATION_COLUMNS, notes)
    if isinstance(patients, pl.DataFrame):
        patient_frame = patients
    elif patients is not None:
        patient_frame = read_patients(patients, date_format=date_format)
    else:
        patient_frame = empty_patients()
    frame, rejected, anchor = canonicalize(
        raw,
        source=str(path),
        patients=patient_frame,
        lenient=lenient,
        date_format=date_format,
        site_codes=site_codes,
    )
    return ObservationSet(frame, patient_frame, rejected, anchor, notes)


def observations_from_records(
    records: Iterable[Mapping[str, Any]],
    patients: Iterable[Mapping[str, Any]] | pl.DataFrame | None = None,
    *,
    source: str = "request",
    lenient: bool = False,
    site_codes: SiteCodes | None = None,
    source_rows: Sequence[int] | None = None,
) -> ObservationSet:
    """Validate in-memory records (e.g. an API request body) exactly as a file would be.

    ``source_rows``: where each record came from (e.g. a FHIR file's line or entry), for the errors.
    """
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
    rows_given = None if source_rows is None else pl.Series("source_row", list(source_rows), dtype=pl.Int64)
    frame, rejected, anchor = canonicalize(
        raw,
        source=source,
        patients=patient_frame,
        lenient=lenient,
        source_rows=rows_given,
        site_codes=site_codes,
    )
    return ObservationSet(frame, patient_frame, rejected, anchor)
