"""Trial export schema: the tables a trial service writes and the analysis reads (schema 1.0).

An export is one folder holding one file per table, each as ``NAME.csv`` or ``NAME.parquet``
(if both exist, Parquet wins), plus an optional ``manifest.json``. Column names are exact and
lower-case; extra columns are kept (numeric extras in ``participants`` can be named as adjustment
covariates by a plan, numeric extras in ``daily_assessments`` are extra biomarkers). Booleans in
CSV are ``true/false`` (also ``1/0``, ``yes/no``); an empty CSV cell is missing (null).

Study days: **day 1 is the day of randomization / first dose of the blinded drug** (ImmunoSep's
"day-1 SOFA"); day 0 is the screening/baseline sample before the first dose; later days count
from day 1 (day 9 is the 9th day on drug). Every day field below uses that convention.

``manifest.json`` (optional)::

    {"schema_version": "1.0", "trial_id": "immunosep-demo", "arms": ["immunotherapy", "placebo"],
     "control_arm": "placebo", "exported_at": "2025-01-01T00:00:00Z"}

``participants`` (required; one row per randomized participant whose data may be analysed)
    participant_id  str, unique, required
    site            str, required
    stratum         str, nullable: endotype / stratification factor ("MALS", "immunoparalysis", ...)
    arm             str, required: allocated arm (ITT), e.g. "immunotherapy" / "placebo"
    randomized_at   datetime (ISO 8601; UTC assumed when no offset), required
    age             float years, 18-120, required
    sex             "F" | "M" | "other", required
    baseline_sofa   int 0-24, nullable (total SOFA at randomization; Vincent 1996, domain.md B1)
    weight_kg       float 20-400, nullable
    ferritin_ng_ml  float >= 0, nullable (baseline; MALS cut-off > 4,420 ng/mL, domain.md A1)
    hla_dr_abc      float >= 0, nullable (baseline monocyte HLA-DR, antibodies bound per cell)
    septic_shock    bool, nullable (Sepsis-3 septic shock at baseline, domain.md B2)
    infection_site  str, nullable (e.g. "CAP", "HAP", "VAP", "bacteremia")
    itt             bool, required: in the (modified) intention-to-treat population
    per_protocol    bool, nullable (null = not assessed, treated as false)
    safety          bool, nullable (received any study drug; null = same as itt)

``daily_assessments`` (required; one row per participant and study day assessed; rows need not be
daily: the SLE trial has days 0, 22 and 43)
    participant_id      str, required, must exist in participants
    day                 int -1..400, required; (participant_id, day) unique
    sofa_total          int 0-24, nullable (SOFA 1996, domain.md B1)
    sofa_respiration, sofa_coagulation, sofa_liver, sofa_cardiovascular, sofa_cns, sofa_renal
                        int 0-4, nullable
    ferritin_ng_ml      float >= 0, nullable
    hla_dr_abc          float >= 0, nullable (monocyte HLA-DR, AB/C)
    crp_mg_l            float >= 0, nullable
    procalcitonin_ng_ml float >= 0, nullable
    mex_sledai          int 0-32, nullable (MEX-SLEDAI, domain.md B4)
    sledai_2k           int 0-105, nullable (SLEDAI-2K, domain.md B5)
    c3_mg_dl, c4_mg_dl  float >= 0, nullable
    il6_pg_ml, tnf_alpha_pg_ml  float >= 0, nullable
    anti_dsdna_iu_ml    float >= 0, nullable

``outcomes`` (required; one row per participant)
    participant_id          str, unique, required, must exist in participants
    death_day               int >= 1, nullable (study day of death; null = not known to have died)
    last_contact_day        int >= 1, required (last study day known alive or the death day;
                            censoring time for survival; >= death_day when death_day is given)
    discharge_day           int >= 1, nullable (hospital discharge)
    infection_status_day15  "resolution" | "intermediate" | "failure" | "superinfection", nullable
                            (ordered best -> worst, JAMA 2025 Table 2)
    ferritin_day15_ng_ml    float >= 0, nullable (else taken from daily_assessments day 15)
    hla_dr_day15_abc        float >= 0, nullable (else taken from daily_assessments day 15)

``screening`` (required for the CONSORT diagram; optional otherwise; one row per screened patient)
    screening_id      str, unique, required
    site              str, required
    screened_at       datetime, nullable
    eligible          bool, required
    exclusion_reason  str, required when eligible is false (free text, grouped verbatim)
    randomized        bool, required (true only when eligible)
    not_randomized_reason  str, nullable (eligible but not randomized)
    participant_id    str, required when randomized (links to participants)
    arm               str, required when randomized (allocated arm, kept even if data were removed)
    stratum           str, nullable
    withdrawn         bool, nullable (withdrew after randomization)
    withdrawal_reason str, nullable
    data_removed      bool, nullable (consent withdrawn with data removal: not in participants)

``adverse_events`` (optional; one row per event)
    participant_id  str, required, must exist in participants
    day             int, required
    term            str, required
    serious         bool, required
    related         bool, nullable
    ctcae_grade     int 1-5, nullable (CTCAE v5 grade; 5 = death)
    meddra_code     str, nullable (MedDRA preferred-term code when the term was coded)

:func:`validate_export` reads a folder (or a mapping of table name -> DataFrame/path), parses
each column to its type, checks the per-table rules above with pandera (polars backend,
:func:`pandera_schema`) and the rules that span tables in code, and returns a :class:`TrialExport`;
the first violation raises
:class:`immunostrat.errors.InputError` naming the table (as ``file``), the 1-based data row, the
field, the value found and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from immunostrat.errors import InputError
from immunostrat.scores.sofa import SOFA_COMPONENTS as SCORE_SOFA_COMPONENTS

SCHEMA_VERSION = "1.0"

Kind = Literal["str", "int", "float", "bool", "datetime"]

INFECTION_STATUS_ORDER: tuple[str, ...] = ("resolution", "intermediate", "failure", "superinfection")
"""Day-15 infection status, best -> worst (ImmunoSep JAMA 2025 Table 2; domain.md A1)."""

SOFA_COMPONENTS: tuple[str, ...] = tuple(f"sofa_{c}" for c in SCORE_SOFA_COMPONENTS)


@dataclass(frozen=True)
class Column:
    """One column of an export table."""

    name: str
    kind: Kind
    required: bool = False
    """The column must be present."""
    nullable: bool = True
    """Cells may be empty."""
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None
    unique: bool = False
    description: str = ""

    def expected(self) -> str:
        parts: list[str] = [self.kind]
        if self.allowed:
            parts.append("one of " + ", ".join(self.allowed))
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        if not self.nullable:
            parts.append("not empty")
        return " ".join(parts)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    required: bool = True
    description: str = ""

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _nonneg(name: str, description: str = "") -> Column:
    return Column(name, "float", minimum=0.0, description=description)


_BIOMARKERS: tuple[Column, ...] = (
    _nonneg("ferritin_ng_ml", "serum ferritin, ng/mL"),
    _nonneg("hla_dr_abc", "monocyte HLA-DR, antibodies bound per cell"),
    _nonneg("crp_mg_l", "C-reactive protein, mg/L"),
    _nonneg("procalcitonin_ng_ml", "procalcitonin, ng/mL"),
    Column("mex_sledai", "int", minimum=0, maximum=32, description="MEX-SLEDAI 0-32 (domain.md B4)"),
    Column("sledai_2k", "int", minimum=0, maximum=105, description="SLEDAI-2K 0-105 (domain.md B5)"),
    _nonneg("c3_mg_dl", "complement C3, mg/dL"),
    _nonneg("c4_mg_dl", "complement C4, mg/dL"),
    _nonneg("il6_pg_ml", "interleukin-6, pg/mL"),
    _nonneg("tnf_alpha_pg_ml", "TNF-alpha, pg/mL"),
    _nonneg("anti_dsdna_iu_ml", "anti-dsDNA antibodies, IU/mL"),
)

BIOMARKER_COLUMNS: tuple[str, ...] = tuple(c.name for c in _BIOMARKERS)

PARTICIPANTS = Table(
    "participants",
    (
        Column("participant_id", "str", required=True, nullable=False, unique=True),
        Column("site", "str", required=True, nullable=False),
        Column("stratum", "str"),
        Column("arm", "str", required=True, nullable=False),
        Column("randomized_at", "datetime", required=True, nullable=False),
        Column("age", "float", required=True, nullable=False, minimum=18, maximum=120),
        Column("sex", "str", required=True, nullable=False, allowed=("F", "M", "other")),
        Column("baseline_sofa", "int", minimum=0, maximum=24),
        Column("weight_kg", "float", minimum=20, maximum=400),
        _nonneg("ferritin_ng_ml"),
        _nonneg("hla_dr_abc"),
        Column("septic_shock", "bool"),
        Column("infection_site", "str"),
        Column("itt", "bool", required=True, nullable=False),
        Column("per_protocol", "bool"),
        Column("safety", "bool"),
    ),
    description="one row per randomized participant whose data may be analysed",
)

DAILY_ASSESSMENTS = Table(
    "daily_assessments",
    (
        Column("participant_id", "str", required=True, nullable=False),
        Column("day", "int", required=True, nullable=False, minimum=-1, maximum=400),
        Column("sofa_total", "int", minimum=0, maximum=24),
        *(Column(c, "int", minimum=0, maximum=4) for c in SOFA_COMPONENTS),
        *_BIOMARKERS,
    ),
    description="one row per participant and study day assessed",
)

OUTCOMES = Table(
    "outcomes",
    (
        Column("participant_id", "str", required=True, nullable=False, unique=True),
        Column("death_day", "int", minimum=1),
        Column("last_contact_day", "int", required=True, nullable=False, minimum=1),
        Column("discharge_day", "int", minimum=1),
        Column("infection_status_day15", "str", allowed=INFECTION_STATUS_ORDER),
        _nonneg("ferritin_day15_ng_ml"),
        _nonneg("hla_dr_day15_abc"),
    ),
    description="one row per participant",
)

SCREENING = Table(
    "screening",
    (
        Column("screening_id", "str", required=True, nullable=False, unique=True),
        Column("site", "str", required=True, nullable=False),
        Column("screened_at", "datetime"),
        Column("eligible", "bool", required=True, nullable=False),
        Column("exclusion_reason", "str"),
        Column("randomized", "bool", required=True, nullable=False),
        Column("not_randomized_reason", "str"),
        Column("participant_id", "str"),
        Column("arm", "str"),
        Column("stratum", "str"),
        Column("withdrawn", "bool"),
        Column("withdrawal_reason", "str"),
        Column("data_removed", "bool"),
    ),
    required=False,
    description="one row per screened patient (CONSORT)",
)

ADVERSE_EVENTS = Table(
    "adverse_events",
    (
        Column("participant_id", "str", required=True, nullable=False),
        Column("day", "int", required=True, nullable=False),
        Column("term", "str", required=True, nullable=False),
        Column("serious", "bool", required=True, nullable=False),
        Column("related", "bool"),
        Column("ctcae_grade", "int", minimum=1, maximum=5, description="CTCAE v5 grade, 5 = death"),
        Column("meddra_code", "str", description="MedDRA preferred-term code when the term was coded"),
    ),
    required=False,
    description="one row per adverse event",
)

TABLES: dict[str, Table] = {
    t.name: t for t in (PARTICIPANTS, DAILY_ASSESSMENTS, OUTCOMES, SCREENING, ADVERSE_EVENTS)
}

_POLARS_TYPE: dict[str, pl.DataType] = {
    "str": pl.Utf8(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "datetime": pl.Datetime("us", "UTC"),
}

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def polars_schema(table: str) -> dict[str, pl.DataType]:
    """The polars dtypes of a table's declared columns (what a writer should produce)."""
    return {c.name: _POLARS_TYPE[c.kind] for c in TABLES[table].columns}


def conform(frame: pl.DataFrame, table: str) -> pl.DataFrame:
    """Add the table's declared columns that ``frame`` lacks (as nulls) and cast declared columns to
    their schema dtypes, declared columns first. No validation: for trusted in-process writers
    (generators); use :func:`validate_export` for anything read from outside."""
    t = TABLES[table]
    cols = []
    for c in t.columns:
        dtype = _POLARS_TYPE[c.kind]
        if c.name in frame.columns:
            cols.append(pl.col(c.name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(c.name))
    declared = {c.name for c in t.columns}
    return frame.select(*cols, *[c for c in frame.columns if c not in declared])


@dataclass
class Manifest:
    schema_version: str = SCHEMA_VERSION
    trial_id: str | None = None
    arms: list[str] | None = None
    control_arm: str | None = None
    exported_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for key in ("trial_id", "arms", "control_arm", "exported_at"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


@dataclass
class TrialExport:
    """A validated export: typed polars frames, one per table (absent optional tables are None)."""

    participants: pl.DataFrame
    daily_assessments: pl.DataFrame
    outcomes: pl.DataFrame
    screening: pl.DataFrame | None = None
    adverse_events: pl.DataFrame | None = None
    manifest: Manifest = field(default_factory=Manifest)
    source: str | None = None

    @property
    def arms(self) -> list[str]:
        if self.manifest.arms:
            return list(self.manifest.arms)
        return sorted(self.participants["arm"].unique().to_list())

    def as_mapping(self) -> dict[str, Any]:
        """Table name -> frame (present tables only) plus ``"manifest"``: input for validate_export."""
        out: dict[str, Any] = {n: getattr(self, n) for n in TABLES if getattr(self, n) is not None}
        out["manifest"] = self.manifest
        return out

    def write(self, folder: str | Path, fmt: Literal["csv", "parquet"] = "csv") -> Path:
        """Write the export to ``folder`` (created) in the schema; returns the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            frame = getattr(self, name)
            if frame is None:
                continue
            target = out / f"{name}.{fmt}"
            tmp = out / f".{name}.{fmt}.tmp"
            if fmt == "csv":
                frame.write_csv(tmp, datetime_format="%Y-%m-%dT%H:%M:%S%.fZ")
            else:
                frame.write_parquet(tmp)
            tmp.replace(target)
        (out / "manifest.json").write_text(json.dumps(self.manifest.to_dict(), indent=2))
        return out


# --------------------------------------------------------------------------------------------
# reading


def _read_file(path: Path, table: Table) -> pl.DataFrame:
    if path.suffix == ".parquet":
        try:
            return pl.read_parquet(path)
        except Exception as exc:  # pragma: no cover - depends on the corrupt bytes
            raise InputError(f"cannot read Parquet: {exc}", file=str(path)) from exc
    try:
        # every column as text: the validator casts and can then name the row that fails
        return pl.read_csv(path, infer_schema=False, null_values=[""])
    except Exception as exc:
        raise InputError(f"cannot read CSV: {exc}", file=str(path)) from exc


def _locate(folder: Path, name: str) -> Path | None:
    for suffix in (".parquet", ".csv"):
        p = folder / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def _first_bad(mask: pl.Series) -> int | None:
    idx = mask.arg_true()
    return None if idx.is_empty() else int(idx[0])


def _cast_column(frame: pl.DataFrame, col: Column, where: str) -> pl.Series:
    s = frame[col.name]
    target = _POLARS_TYPE[col.kind]
    if s.dtype == target:
        return s
    if col.kind == "bool":
        if s.dtype.is_integer():
            txt = s.cast(pl.Utf8)
        else:
            txt = s.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
        bad = txt.is_not_null() & ~txt.is_in(list(_TRUE | _FALSE))
        i = _first_bad(bad)
        if i is not None:
            raise InputError(
                "not a boolean", file=where, row=i + 1, field=col.name, value=s[i], expected="true or false"
            )
        return (
            pl.select(pl.when(txt.is_in(list(_TRUE))).then(True).when(txt.is_in(list(_FALSE))).then(False))
            .to_series()
            .alias(col.name)
            .cast(pl.Boolean)
        )
    if col.kind == "datetime":
        if isinstance(s.dtype, pl.Datetime):
            out = s.dt.convert_time_zone("UTC") if s.dtype.time_zone else s.dt.replace_time_zone("UTC")
            return out.cast(target)
        if s.dtype == pl.Date:
            return s.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        txt = s.cast(pl.Utf8).str.strip_chars()
        parsed = _parse_datetimes(txt)
        bad = txt.is_not_null() & parsed.is_null()
        i = _first_bad(bad)
        if i is not None:
            raise InputError(
                "not an ISO 8601 date-time",
                file=where,
                row=i + 1,
                field=col.name,
                value=s[i],
                expected="e.g. 2024-03-01T08:30:00Z",
            )
        return parsed.alias(col.name)
    if col.kind == "str":
        return s.cast(pl.Utf8)
    # numeric
    src = s.cast(pl.Utf8).str.strip_chars() if s.dtype == pl.Utf8 else s
    casted = src.cast(pl.Float64, strict=False)
    bad = src.is_not_null() & casted.is_null()
    i = _first_bad(bad)
    if i is not None:
        raise InputError("not a number", file=where, row=i + 1, field=col.name, value=s[i], expected=col.kind)
    if col.kind == "int":
        frac = casted.is_not_null() & (casted != casted.round(0))
        i = _first_bad(frac)
        if i is not None:
            raise InputError(
                "not a whole number", file=where, row=i + 1, field=col.name, value=s[i], expected="int"
            )
        return casted.cast(pl.Int64)
    return casted


def _parse_datetimes(txt: pl.Series) -> pl.Series:
    out = pl.Series(txt.name, [None] * len(txt), dtype=pl.Datetime("us", "UTC"))
    formats = [
        ("%Y-%m-%dT%H:%M:%S%.f%z", True),
        ("%Y-%m-%d %H:%M:%S%.f%z", True),
        ("%Y-%m-%dT%H:%M:%S%.f", False),
        ("%Y-%m-%d %H:%M:%S%.f", False),
        ("%Y-%m-%dT%H:%M", False),
        ("%Y-%m-%d", False),
    ]
    norm = txt.str.replace(r"Z$", "+00:00")
    for fmt, has_tz in formats:
        if fmt == "%Y-%m-%d":
            cand = norm.str.strptime(pl.Date, fmt, strict=False).cast(pl.Datetime("us"))
        else:
            cand = norm.str.strptime(pl.Datetime("us"), fmt, strict=False)
        if has_tz:
            if isinstance(cand.dtype, pl.Datetime) and cand.dtype.time_zone:
                cand = cand.dt.convert_time_zone("UTC")
            else:
                cand = cand.dt.replace_time_zone("UTC")
        else:
            cand = cand.dt.replace_time_zone("UTC")
        out = pl.select(pl.coalesce(out, cand.cast(pl.Datetime("us", "UTC")))).to_series()
    return out.alias(txt.name)


_RULE_ORDER = ("column_in_dataframe", "dtype", "not_nullable", "minimum", "maximum", "allowed", "unique")


def pandera_schema(table: str | Table) -> Any:
    """The declarative rules of a table as a pandera (polars backend) ``DataFrameSchema``: dtype,
    required, nullable, range, allowed values and uniqueness per column; extra columns allowed.

    Parsing CSV text into typed columns (booleans spelt ``yes/no``, ISO 8601 date-times, whole
    numbers) happens before, in :func:`_cast_column`; the rules that span tables stay code in
    :func:`_cross_checks`."""
    import pandera.polars as pa

    t = TABLES[table] if isinstance(table, str) else table
    columns: dict[str, Any] = {}
    for c in t.columns:
        checks = []
        if c.minimum is not None:
            checks.append(pa.Check.ge(c.minimum))
        if c.maximum is not None:
            checks.append(pa.Check.le(c.maximum))
        if c.allowed is not None:
            checks.append(pa.Check.isin(list(c.allowed)))
        columns[c.name] = pa.Column(
            _POLARS_TYPE[c.kind],
            checks=checks,
            nullable=c.nullable,
            unique=c.unique,
            required=c.required,
            description=c.description or None,
        )
    return pa.DataFrameSchema(columns, name=t.name, strict=False, ordered=False)


def _rule(check: str) -> str:
    """pandera's name of a failed check -> ours (the order rules are reported in)."""
    if check.startswith("dtype("):
        return "dtype"
    name = check.split("(")[0]
    return {
        "field_uniqueness": "unique",
        "greater_than_or_equal_to": "minimum",
        "less_than_or_equal_to": "maximum",
        "isin": "allowed",
    }.get(name, name)


def _raise_first_failure(frame: pl.DataFrame, table: Table, where: str, failures: pl.DataFrame) -> None:
    """Turn pandera's failure cases into our one-line error: the first failing column in schema
    order, then the first rule (empty, minimum, maximum, allowed, unique), then the first row."""
    order = {c.name: i for i, c in enumerate(table.columns)}
    cases = []
    for case in failures.iter_rows(named=True):
        col = case["column"] or case["failure_case"]
        rule = _rule(str(case["check"]))
        rank = _RULE_ORDER.index(rule) if rule in _RULE_ORDER else len(_RULE_ORDER)
        idx = case["index"]
        cases.append((order.get(col, len(order)), rank, -1 if idx is None else int(idx), col, rule))
    if not cases:  # pragma: no cover - pandera always lists what failed
        raise InputError(f"{table.name}: invalid table", file=where)
    _, _, idx, name, rule = min(cases)
    if rule == "column_in_dataframe":
        raise InputError(
            f"{table.name}: required column missing",
            file=where,
            field=name,
            expected=f"columns {', '.join(c.name for c in table.columns if c.required)}",
        )
    col = table.column(name)
    value = frame[name][idx] if idx >= 0 else None
    row = idx + 1 if idx >= 0 else None
    if rule == "unique":
        rows = (frame[name] == value).arg_true().to_list()
        raise InputError(
            f"duplicate value (rows {', '.join(str(r + 1) for r in rows[:5])})",
            file=where,
            row=rows[1] + 1 if len(rows) > 1 else row,
            field=name,
            value=value,
            expected="unique values",
        )
    message = {
        "not_nullable": "empty value",
        "minimum": "below the allowed range",
        "maximum": "above the allowed range",
        "allowed": "value not allowed",
        "dtype": f"wrong type {frame[name].dtype}",
    }.get(rule, f"fails {rule}")
    raise InputError(message, file=where, row=row, field=name, value=value, expected=col.expected())


def _validate_table(frame: pl.DataFrame, table: Table, where: str) -> pl.DataFrame:
    import pandera.errors as pa_errors

    frame = frame.rename({c: c.strip().lower() for c in frame.columns})
    missing = [c for c in table.columns if c.required and c.name not in frame.columns]
    if missing:
        # said before parsing: a missing column is the first thing to fix
        raise InputError(
            f"{table.name}: required column missing",
            file=where,
            field=missing[0].name,
            expected=f"columns {', '.join(c.name for c in table.columns if c.required)}",
        )
    cols: dict[str, pl.Series] = {}
    for col in table.columns:
        if col.name not in frame.columns:
            cols[col.name] = pl.Series(col.name, [None] * frame.height, dtype=_POLARS_TYPE[col.kind])
            continue
        s = _cast_column(frame, col, where)
        if col.kind == "str":
            s = s.str.strip_chars()
            s = pl.select(pl.when(s == "").then(None).otherwise(s)).to_series().alias(col.name)
        cols[col.name] = s
    declared = [c.name for c in table.columns]
    extras = [frame[c] for c in frame.columns if c not in declared]
    typed = pl.DataFrame([*cols.values(), *extras])
    try:
        pandera_schema(table).validate(typed, lazy=True)
    except pa_errors.SchemaErrors as errors:
        _raise_first_failure(typed, table, where, errors.failure_cases)
    return typed


def _as_frame(obj: Any, table: Table) -> tuple[pl.DataFrame, str]:
    if isinstance(obj, pl.DataFrame):
        return obj, table.name
    if isinstance(obj, str | Path):
        p = Path(obj)
        if not p.exists():
            raise InputError("file not found", file=str(p))
        return _read_file(p, table), str(p)
    try:  # pandas or anything polars can take
        return pl.from_pandas(obj), table.name
    except Exception as exc:
        raise InputError(
            f"table {table.name}: cannot read {type(obj).__name__}",
            file=table.name,
            expected="polars/pandas DataFrame or a path",
        ) from exc


def _require(cond: pl.Series, msg: str, where: str, fld: str, values: pl.Series, expected: str) -> None:
    i = _first_bad(~cond.fill_null(False))
    if i is not None:
        raise InputError(msg, file=where, row=i + 1, field=fld, value=values[i], expected=expected)


def _cross_checks(exp: TrialExport, where: dict[str, str]) -> None:
    p, d, o = exp.participants, exp.daily_assessments, exp.outcomes
    ids = p["participant_id"]
    # keys
    dup = d.select(pl.struct("participant_id", "day").is_duplicated()).to_series()
    i = _first_bad(dup)
    if i is not None:
        raise InputError(
            "duplicate (participant_id, day)",
            file=where["daily_assessments"],
            row=i + 1,
            field="day",
            value=f"{d['participant_id'][i]} day {d['day'][i]}",
            expected="one row per participant and day",
        )
    for name, frame in (("daily_assessments", d), ("outcomes", o), ("adverse_events", exp.adverse_events)):
        if frame is None:
            continue
        _require(
            frame["participant_id"].is_in(ids.implode()),
            "unknown participant_id",
            where[name],
            "participant_id",
            frame["participant_id"],
            "an id listed in participants",
        )
    missing = ids.filter(~ids.is_in(o["participant_id"].implode()))
    if len(missing):
        row = _first_bad(ids == missing[0])
        raise InputError(
            "participant has no outcomes row",
            file=where["outcomes"],
            row=None,
            field="participant_id",
            value=missing[0],
            expected=f"one outcomes row per participant (participants row {(row or 0) + 1})",
        )
    death, last = o["death_day"], o["last_contact_day"]
    _require(
        death.is_null() | (last >= death),
        "last_contact_day before death_day",
        where["outcomes"],
        "last_contact_day",
        last,
        ">= death_day",
    )
    # assessments after death
    dd = d.join(o.select("participant_id", "death_day"), on="participant_id", how="left")
    after = dd["death_day"].is_not_null() & (dd["day"] > dd["death_day"]) & dd["sofa_total"].is_not_null()
    i = _first_bad(after)
    if i is not None:
        raise InputError(
            "SOFA recorded after death",
            file=where["daily_assessments"],
            row=i + 1,
            field="sofa_total",
            value=f"{dd['participant_id'][i]} day {dd['day'][i]} (death day {dd['death_day'][i]})",
            expected="no assessments after death_day",
        )
    arms = exp.manifest.arms
    if arms:
        _require(
            p["arm"].is_in(arms),
            "arm not listed in manifest.json",
            where["participants"],
            "arm",
            p["arm"],
            "one of " + ", ".join(arms),
        )
    s = exp.screening
    if s is not None:
        ws = where["screening"]
        _require(
            s["eligible"] | s["exclusion_reason"].is_not_null(),
            "ineligible without exclusion_reason",
            ws,
            "exclusion_reason",
            s["exclusion_reason"],
            "a reason when eligible is false",
        )
        _require(
            ~s["randomized"] | s["eligible"],
            "randomized but not eligible",
            ws,
            "randomized",
            s["randomized"],
            "randomized only when eligible",
        )
        for fld in ("participant_id", "arm"):
            _require(
                ~s["randomized"] | s[fld].is_not_null(),
                f"randomized without {fld}",
                ws,
                fld,
                s[fld],
                f"{fld} when randomized",
            )
        kept = s["randomized"] & ~s["data_removed"].fill_null(False)
        _require(
            ~kept | s["participant_id"].is_in(ids.implode()),
            "randomized participant (data not removed) missing from participants",
            ws,
            "participant_id",
            s["participant_id"],
            "an id listed in participants, or data_removed = true",
        )


def validate_export(source: str | Path | Mapping[str, Any] | TrialExport) -> TrialExport:
    """Read and validate a trial export.

    ``source`` is a folder (``NAME.csv`` / ``NAME.parquet`` per table, optional ``manifest.json``)
    or a mapping from table name (and optionally ``"manifest"``) to a DataFrame or a file path.
    Raises :class:`InputError` at the first violation, naming the table/file, row and field.
    """
    if isinstance(source, TrialExport):
        source = source.as_mapping()
    raw: dict[str, Any] = {}
    manifest_obj: Any = None
    label: str | None = None
    if isinstance(source, str | Path):
        folder = Path(source)
        label = str(folder)
        if not folder.is_dir():
            raise InputError("export folder not found", file=str(folder), expected="a folder of tables")
        for name in TABLES:
            path = _locate(folder, name)
            if path is not None:
                raw[name] = path
        mpath = folder / "manifest.json"
        if mpath.exists():
            try:
                manifest_obj = json.loads(mpath.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON: {exc.msg}", file=str(mpath), row=exc.lineno) from exc
    else:
        raw = {k: v for k, v in source.items() if k != "manifest"}
        manifest_obj = source.get("manifest")
        unknown = sorted(set(raw) - set(TABLES))
        if unknown:
            raise InputError(
                "unknown table", file=unknown[0], expected="tables " + ", ".join(TABLES) + " and manifest"
            )
    manifest = _manifest(manifest_obj)
    frames: dict[str, pl.DataFrame | None] = {}
    where: dict[str, str] = {}
    for name, table in TABLES.items():
        if name not in raw:
            if table.required:
                raise InputError(
                    f"required table {name} missing",
                    file=label or name,
                    expected=f"{name}.csv or {name}.parquet",
                )
            frames[name] = None
            where[name] = name
            continue
        frame, w = _as_frame(raw[name], table)
        where[name] = w
        frames[name] = _validate_table(frame, table, w)
    participants = frames["participants"]
    daily = frames["daily_assessments"]
    outcomes = frames["outcomes"]
    assert participants is not None and daily is not None and outcomes is not None
    exp = TrialExport(
        participants=participants,
        daily_assessments=daily,
        outcomes=outcomes,
        screening=frames["screening"],
        adverse_events=frames["adverse_events"],
        manifest=manifest,
        source=label,
    )
    _cross_checks(exp, where)
    return exp


def _manifest(obj: Any) -> Manifest:
    if obj is None:
        return Manifest()
    if isinstance(obj, Manifest):
        return obj
    if not isinstance(obj, dict):
        raise InputError("manifest must be a JSON object", file="manifest.json", value=type(obj).__name__)
    version = str(obj.get("schema_version", SCHEMA_VERSION))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError(
            "unsupported schema_version",
            file="manifest.json",
            field="schema_version",
            value=version,
            expected=f"{SCHEMA_VERSION.split('.')[0]}.x",
        )
    arms = obj.get("arms")
    if arms is not None and (not isinstance(arms, list) or not all(isinstance(a, str) for a in arms)):
        raise InputError("arms must be a list of names", file="manifest.json", field="arms", value=arms)
    control = obj.get("control_arm")
    if control is not None and arms and control not in arms:
        raise InputError(
            "control_arm not among arms",
            file="manifest.json",
            field="control_arm",
            value=control,
            expected="one of " + ", ".join(arms),
        )
    known = {"schema_version", "trial_id", "arms", "control_arm", "exported_at"}
    return Manifest(
        schema_version=version,
        trial_id=obj.get("trial_id"),
        arms=arms,
        control_arm=control,
        exported_at=obj.get("exported_at"),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def schema_markdown(level: int = 1) -> str:
    """The schema as a Markdown table per table (for docs and for the trial service)."""
    h = "#" * level
    lines = [f"{h} Trial export schema {SCHEMA_VERSION}", ""]
    for t in TABLES.values():
        lines += [
            f"{h}# {t.name} ({'required' if t.required else 'optional'}): {t.description}",
            "",
            "| column | type | required | rules |",
            "|---|---|---|---|",
        ]
        for c in t.columns:
            rule = c.expected().removeprefix(c.kind).strip()
            if c.unique:
                rule = (rule + " unique").strip()
            lines.append(f"| {c.name} | {c.kind} | {'yes' if c.required else 'no'} | {rule} |")
        lines.append("")
    return "\n".join(lines)
