"""The generic reader behind table-shaped sources (MIMIC-IV, eICU-CRD): mapping entries -> raw rows.

For each table named in the mapping it reads only the columns and rows the entries need (lazily, so a
full database's big tables are filtered while they are scanned), finds each row's ICU stay (a stay
column, or the subject's stay by time), computes times (datetimes, or minutes from ICU admission),
applies the entry's callback by name and hands the rows to the :class:`Collector`. A table missing
from the copy makes its concepts absent with that reason; it never raises.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.sources.collect import (
    UTC_TIME,
    Collector,
    assign_to_stays,
    expand_hourly,
    find_table,
    scan_table,
)
from immunostrat.sources.mapping import ConceptEntry, TableSpec, concept_entries, expand_pattern, table_specs

# A callback receives the entry's rows (stay_id, time, value, unit, source_row, weight_kg + the raw
# columns the entry names) and returns rows with the same core columns.
Callback = Callable[[pl.DataFrame, ConceptEntry], pl.DataFrame]


@dataclass
class Provided:
    """A table supplied by the adapter instead of a file (e.g. chartevents rebuilt from MEDS)."""

    frame: pl.LazyFrame
    spec: TableSpec
    label: str


@dataclass
class TabularContext:
    root: Path
    mapping: dict[str, Any]
    collector: Collector
    callbacks: dict[str, Callback] = field(default_factory=dict)
    provided: dict[str, Provided] = field(default_factory=dict)


def parse_time(column: str, dtype: pl.DataType) -> pl.Expr:
    """A datetime column (text or typed) as UTC; unparseable text -> null."""
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        return col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    text = col.cast(pl.String).str.strip_chars()
    naive = pl.coalesce(
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d", strict=False, time_unit="us"),
    ).dt.replace_time_zone("UTC")
    # ISO 8601 with "Z" or an offset (FHIR, exports): converted to UTC
    zoned = pl.coalesce(
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%#z", strict=False, time_unit="us"),
    ).dt.convert_time_zone("UTC")
    return pl.coalesce(naive, zoned)


def _entry_filter(entry: ConceptEntry) -> pl.Expr:
    cond = pl.lit(True)
    for column, values in entry.where.items():
        cond = cond & pl.col(column).cast(pl.String).str.strip_chars().is_in(values)
    for column, pattern in entry.match.items():
        cond = cond & pl.col(column).cast(pl.String).str.contains("(?i)" + expand_pattern(pattern)).fill_null(
            False
        )
    for column, pattern in entry.exclude.items():
        cond = cond & ~pl.col(column).cast(pl.String).str.contains(
            "(?i)" + expand_pattern(pattern)
        ).fill_null(False)
    return cond


def _entry_columns(entry: ConceptEntry) -> set[str]:
    cols = {*entry.where, *entry.match, *entry.exclude}
    for name in (
        entry.time,
        entry.value,
        entry.unit_column,
        entry.time_fallback,
        entry.end_time,
        entry.weight_column,
    ):
        if name:
            cols.add(name)
    cols.update(entry.options.get("columns", []))
    if entry.requires is not None:
        cols.update({entry.requires.key, *entry.requires.where, *entry.requires.match})
    return cols


def _related_filter(entry: ConceptEntry) -> pl.Expr:
    """The rows an entry's ``requires`` names (e.g. the specimen-type rows of a blood gas)."""
    assert entry.requires is not None
    related = entry.model_copy(
        update={"where": entry.requires.where, "match": entry.requires.match, "exclude": {}}
    )
    return _entry_filter(related)


def read_tables(ctx: TabularContext) -> None:
    """Read every mapped concept of a table-shaped source into the collector."""
    mapping = ctx.mapping
    specs = table_specs(mapping)
    by_table: dict[str, list[tuple[str, ConceptEntry]]] = defaultdict(list)
    for concept in mapping.get("concepts", {}):
        for entry in concept_entries(mapping, concept):
            by_table[entry.table].append((concept, entry))
    for concept, reason in (mapping.get("absent") or {}).items():
        ctx.collector.absent(concept, str(reason))
    # Tables in mapping order; fallback entries (fill_missing_stays) after all primary entries.
    ordered = sorted(
        ((t, c, e) for t, items in by_table.items() for c, e in items), key=lambda x: x[2].fill_missing_stays
    )
    frames: dict[str, tuple[pl.DataFrame, TableSpec, str] | None] = {}
    for table in by_table:
        frames[table] = _load_table(ctx, table, specs[table], [e for _, e in by_table[table]])
    for table, concept, entry in ordered:
        loaded = frames[table]
        if loaded is None:
            ctx.collector.mapped[concept].append(table)
            ctx.collector.missing_tables[concept].append(specs[table].file)
            ctx.collector.absent(concept, f"table {specs[table].file} is missing from this copy")
            continue
        frame, spec, label = loaded
        lacking = sorted(_entry_columns(entry) - set(frame.columns))
        if lacking:  # a copy whose table lacks a column: the entry is absent, reported, not a crash
            ctx.collector.mapped[concept].append(label)
            ctx.collector.missing_tables[concept].append(f"{label} columns {', '.join(lacking)}")
            ctx.collector.absent(concept, f"{label} has no column {', '.join(lacking)}")
            continue
        _read_entry(ctx, concept, entry, frame, spec, label)
    missing = [specs[t].file for t, loaded in frames.items() if loaded is None]
    if missing:
        ctx.collector.notes.append("tables missing from this copy: " + ", ".join(sorted(missing)))


def _load_table(
    ctx: TabularContext, table: str, spec: TableSpec, entries: list[ConceptEntry]
) -> tuple[pl.DataFrame, TableSpec, str] | None:
    if table in ctx.provided:
        provided = ctx.provided[table]
        lazy, spec, label = provided.frame, provided.spec, provided.label
    else:
        path = find_table(ctx.root, spec.file)
        if path is None:
            return None
        lazy = scan_table(path)
        label = path.relative_to(ctx.root).as_posix()
    names = lazy.collect_schema().names()
    wanted = set().union(*(_entry_columns(e) for e in entries))
    for key in (spec.stay_column, spec.subject_column):
        if key:
            wanted.add(key)
    present = [c for c in names if c in wanted]
    condition = pl.lit(False)
    for entry in entries:
        if _entry_columns(entry) <= set(names):
            condition = condition | _entry_filter(entry)
            if entry.requires is not None:
                condition = condition | _related_filter(entry)
    if "source_row" not in names:
        lazy = lazy.with_row_index("source_row", offset=1)
    present = [c for c in present if c != "source_row"]
    # streaming: a full database's big tables (chartevents, labevents) are filtered batch by batch
    frame = lazy.select("source_row", *present).filter(condition).collect(engine="streaming")
    return frame.with_columns(pl.col("source_row").cast(pl.Int64)), spec, label


def _read_entry(
    ctx: TabularContext, concept: str, entry: ConceptEntry, table: pl.DataFrame, spec: TableSpec, label: str
) -> None:
    col = ctx.collector
    stays = col.stays
    rows = table.filter(_entry_filter(entry))
    if rows.height == 0:
        col.mapped[concept].append(label)
        return
    if entry.requires is not None:
        key = entry.requires.key
        keys = table.filter(_related_filter(entry)).select(pl.col(key).cast(pl.String)).unique()
        related = rows.with_columns(pl.col(key).cast(pl.String).alias("_related_key"))
        kept = related.filter(pl.col("_related_key").is_in(keys[key].implode()))
        col.skip(concept, label, entry.requires.reason, rows.height - kept.height)
        rows = kept.drop("_related_key")
    # raw text columns a callback reads after the value column has replaced them (e.g. GCS "ETT")
    rows = rows.with_columns(
        [pl.col(c).cast(pl.String).alias(f"_text_{c}") for c in entry.options.get("keep_text", [])]
    )
    # Value: a column (text or number) or a constant.
    if entry.constant is not None:
        value = pl.lit(entry.constant).cast(pl.String)
    else:
        value = pl.col(str(entry.value)).cast(pl.String).str.strip_chars()
    rows = rows.with_columns(value.alias("_value"))
    empty = rows.filter(pl.col("_value").is_null() | (pl.col("_value") == ""))
    col.skip(concept, label, "no value", empty.height)
    rows = rows.filter(pl.col("_value").is_not_null() & (pl.col("_value") != ""))
    if entry.missing_values:
        sentinel = pl.col("_value").cast(pl.Float64, strict=False).is_in(entry.missing_values)
        col.skip(concept, label, "missing-value code", rows.filter(sentinel).height)
        rows = rows.filter(~sentinel.fill_null(False))
    # Unit: the unit column, else the fixed unit; source spellings mapped to the dictionary's.
    if entry.unit_column:
        unit = pl.col(entry.unit_column).cast(pl.String).str.strip_chars()
        fixed = pl.lit(entry.unit, dtype=pl.String)
        unit = pl.when(unit.is_null() | unit.is_in(["", "UNK"])).then(fixed).otherwise(unit)
    else:
        unit = pl.lit(entry.unit, dtype=pl.String)
    if entry.unit_spelling:
        unit = unit.replace(entry.unit_spelling)
    rows = rows.with_columns(unit.cast(pl.String).alias("_unit"))
    weight = (
        pl.col(entry.weight_column).cast(pl.Float64, strict=False)
        if entry.weight_column
        else pl.lit(None, dtype=pl.Float64)
    )
    rows = rows.with_columns(pl.when(weight > 0).then(weight).alias("_weight"))
    # Stay and time.
    if spec.time_kind == "datetime":
        rows = rows.with_columns(_time_expr(rows, entry).alias("_time"))
        if entry.end_time:
            rows = rows.with_columns(parse_time(entry.end_time, rows.schema[entry.end_time]).alias("_end"))
        bad = rows.filter(pl.col("_time").is_null())
        col.skip(concept, label, "no time", bad.height)
        rows = rows.filter(pl.col("_time").is_not_null())
    if spec.stay_column:
        rows = rows.with_columns(pl.col(spec.stay_column).cast(pl.String).str.strip_chars().alias("stay_id"))
        known = rows.filter(pl.col("stay_id").is_in(stays["stay_id"].implode()))
        col.skip(concept, label, "stay not in the stay table", rows.height - known.height)
        rows = known
    else:
        assert spec.subject_column, f"table {label}: needs stay_column or subject_column"
        events = rows.with_columns(
            pl.col(spec.subject_column).cast(pl.String).str.strip_chars().alias("_subject"),
            pl.col("_time").alias("time"),
            pl.col("source_row").alias("_rid"),
        )
        assigned = assign_to_stays(
            events,
            stays,
            subject="_subject",
            before=timedelta(hours=spec.before_hours),
            after=timedelta(hours=spec.after_hours),
            every_stay=spec.every_stay,
        ).drop("time", "_rid", "_subject")
        col.skip(
            concept,
            label,
            "outside every ICU stay window",
            rows.height - assigned["source_row"].n_unique() if assigned.height else rows.height,
        )
        rows = assigned
    if spec.time_kind == "offset_minutes":
        rows = _offset_times(rows, entry, stays)
        if entry.end_time:
            end_seconds = (pl.col(entry.end_time).cast(pl.Float64, strict=False) * 60).round(0)
            rows = rows.with_columns(
                (pl.col("_intime") + pl.duration(seconds=end_seconds.cast(pl.Int64))).alias("_end")
            )
        bad = rows.filter(pl.col("_time").is_null())
        col.skip(concept, label, "no time", bad.height)
        rows = rows.filter(pl.col("_time").is_not_null())
    if entry.fill_missing_stays:
        have = col.has_rows(concept)
        before = rows.height
        rows = rows.join(have, on="stay_id", how="anti")
        col.skip(concept, label, "fallback not needed (stay has primary rows)", before - rows.height)
    out = rows.with_columns(
        pl.col("_time").alias("time"),
        pl.col("_value").alias("value"),
        pl.col("_unit").alias("unit"),
        pl.col("_weight").alias("weight_kg"),
    )
    if entry.callback:
        callback = ctx.callbacks.get(entry.callback)
        if callback is None:
            raise ValueError(f"{concept}: unknown callback {entry.callback!r}")
        out = callback(out, entry)
    if entry.end_time and "_end" in out.columns:
        col.intervals.append(
            out.select(
                "stay_id",
                pl.lit(concept).alias("concept"),
                pl.col("time").alias("start"),
                pl.col("_end").alias("end"),
                pl.lit(label).alias("table"),
                "source_row",
            ).cast({"start": UTC_TIME, "end": UTC_TIME})
        )
        out = expand_hourly(out.rename({"_end": "end_time"}), stop_value="0")
    col.add(concept, out.select("stay_id", "time", "value", "unit", "source_row", "weight_kg"), table=label)


def _time_expr(rows: pl.DataFrame, entry: ConceptEntry) -> pl.Expr:
    if not entry.time:
        raise ValueError(f"{entry.table}: fixed_offset_minutes needs a table with time_kind offset_minutes")
    primary = parse_time(entry.time, rows.schema[entry.time])
    if entry.time_fallback:
        fallback = parse_time(entry.time_fallback, rows.schema[entry.time_fallback])
        if entry.fallback_end_of_day:
            fallback = fallback.dt.truncate("1d") + timedelta(days=1) - timedelta(seconds=1)
        return pl.coalesce(primary, fallback)
    return primary


def _offset_times(rows: pl.DataFrame, entry: ConceptEntry, stays: pl.DataFrame) -> pl.DataFrame:
    rows = rows.join(stays.select("stay_id", pl.col("icu_intime").alias("_intime")), on="stay_id", how="left")
    if entry.fixed_offset_minutes is not None:
        minutes = pl.lit(entry.fixed_offset_minutes)
    else:
        minutes = pl.col(entry.time).cast(pl.Float64, strict=False)
    return rows.with_columns(
        (pl.col("_intime") + pl.duration(seconds=(minutes * 60).round(0).cast(pl.Int64))).alias("_time")
    )


# ------------------------------------------------------------------------ callbacks shared by sources
def gcs_sum(frame: pl.DataFrame, entry: ConceptEntry) -> pl.DataFrame:
    """GCS total = eye + verbal + motor charted at the same time; incomplete sets are left out.

    ``options.component``: the column naming the component (e.g. itemid). The kept row traces to the
    first component's source row.
    """
    component = str(entry.options.get("component", "itemid"))
    unable = entry.options.get("unable_text")
    text = f"_text_{entry.options.get('unable_column', 'value')}"
    flagged = (
        pl.col(text).str.contains(str(unable)).fill_null(False)
        if unable and text in frame.columns
        else pl.lit(False)
    )
    grouped = frame.with_columns(
        pl.col("value").cast(pl.Float64, strict=False).alias("_v"), flagged.alias("_unable")
    ).group_by("stay_id", "time")
    sums = grouped.agg(
        # a verbal response not testable because of the tube: the GCS before sedation is presumed
        # normal, 15 (mimic-code gcs.sql: "No Response-ETT" -> verbal 0 -> GCS 15; ricu gcs
        # sed_impute = "max"; SAPS II and Vincent 1996 score the GCS without sedation)
        pl.when(pl.col("_unable").any()).then(pl.lit(15.0)).otherwise(pl.col("_v").sum()).alias("_sum"),
        pl.col(component).n_unique().alias("_n"),
        pl.len().alias("_rows"),
        pl.col("source_row").min(),
        pl.col("unit").first(),
    )
    complete = sums.filter((pl.col("_n") == 3) & (pl.col("_rows") == 3))
    return complete.select(
        "stay_id",
        "time",
        pl.col("_sum").cast(pl.String).alias("value"),
        pl.lit("").alias("unit"),
        "source_row",
        pl.lit(None, dtype=pl.Float64).alias("weight_kg"),
    )


def fio2_unit_by_magnitude(frame: pl.DataFrame, entry: ConceptEntry) -> pl.DataFrame:
    """FiO2 charted as a percentage (21-100) or, by some, as a fraction (0.21-1): tell them apart
    by magnitude and label the unit; values that are neither fail the dictionary's plausible range."""
    number = pl.col("value").cast(pl.Float64, strict=False)
    return frame.with_columns(pl.when(number <= 1).then(pl.lit("")).otherwise(pl.lit("%")).alias("unit"))


def distinct_events(frame: pl.DataFrame, entry: ConceptEntry) -> pl.DataFrame:
    """One event per ``options.key`` columns (e.g. one culture per specimen), the earliest kept."""
    keys = ["stay_id", *entry.options.get("key", [])]
    return frame.sort("time").unique(subset=keys, keep="first", maintain_order=True)


def unit_from_name(frame: pl.DataFrame, entry: ConceptEntry) -> pl.DataFrame:
    """The unit written in brackets at the end of a name, e.g. "Norepinephrine (mcg/min)"."""
    column = str(entry.options.get("column", "drugname"))
    unit = pl.col(column).str.extract(r"\(([^()]*)\)\s*$", 1).str.strip_chars()
    named = pl.when(unit.is_not_null() & (unit != "")).then(unit).otherwise(None)
    zero_unit = entry.options.get("zero_unit")
    if zero_unit:
        # a charted rate of 0 is a stopped infusion in any unit ("ml/hr", "()"): kept, so the stop counts
        stopped = pl.col("value").cast(pl.Float64, strict=False) == 0
        named = pl.when(stopped.fill_null(False)).then(pl.lit(str(zero_unit))).otherwise(named)
    return frame.with_columns(named.alias("unit"))


SHARED_CALLBACKS: dict[str, Callback] = {
    "gcs_sum": gcs_sum,
    "fio2_unit_by_magnitude": fio2_unit_by_magnitude,
    "distinct_events": distinct_events,
    "unit_from_name": unit_from_name,
}
