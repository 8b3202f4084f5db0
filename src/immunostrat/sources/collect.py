"""What every adapter shares: collect raw rows per concept, convert them all through
``immunostrat.concepts.canonicalize`` (lenient: junk is dropped and counted, never a crash), trace each
kept value to its table and row, and write the per-concept report.

Adapters hand the collector frames with columns ``stay_id, time (UTC datetime), value, unit,
source_row`` and optionally ``weight_kg`` (a per-row recorded body weight for per-minute drug rates;
rows without one use the stay's weight). The collector never does unit arithmetic itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl

from immunostrat.concepts import canonicalize, empty_observations
from immunostrat.sources.base import STAYS_SCHEMA, ConceptStatus, SourceData
from immunostrat.sources.mapping import reported_concepts

UTC_TIME = pl.Datetime("us", "UTC")
_KEY_SEP = "\x1f"  # stay id + per-row weight: a temporary patient key for canonicalize


@dataclass
class _Part:
    concept: str
    table: str
    frame: pl.DataFrame


@dataclass
class Collector:
    """Accumulates raw rows per concept for one source, then canonicalizes them in one pass."""

    source: str
    stays: pl.DataFrame
    parts: list[_Part] = field(default_factory=list)
    absent_reasons: dict[str, str] = field(default_factory=dict)
    mapped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    skipped: list[tuple[str, str, str, int]] = field(default_factory=list)  # concept, table, reason, rows
    notes: list[str] = field(default_factory=list)
    intervals: list[pl.DataFrame] = field(default_factory=list)
    missing_tables: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, concept: str, frame: pl.DataFrame, *, table: str) -> None:
        """Raw rows of one concept from one table (columns: see the module docstring)."""
        self.mapped[concept].append(table)
        if frame.height == 0:
            return
        weight = (
            pl.col("weight_kg").cast(pl.Float64, strict=False)
            if "weight_kg" in frame.columns
            else pl.lit(None, dtype=pl.Float64)
        )
        out = frame.select(
            pl.col("stay_id").cast(pl.String),
            pl.col("time").cast(UTC_TIME),
            _as_text(frame, "value"),
            pl.col("unit").cast(pl.String),
            pl.col("source_row").cast(pl.Int64),
            weight.alias("weight_kg"),
        )
        self.parts.append(_Part(concept, table, out))

    def skip(self, concept: str, table: str, reason: str, rows: int) -> None:
        """Rows read but left out before conversion (no value, outside every ICU stay, ...)."""
        if rows:
            self.skipped.append((concept, table, reason, rows))

    def absent(self, concept: str, reason: str) -> None:
        self.absent_reasons.setdefault(concept, reason)

    def has_rows(self, concept: str) -> pl.DataFrame:
        """Stay ids that already have rows of ``concept`` (for fallback entries)."""
        frames = [p.frame.select("stay_id") for p in self.parts if p.concept == concept]
        return pl.concat(frames).unique() if frames else pl.DataFrame(schema={"stay_id": pl.String})

    def build(self, extra_tables: dict[str, pl.DataFrame] | None = None) -> SourceData:
        stays = conform_stays(self.stays)
        kept, rejected = self._canonical(stays)
        report = self._report(kept, rejected)
        tables: dict[str, pl.DataFrame] = {"dropped": self._dropped(rejected)}
        if self.intervals:
            tables["intervals"] = pl.concat(self.intervals, how="vertical_relaxed")
        tables.update(extra_tables or {})
        return SourceData(self.source, stays, kept, report, list(self.notes), tables)

    # ---------------------------------------------------------------- internals
    def _canonical(self, stays: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        no_rejects = pl.DataFrame(schema={"concept": pl.String, "table": pl.String, "reason": pl.String})
        if not self.parts:
            return empty_observations(), no_rejects
        raw = pl.concat(
            [
                p.frame.with_columns(pl.lit(p.concept).alias("concept"), pl.lit(p.table).alias("table"))
                for p in self.parts
            ]
        ).with_row_index("gid", offset=1)
        raw = raw.with_columns(pl.col("gid").cast(pl.Int64))
        weight_text = pl.col("weight_kg").round(6).cast(pl.String)
        key = (
            pl.when(pl.col("weight_kg").is_not_null())
            .then(pl.col("stay_id") + _KEY_SEP + weight_text)
            .otherwise(pl.col("stay_id"))
        )
        raw = raw.with_columns(key.alias("_key"))
        patients = _patients_for(raw, stays)
        text = raw.select(
            pl.col("_key").alias("patient_id"),
            pl.col("time").dt.convert_time_zone("UTC").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f").alias("time"),
            pl.col("concept"),
            pl.col("value"),
            pl.col("unit").fill_null(""),
        )
        frame, errors, _anchor = canonicalize(
            text, source=self.source, patients=patients, lenient=True, source_rows=raw["gid"]
        )
        trace = raw.select("gid", "stay_id", "table", pl.col("source_row").alias("_row"))
        kept = (
            frame.join(trace, left_on="source_row", right_on="gid", how="left")
            .with_columns(
                pl.col("stay_id").alias("patient_id"),
                (pl.lit(self.source + ":") + pl.col("table")).alias("source"),
                pl.col("_row").alias("source_row"),
            )
            .select(frame.columns)
            .sort("patient_id", "time", "concept", "source_row")
        )
        if errors:
            err = pl.DataFrame(
                {
                    "gid": [e.row for e in errors],
                    "field": [e.field for e in errors],
                    "message": [e.message for e in errors],
                },
                schema={"gid": pl.Int64, "field": pl.String, "message": pl.String},
            )
            rejected = err.join(raw.select("gid", "concept", "table"), on="gid", how="left").select(
                "concept", "table", _reason(pl.col("field"), pl.col("message")).alias("reason")
            )
        else:
            rejected = no_rejects
        return kept, rejected

    def _dropped(self, rejected: pl.DataFrame) -> pl.DataFrame:
        schema = {"concept": pl.String, "table": pl.String, "reason": pl.String, "rows": pl.Int64}
        before = pl.DataFrame(self.skipped, schema=schema, orient="row")
        after = rejected.group_by("concept", "table", "reason").agg(pl.len().cast(pl.Int64).alias("rows"))
        return pl.concat([before, after.select(list(schema))]).sort("concept", "table", "reason")

    def _report(self, kept: pl.DataFrame, rejected: pl.DataFrame) -> list[ConceptStatus]:
        counts = dict(kept.group_by("concept").len().iter_rows())
        by_table = kept.group_by("concept", "source").len().sort("concept", "source")
        table_text: dict[str, list[str]] = defaultdict(list)
        for concept, source, n in by_table.iter_rows():
            table_text[concept].append(f"{source.split(':', 1)[-1]} {n}")
        dropped = self._dropped(rejected)
        drop_text: dict[str, list[str]] = defaultdict(list)
        for concept, table, reason, n in dropped.iter_rows():
            drop_text[concept].append(f"{n} {reason} ({table})")
        order = list(dict.fromkeys([*self.mapped, *self.absent_reasons, *reported_concepts()]))
        report: list[ConceptStatus] = []
        for concept in order:
            rows = int(counts.get(concept, 0))
            parts = []
            if table_text.get(concept):
                parts.append("rows: " + ", ".join(table_text[concept]))
            if drop_text.get(concept):
                parts.append("not kept: " + "; ".join(drop_text[concept]))
            if self.missing_tables.get(concept):
                parts.append("missing from this copy: " + ", ".join(self.missing_tables[concept]))
            if rows:
                report.append(ConceptStatus(concept, rows, "present", "; ".join(parts)))
                continue
            if concept in self.absent_reasons:
                reason = self.absent_reasons[concept]
            elif concept in self.mapped:
                reason = f"mapped ({', '.join(dict.fromkeys(self.mapped[concept]))}) but no usable rows here"
            else:
                reason = f"not mapped for {self.source}"
            report.append(ConceptStatus(concept, 0, "absent", "; ".join([reason, *parts])))
        return report


def _as_text(frame: pl.DataFrame, column: str) -> pl.Expr:
    dtype = frame.schema[column]
    if dtype == pl.String:
        return pl.col(column).str.strip_chars().alias(column)
    return pl.col(column).cast(pl.String).alias(column)


def _reason(field_expr: pl.Expr, message: pl.Expr) -> pl.Expr:
    """A short, countable reason (the InputError messages carry the values; reasons must not)."""
    return (
        pl.when(message.str.contains("outside the plausible range"))
        .then(pl.lit("outside the plausible range"))
        .when(message.str.contains("needs the patient's weight"))
        .then(pl.lit("per-minute rate without a recorded weight"))
        .when(field_expr == "unit")
        .then(pl.lit("unit: ") + message.str.replace(r" for [a-z0-9_]+$", ""))
        .otherwise(message)
    )


def _patients_for(raw: pl.DataFrame, stays: pl.DataFrame) -> pl.DataFrame:
    """Patient table for canonicalize: the stay's weight, plus one key per recorded per-row weight."""
    base = stays.select(pl.col("stay_id").alias("patient_id"), pl.col("weight_kg"))
    keyed = (
        raw.filter(pl.col("weight_kg").is_not_null())
        .select(pl.col("_key").alias("patient_id"), pl.col("weight_kg"))
        .unique("patient_id")
    )
    frame = pl.concat([base, keyed]).unique("patient_id", keep="last")
    frame = frame.with_columns(
        pl.when((pl.col("weight_kg") > 0) & (pl.col("weight_kg") < 500))
        .then(pl.col("weight_kg"))
        .alias("weight_kg")
    )
    return frame.with_columns(
        pl.lit(None, dtype=pl.Float64).alias("age"),
        pl.lit(None, dtype=pl.String).alias("sex"),
        pl.lit(None, dtype=pl.Float64).alias("height_cm"),
        pl.lit(None, dtype=UTC_TIME).alias("admission_time"),
    ).select("patient_id", "age", "sex", "weight_kg", "height_cm", "admission_time")


# -------------------------------------------------------------------- shared helpers
def conform_stays(frame: pl.DataFrame) -> pl.DataFrame:
    """The stays table in STAYS_SCHEMA order and types; columns the source lacks are null."""
    missing = [
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in STAYS_SCHEMA.items() if name not in frame
    ]
    return frame.with_columns(missing).select(list(STAYS_SCHEMA)).cast(STAYS_SCHEMA)  # type: ignore[arg-type]


def expand_hourly(
    frame: pl.DataFrame,
    *,
    start: str = "time",
    end: str = "end_time",
    stop_value: str | None = None,
    group: tuple[str, ...] = ("stay_id",),
) -> pl.DataFrame:
    """A period becomes points at its start and every hour after, while before its end.

    With ``stop_value`` (e.g. "0" for a drug rate), a point with that ``value`` is added at the end
    of each period that no other period of the same ``group`` continues (a gap or the last one), so
    that "a charted rate runs until the next charted one" stops where the infusion stopped.
    """
    if frame.height == 0:
        return frame.drop(end)
    last = (
        pl.when(pl.col(end) > pl.col(start))
        .then(pl.col(end) - timedelta(microseconds=1))
        .otherwise(pl.col(start))
    )
    points = (
        frame.with_columns(pl.datetime_ranges(pl.col(start), last, interval="1h").alias("_points"))
        .explode("_points")
        .with_columns(pl.col("_points").alias(start))
        .drop("_points")
    )
    if stop_value is None:
        return points.drop(end)
    ended = frame.with_row_index("_pid").filter(pl.col(end) > pl.col(start))
    spans = ended.select(*group, pl.col(start).alias("_s"), pl.col(end).alias("_e"))
    continued = (
        ended.select("_pid", *group, end)
        .join(spans, on=list(group), how="inner")
        .filter((pl.col("_s") <= pl.col(end)) & (pl.col(end) < pl.col("_e")))
        .select("_pid")
        .unique()
    )
    stops = (
        ended.join(continued, on="_pid", how="anti")
        .drop("_pid")
        .with_columns(pl.col(end).alias(start), pl.lit(stop_value).alias("value"))
    )
    return pl.concat([points, stops.select(points.columns)]).drop(end)


def assign_to_stays(
    events: pl.DataFrame,
    stays: pl.DataFrame,
    *,
    subject: str,
    before: timedelta = timedelta(0),
    after: timedelta = timedelta(0),
    every_stay: bool = False,
) -> pl.DataFrame:
    """Give each event (``subject``, ``time``, ``_rid``) the ICU stay of that subject it falls in.

    A window runs from ``before`` ahead of ICU admission to ``after`` past discharge. An event inside
    a stay belongs to it; otherwise to the stay whose admission it precedes most closely. With
    ``every_stay`` an event belongs to every stay whose window holds it (one row per stay; mimic-code's
    suspicion_of_infection.sql likewise gives each ICU stay a copy of the hospitalization's
    prescriptions). Events in no window are left out (the caller counts them).
    """
    windows = stays.select(
        pl.col("patient_id").alias(subject), "stay_id", pl.col("icu_intime"), pl.col("icu_outtime")
    )
    joined = events.join(windows, on=subject, how="inner").filter(
        (pl.col("time") >= pl.col("icu_intime") - before)
        & (pl.col("icu_outtime").is_null() | (pl.col("time") <= pl.col("icu_outtime") + after))
    )
    if every_stay:
        return joined.drop("icu_intime", "icu_outtime")
    inside = (pl.col("time") >= pl.col("icu_intime")) & (
        pl.col("icu_outtime").is_null() | (pl.col("time") <= pl.col("icu_outtime"))
    )
    distance = (pl.col("icu_intime") - pl.col("time")).abs()
    best = joined.with_columns((~inside).alias("_outside"), distance.alias("_distance")).sort(
        "_rid", "_outside", "_distance"
    )
    return best.unique("_rid", keep="first", maintain_order=True).drop(
        "icu_intime", "icu_outtime", "_outside", "_distance"
    )


def find_table(root: Path, file: str) -> Path | None:
    """The file for table ``file`` (relative, no extension): Parquet, CSV.gz or CSV; or a Parquet folder."""
    for suffix in (".parquet", ".csv.gz", ".csv", ""):
        candidate = root / f"{file}{suffix}"
        if candidate.is_file() or (suffix == "" and candidate.is_dir() and any(candidate.glob("*.parquet"))):
            return candidate
    # eICU and others sometimes ship lower-case names
    parent = (root / file).parent
    if parent.is_dir():
        stem = Path(file).name.lower()
        for candidate in parent.iterdir():
            name = candidate.name.lower()
            if name in {f"{stem}.parquet", f"{stem}.csv.gz", f"{stem}.csv"}:
                return candidate
    return None


def scan_table(path: Path) -> pl.LazyFrame:
    """A lazy scan with every column as text (CSV) or as stored (Parquet)."""
    if path.is_dir():
        return pl.scan_parquet(str(path / "*.parquet"))
    if path.name.endswith(".parquet"):
        return pl.scan_parquet(path)
    return pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
