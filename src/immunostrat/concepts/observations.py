"""Reading and validating observations into the canonical long table (design.md section 2).

Input: ``patient_id, time, concept, value, unit`` (CSV or Parquet; time ISO 8601 or hours since
admission, or every time in one named strftime format; concept an id, LOINC code, alias or site code;
delimiter ',' or detected from the header) and an optional patient table ``patient_id, age, sex,
weight_kg, height_cm [, admission_time]``. Output columns: ``patient_id, time (UTC), concept,
value (canonical unit), unit (canonical), source, source_row``. Validation is vectorised: one
conversion per distinct (concept, unit) pair, then column arithmetic, so a million rows read in about
a second. An input of at most ``SMALL_ROWS`` rows (a bedside request) is read row by row instead, from
the same dictionary, conversions and texts, because polars' fixed cost per query would dominate it; a
property test holds the two paths to the same frame and the same errors.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
# Observation value rules and texts (both paths of canonicalize read these).
BOOLEAN_WORDS = {"true": "1", "yes": "1", "false": "0", "no": "0"}  # binary concepts' words, lower case
COMMA_NUMBER = r"[+-]?\d+,\d+"
COMMA_MESSAGE = "value has a comma (decimal comma or thousands separator: never guessed)"
NOT_A_NUMBER = "value is not a number"
NUMBER_EXPECTED = "a number (decimal point '.', no thousands separator)"
FINITE_EXPECTED = "a finite number"
NEEDS_WEIGHT = "{concept} in {unit} needs the patient's weight"
WEIGHT_EXPECTED = "weight_kg for this patient in the patient table, or a rate per kg"
OUTSIDE = "{concept} = {value} is outside the plausible range"


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
    parsed = _to_utc(iso_only)
    text, fast, missing = (
        pl.DataFrame({"t": text})
        .lazy()
        .select(
            iso_only.alias("text"),
            parsed.alias("t"),
            (parsed.is_null() & iso_only.is_not_null() & (iso_only.str.strip_chars() != "")).alias("missing"),
        )
        .collect()
        .get_columns()
    )
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
    """Validate a patient table given as text columns; raises InputError on the first bad row.

    A table of up to ``SMALL_ROWS`` text rows is checked row by row (:func:`_validate_patients_rows`)."""
    if (
        raw.height <= SMALL_ROWS
        and "patient_id" in raw.columns
        and "source_row" not in raw.columns
        and all(dtype == pl.String for dtype in raw.dtypes)
    ):
        try:
            columns = {name: raw[name].to_list() for name in raw.columns}
            return _validate_patients_rows(columns, raw.height, source, date_format)
        except _UseColumns:
            pass
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
    if raw.height <= SMALL_ROWS:
        try:
            columns: dict[str, list[Any]] | None = {c: _texts(raw, c) for c in OBSERVATION_COLUMNS}
            given = None if source_rows is None else source_rows.cast(pl.Int64).to_list()
        except pl.exceptions.PolarsError:
            columns = None
        try:
            if columns is None:
                raise _UseColumns
            return _canonicalize_rows(
                columns,
                given,
                source=source,
                patients=patients,
                lenient=lenient,
                date_format=date_format,
                site_codes=site_codes,
            )
        except _UseColumns:
            pass
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
    boolean = value_text.replace_strict(BOOLEAN_WORDS, default=value_text)
    frame = frame.with_columns(boolean.cast(pl.Float64, strict=False).alias("_number"))
    comma = pl.col("value").str.contains(f"^{COMMA_NUMBER}$").fill_null(False)
    errors.append(
        _error_rows(
            frame,
            known & pl.col("_number").is_null(),
            "value",
            pl.col("value"),
            pl.when(comma).then(pl.lit(COMMA_MESSAGE)).otherwise(pl.lit(NOT_A_NUMBER)),
            NUMBER_EXPECTED,
        )
    )
    errors.append(
        _error_rows(
            frame,
            known & pl.col("_number").is_nan(),
            "value",
            pl.col("value"),
            NOT_A_NUMBER,
            FINITE_EXPECTED,
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
            pl.format(
                NEEDS_WEIGHT.replace("{concept}", "{}").replace("{unit}", "{}"),
                pl.col("concept"),
                pl.col("unit"),
            ),
            WEIGHT_EXPECTED,
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
            pl.format(
                OUTSIDE.replace("{concept}", "{}").replace("{value}", "{}"),
                pl.col("concept"),
                pl.col("_canonical"),
            ),
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


def _patient_records(patients: Iterable[Mapping[str, Any]], source: str) -> pl.DataFrame:
    """Patient records (any values, written as text) validated as a patient table."""
    prow = [{k: (None if v is None else str(v)) for k, v in p.items()} for p in patients]
    columns = sorted({k for p in prow for k in p} | {"patient_id"})
    if len(prow) <= SMALL_ROWS and "source_row" not in columns:
        table = {c: [p.get(c) for p in prow] for c in columns}
        with contextlib.suppress(_UseColumns):
            return _validate_patients_rows(table, len(prow), source, None)
    return validate_patients(pl.DataFrame(prow, schema={c: pl.String for c in columns}), source)


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
    if patients is None:
        patient_frame = empty_patients()
    elif isinstance(patients, pl.DataFrame):
        patient_frame = patients
    else:
        patient_frame = _patient_records(patients, source)
    rows_given = None if source_rows is None else pl.Series("source_row", list(source_rows), dtype=pl.Int64)
    if len(rows) <= SMALL_ROWS:
        try:
            frame, rejected, anchor = _canonicalize_rows(
                {c: [r[c] for r in rows] for c in OBSERVATION_COLUMNS},
                None if rows_given is None else rows_given.to_list(),
                source=source,
                patients=patient_frame,
                lenient=lenient,
                date_format=None,
                site_codes=site_codes,
            )
            return ObservationSet(frame, patient_frame, rejected, anchor)
        except _UseColumns:
            pass
    raw = pl.DataFrame(rows, schema={c: pl.String for c in OBSERVATION_COLUMNS})
    frame, rejected, anchor = canonicalize(
        raw,
        source=source,
        patients=patient_frame,
        lenient=lenient,
        source_rows=rows_given,
        site_codes=site_codes,
    )
    return ObservationSet(frame, patient_frame, rejected, anchor)


# ------------------------------------------------------------------ small inputs, row by row

SMALL_ROWS = 256
"""Inputs of up to this many rows (a bedside request, a screening form) are validated row by row in
Python: the same dictionary, conversions, ranges, unit-slip floors, time parsing and error texts as
the column path, without polars' fixed cost per query (a 3-row request paid for about 90 of them).
``tests/concepts/test_concepts_small_path.py`` holds both paths to the same frame and the same errors."""
MISSING_PATIENT = "missing patient_id"
PATIENT_EXPECTED = "a patient identifier"
UNKNOWN_CONCEPT = "unknown concept"
# What polars' ``str.strip_chars()`` strips (Rust's ``char::is_whitespace``); Python's ``str.strip()``
# would also strip U+001C to U+001F.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_COMMA = re.compile(COMMA_NUMBER)


# The everyday ISO 8601 forms (extended, minutes or seconds, up to 6 decimals, Z or +hh:mm or none),
# read by datetime itself: polars reads each of them to the same instant, from any position in the
# column, and so does parse_times' fallback. Anything else goes through parse_times.
_EVERYDAY_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|([+-])([0-9]{2}):([0-9]{2}))?"
)


def _everyday_time(text: str) -> datetime | None:
    """``text`` in UTC when it is an everyday ISO 8601 time; None for anything else (not an error)."""
    match = _EVERYDAY_ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone, sign, zone_h, zone_m = match.groups()
    if zone is not None and zone != "Z" and (int(zone_h) > 23 or int(zone_m) > 59):
        return None
    try:
        when = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=UTC,
        )
        if zone is not None and zone != "Z":
            offset = timedelta(hours=int(zone_h), minutes=int(zone_m))
            when = when - offset if sign == "+" else when + offset
    except (ValueError, OverflowError):
        return None
    return when


class _UseColumns(Exception):
    """Input the row path leaves to the column path (unusual types, a patient listed twice in a
    given patient frame, a time past the calendar's end, a weight of zero): that path decides it."""


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip(_WHITESPACE)


def _numbers(texts: Sequence[str | None]) -> list[float | None]:
    """Text to numbers exactly as the column path casts them (one native polars cast, no query)."""
    return pl.Series(values=list(texts), dtype=pl.String).cast(pl.Float64, strict=False).to_list()


def _number_text(value: float) -> str:
    """A number as polars writes it into a text (``pl.format``): 1e-7, 1e+20, 5000.0."""
    return str(pl.Series(values=[value], dtype=pl.Float64).cast(pl.String)[0])


def _round(value: float, decimals: int = DECIMALS) -> float:
    """polars' ``round(decimals)`` on one number: half to even, sign kept, too large left as is."""
    if not math.isfinite(value):
        return value
    scale = 10.0**decimals
    scaled = value * scale
    if not math.isfinite(scaled):
        return value
    return math.copysign(float(round(scaled)), scaled) / scale


def _greater(a: float, b: float) -> bool:
    """``a > b`` as polars compares floats: NaN above every number."""
    if math.isnan(a):
        return not math.isnan(b)
    return not math.isnan(b) and a > b


def _texts(frame: pl.DataFrame, name: str) -> list[Any]:
    return frame.get_column(name).cast(pl.String).to_list()


def _patient_facts(
    patients: pl.DataFrame | None,
) -> tuple[dict[str, float | None], dict[str, datetime | None]]:
    """Weight and admission time by patient id, as the column path joins them."""
    if patients is None:
        return {}, {}
    schema = patients.schema
    if any(
        schema.get(name) != PATIENT_SCHEMA[name] for name in ("patient_id", "weight_kg", "admission_time")
    ):
        raise _UseColumns
    try:
        ids = patients["patient_id"].to_list()
        weights = patients["weight_kg"].to_list()
        admissions = patients["admission_time"].to_list()
    except (ValueError, OverflowError, pl.exceptions.PolarsError) as exc:
        raise _UseColumns from exc
    present = [pid for pid in ids if pid is not None]
    if len(set(present)) != len(present):
        raise _UseColumns
    weight_of = {pid: w for pid, w in zip(ids, weights, strict=True) if pid is not None}
    admission_of = {pid: a for pid, a in zip(ids, admissions, strict=True) if pid is not None}
    return weight_of, admission_of


def _validate_patients_rows(
    columns: Mapping[str, Sequence[str | None]], n: int, source: str, date_format: str | None
) -> pl.DataFrame:
    """:func:`validate_patients` row by row, for a small table of text columns (``patient_id`` among
    them, ``n`` rows)."""

    def column(name: str) -> list[str | None]:
        return list(columns[name]) if name in columns else [None] * n

    ids = column("patient_id")
    seen: set[str | None] = set()
    for i, pid in enumerate(ids):
        if pid in seen:
            raise InputError(
                "patient listed twice",
                file=source,
                row=i + 1,
                field="patient_id",
                value=pid,
                expected="one row per patient",
            )
        seen.add(pid)
    out: dict[str, list[Any]] = {"patient_id": ids}
    for name, (low, high) in PATIENT_RANGES.items():
        texts = [_strip(v) for v in column(name)]
        numbers = _numbers(texts)
        for i, (text, number) in enumerate(zip(texts, numbers, strict=True)):
            if number is None:
                bad = text is not None and text != ""
            else:
                bad = _greater(low, number) or _greater(number, high)
            if bad:
                raise InputError(
                    f"{name} is not a number in the plausible range",
                    file=source,
                    row=i + 1,
                    field=name,
                    value=text,
                    expected=f"a number from {low:g} to {high:g}",
                )
        out[name] = numbers
    sexes: list[str | None] = []
    for i, entered in enumerate(column("sex")):
        text = _strip(entered)
        folded = None if text is None else text.lower()
        sex = None if folded is None else _SEX.get(folded)
        if sex is None and folded:
            raise InputError(
                "unknown sex",
                file=source,
                row=i + 1,
                field="sex",
                value=entered,
                expected="F or M (female/male)",
            )
        sexes.append(sex)
    out["sex"] = sexes
    adm_text = column("admission_time")
    if date_format is not None or any(_strip(v) for v in adm_text):
        try:
            admission = parse_times(pl.Series(values=adm_text, dtype=pl.String), date_format).to_list()
        except (ValueError, OverflowError) as exc:
            raise _UseColumns from exc
    else:
        admission = [None] * n
    for i, (text, when) in enumerate(zip(adm_text, admission, strict=True)):
        if when is None and _strip(text):
            message, expected = time_error_text(text, date_format)
            raise InputError(
                message.replace("time", "admission_time", 1)
                if date_format
                else "admission_time is not an ISO 8601 time",
                file=source,
                row=i + 1,
                field="admission_time",
                value=text,
                expected=expected
                if date_format
                else "e.g. 2024-03-01T08:00:00Z, or --date-format naming the format",
            )
    out["admission_time"] = admission
    schema = {name: PATIENT_SCHEMA[name] for name in out}
    return pl.DataFrame(list(zip(*out.values(), strict=True)), schema=schema, orient="row")


def _canonicalize_rows(
    columns: Mapping[str, Sequence[str | None]],
    source_rows: Sequence[int | None] | None,
    *,
    source: str,
    patients: pl.DataFrame | None,
    lenient: bool,
    date_format: str | None,
    site_codes: SiteCodes | None,
) -> tuple[pl.DataFrame, list[InputError], str]:
    """:func:`canonicalize` row by row, for a small input given as text columns: per row the first
    error in the column path's order (patient, concept, value, NaN, unit, weight, range, unit-slip
    floor, time)."""
    concepts = load_concepts()
    pids = [_strip(v) for v in columns["patient_id"]]
    names = [_strip(v) for v in columns["concept"]]
    units = [("" if v is None else v).strip(_WHITESPACE) for v in columns["unit"]]
    values = [_strip(v) for v in columns["value"]]
    times = [_strip(v) for v in columns["time"]]
    n = len(pids)
    if source_rows is None:
        rows = list(range(1, n + 1))
    elif len(source_rows) != n or any(r is None for r in source_rows):
        raise _UseColumns
    else:
        rows = [int(r) for r in source_rows if r is not None]
    weight_of, admission_of = _patient_facts(patients)

    resolved: dict[str, tuple[str | None, str | None]] = {}
    for text in names:
        if text is not None and text not in resolved:
            site = site_codes.lookup(text) if site_codes is not None else None
            concept_id = site.concept if site is not None else concepts.resolve(text)
            resolved[text] = (concept_id, site.unit if site is not None else None)
    lowered = [None if v is None else v.lower() for v in values]
    numbers = _numbers([None if v is None else BOOLEAN_WORDS.get(v, v) for v in lowered])
    hours = _numbers(times)
    valid_hours = [
        date_format is None and h is not None and math.isfinite(h) and abs(h) <= MAX_RELATIVE_HOURS
        for h in hours
    ]
    absolute: list[datetime | None] = [None] * n
    if date_format is None:
        for i, text in enumerate(times):
            if not valid_hours[i] and text is not None:
                absolute[i] = _everyday_time(text)
    if date_format is not None or any(
        not valid and text is not None and when is None
        for valid, text, when in zip(valid_hours, times, absolute, strict=True)
    ):
        try:
            absolute = parse_times(pl.Series(values=times, dtype=pl.String), date_format).to_list()
        except (ValueError, OverflowError) as exc:
            raise _UseColumns from exc
    conversions: dict[tuple[str, str], Any] = {}

    def conversion(concept_id: str, unit: str) -> Any:
        key = (concept_id, unit)
        if key not in conversions:
            try:
                conversions[key] = conversion_for(concept_id, unit)
            except UnitError as exc:
                conversions[key] = exc
        return conversions[key]

    with_adm = without_adm = False
    first: dict[int, tuple[int, int, str, Any, str, str]] = {}  # source row -> (check, record, error)
    kept: list[tuple[str, datetime, str, float, str, int]] = []
    for i in range(n):
        pid, text, value, unit = pids[i], names[i], values[i], units[i]
        concept_id, site_unit = resolved[text] if text is not None else (None, None)
        if site_unit is not None and unit == "":
            unit = site_unit
        admission = admission_of.get(pid) if pid is not None else None
        if valid_hours[i]:
            if admission is None:
                without_adm = True
            else:
                with_adm = True
            anchor = admission if admission is not None else DEFAULT_EPOCH
            try:
                when = anchor + timedelta(microseconds=round(hours[i] * 3_600_000_000))  # type: ignore[operator]
            except OverflowError as exc:
                raise _UseColumns from exc
        else:
            when = absolute[i]
        number = numbers[i]
        error: tuple[int, str, Any, str, str] | None = None
        if not pid:
            error = (0, "patient_id", pid, MISSING_PATIENT, PATIENT_EXPECTED)
        canonical: float | None = None
        outside = False
        if concept_id is None:
            if error is None:
                hint = concepts.unknown_expected(text if text is not None else "")
                error = (1, "concept", text, UNKNOWN_CONCEPT, hint)
        else:
            concept = concepts[concept_id]
            if error is None and number is None:
                comma = value is not None and _COMMA.fullmatch(value) is not None
                error = (2, "value", value, COMMA_MESSAGE if comma else NOT_A_NUMBER, NUMBER_EXPECTED)
            if error is None and number is not None and math.isnan(number):
                error = (3, "value", value, NOT_A_NUMBER, FINITE_EXPECTED)
            conv = conversion(concept_id, unit)
            if isinstance(conv, UnitError):
                if error is None:
                    error = (4, "unit", unit, str(conv), conv.expected)
            else:
                weight = weight_of.get(pid) if pid is not None else None
                if conv.per_weight_kg and weight is None:
                    if error is None:
                        error = (
                            5,
                            "unit",
                            unit,
                            NEEDS_WEIGHT.format(concept=concept_id, unit=unit),
                            WEIGHT_EXPECTED,
                        )
                elif number is not None:
                    converted = number * conv.scale + conv.offset
                    if conv.per_weight_kg:
                        if weight == 0:
                            raise _UseColumns
                        converted = converted / weight
                    canonical = _round(converted)
            if canonical is not None:
                low, high = concept.plausible
                outside = _greater(low, canonical) or _greater(canonical, high)
                if outside and error is None:
                    message = OUTSIDE.format(concept=concept_id, value=_number_text(canonical))
                    error = (6, "value", value, message, concept.range_text())
                floor = concept.unit_slip_floor
                if error is None and not outside and floor is not None and _greater(floor.below, canonical):
                    message, expected = concept.unit_slip_text(float(_number_text(canonical)))
                    error = (7, "value", value, message, expected)
        if error is None and when is None:
            message, expected = time_error_text(times[i], date_format)
            error = (8, "time", times[i], message, expected)
        row = rows[i]
        if error is not None:
            check, *found = error
            if row not in first or (check, i) < first[row][:2]:
                first[row] = (check, i, *found)
        else:
            assert concept_id is not None and canonical is not None and pid is not None and when is not None
            kept.append((pid, when, concept_id, canonical, concepts[concept_id].canonical_unit, row))
    anchor_used = "absolute"
    if with_adm or without_adm:
        anchor_used = "hours since admission_time" if with_adm else ""
        if without_adm:
            anchor_used = (anchor_used + "; " if anchor_used else "") + (
                f"hours since {DEFAULT_EPOCH.isoformat()} (no admission_time)"
            )
    rejected = [
        InputError(message, file=source, row=row, field=field_name, value=value, expected=expected)
        for row in sorted(first)
        for _, _, field_name, value, message, expected in [first[row]]
    ]
    if rejected and not lenient:
        raise rejected[0]
    good = sorted((r for r in kept if r[5] not in first), key=lambda r: (r[0], r[1], r[2], r[5]))
    out = pl.DataFrame(
        [(pid, when, concept, value, unit, source, row) for pid, when, concept, value, unit, row in good],
        schema=CANONICAL_SCHEMA,
        orient="row",
    )
    return out, rejected, anchor_used
