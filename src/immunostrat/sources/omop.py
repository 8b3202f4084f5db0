"""OMOP CDM v5.4 adapter: a DuckDB database file or a folder of Parquet tables.

Stays are ICU visit_detail rows (else inpatient visit_occurrence rows). Measurements and observations
map to concepts by the vocabulary (where the CDM ships ``concept``), by the standard concept ids in
``omop.yaml``, or by a LOINC code in ``*_source_value``; units from ``unit_source_value`` or the unit
concept's UCUM code. Antibiotics come from drug_exposure by name; cultures from culture LOINC codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.sources.base import STAYS_SCHEMA, SourceData
from immunostrat.sources.collect import UTC_TIME, Collector, assign_to_stays
from immunostrat.sources.mapping import expand_pattern, load_mapping
from immunostrat.sources.tabular import parse_time

SOURCE = "omop"
Reader = Callable[[str, Sequence[str] | None], pl.DataFrame | None]
"""(table, wanted columns or None for all) -> the table's rows with those of the columns it has, or
None when the CDM lacks the table."""


def _reader(path: Path, schema: str | None) -> tuple[Reader, str, Callable[[], None]]:
    """A table reader, a label for notes, and a function that releases the database."""
    if path.is_dir():

        def read_parquet(table: str, columns: Sequence[str] | None = None) -> pl.DataFrame | None:
            for candidate in (path / f"{table}.parquet", path / table):
                if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.parquet"))):
                    source = str(candidate / "*.parquet") if candidate.is_dir() else candidate
                    lazy = pl.scan_parquet(source)
                    if columns is not None:
                        names = lazy.collect_schema().names()
                        lazy = lazy.select([c for c in names if c in set(columns)])
                    return lazy.collect()
            return None

        return read_parquet, "parquet", lambda: None
    if path.is_file():
        import duckdb  # an optional dependency (the cohort extra): imported only for .duckdb files

        con = duckdb.connect(str(path), read_only=True)
        catalog = str(con.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
        prefix = (
            f'"{catalog}"."{schema}".' if schema else ""
        )  # catalog-qualified: a file cdm.duckdb may hold schema cdm
        tables: dict[str, list[str]] = {}
        for table, column in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = ? "
            "AND (? IS NULL OR table_schema = ?) ORDER BY table_name, ordinal_position",
            [catalog, schema, schema],
        ).fetchall():
            tables.setdefault(str(table).lower(), []).append(str(column))

        def read_duckdb(table: str, columns: Sequence[str] | None = None) -> pl.DataFrame | None:
            known = tables.get(table.lower())
            if known is None:
                return None
            chosen = known if columns is None else [c for c in known if c in set(columns)]
            listed = ", ".join(f'"{c}"' for c in chosen)
            return con.sql(f'SELECT {listed} FROM {prefix}"{table}"').pl()

        return read_duckdb, "duckdb", con.close
    raise InputError(
        "OMOP CDM not found", file=str(path), expected="a .duckdb file or a folder of Parquet tables"
    )


def _time(frame: pl.DataFrame, datetime_col: str, date_col: str) -> pl.Expr:
    parts = []
    for col in (datetime_col, date_col):
        if col in frame.columns:
            parts.append(parse_time(col, frame.schema[col]))
    return pl.coalesce(parts) if parts else pl.lit(None, dtype=UTC_TIME)


def _text(frame: pl.DataFrame, column: str) -> pl.Expr:
    if column in frame.columns:
        return pl.col(column).cast(pl.String).str.strip_chars()
    return pl.lit(None, dtype=pl.String)


def build_stays(read: Reader, mapping: dict[str, Any]) -> tuple[pl.DataFrame, str]:
    person = read("person", None)
    visits = read("visit_occurrence", None)
    if person is None or visits is None:
        raise InputError(
            "OMOP person and visit_occurrence tables are required", expected="person, visit_occurrence"
        )
    visits = visits.with_columns(
        _time(visits, "visit_start_datetime", "visit_start_date").alias("_vstart"),
        _time(visits, "visit_end_datetime", "visit_end_date").alias("_vend"),
    )
    details = read("visit_detail", None)
    icu_ids = [int(i) for i in mapping["icu_visit_detail_concept_ids"]]
    if details is not None and details.filter(pl.col("visit_detail_concept_id").is_in(icu_ids)).height:
        icu = details.filter(pl.col("visit_detail_concept_id").is_in(icu_ids))
        stays = icu.select(
            pl.col("visit_detail_id").cast(pl.String).alias("stay_id"),
            pl.col("person_id"),
            pl.col("visit_occurrence_id"),
            _time(icu, "visit_detail_start_datetime", "visit_detail_start_date").alias("icu_intime"),
            _time(icu, "visit_detail_end_datetime", "visit_detail_end_date").alias("icu_outtime"),
        ).join(visits.select("visit_occurrence_id", "_vstart", "_vend"), on="visit_occurrence_id", how="left")
        kind = "visit_detail (ICU)"
    else:
        inpatient = [int(i) for i in mapping["inpatient_visit_concept_ids"]]
        chosen = visits.filter(pl.col("visit_concept_id").is_in(inpatient))
        stays = chosen.select(
            pl.col("visit_occurrence_id").cast(pl.String).alias("stay_id"),
            "person_id",
            "visit_occurrence_id",
            pl.col("_vstart").alias("icu_intime"),
            pl.col("_vend").alias("icu_outtime"),
            "_vstart",
            "_vend",
        )
        kind = "visit_occurrence (inpatient visits; no ICU visit_detail rows)"
    birth = person.with_columns(
        pl.coalesce(
            _time(person, "birth_datetime", "birth_datetime"),
            pl.datetime(
                pl.col("year_of_birth").cast(pl.Int32),
                pl.col("month_of_birth").cast(pl.Int32).fill_null(7)
                if "month_of_birth" in person.columns
                else 7,
                pl.col("day_of_birth").cast(pl.Int32).fill_null(1) if "day_of_birth" in person.columns else 1,
                time_zone="UTC",
            ),
        ).alias("_birth"),
        pl.col("gender_concept_id")
        .cast(pl.Int64)
        .replace_strict(
            {int(k): v for k, v in mapping["gender_concept_ids"].items()},
            default=None,
            return_dtype=pl.String,
        )
        .alias("sex"),
    ).select("person_id", "_birth", "sex")
    stays = stays.join(birth, on="person_id", how="left")
    death = read("death", ["person_id", "death_datetime", "death_date"])
    if death is not None:
        death = death.select("person_id", _time(death, "death_datetime", "death_date").alias("death_time"))
        stays = stays.join(death.unique("person_id"), on="person_id", how="left")
    else:
        stays = stays.with_columns(pl.lit(None, dtype=UTC_TIME).alias("death_time"))
    age = (pl.col("icu_intime") - pl.col("_birth")).dt.total_days() / 365.25
    out = stays.select(
        "stay_id",
        pl.col("person_id").cast(pl.String).alias("patient_id"),
        pl.col("visit_occurrence_id").cast(pl.String).alias("hospital_admission_id"),
        pl.col("_vstart").alias("admission_time"),
        "icu_intime",
        "icu_outtime",
        age.floor().alias("age"),
        "sex",
        pl.lit(None, dtype=pl.Float64).alias("weight_kg"),
        pl.lit(None, dtype=pl.Float64).alias("height_cm"),
        "death_time",
        pl.col("_vend").alias("hospital_discharge_time"),
    )
    return out.cast(STAYS_SCHEMA).sort("stay_id"), kind  # type: ignore[arg-type]


def _vocabulary(read: Reader) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """(LOINC concept_id -> code, unit concept_id -> UCUM code) from the CDM's concept table."""
    concept = read("concept", ["concept_id", "vocabulary_id", "concept_code"])
    if concept is None:
        return None, None
    loinc = concept.filter(pl.col("vocabulary_id") == "LOINC").select(
        pl.col("concept_id").cast(pl.Int64), pl.col("concept_code").cast(pl.String).alias("_voc_loinc")
    )
    ucum = concept.filter(pl.col("vocabulary_id") == "UCUM").select(
        pl.col("concept_id").cast(pl.Int64), pl.col("concept_code").cast(pl.String).alias("_voc_unit")
    )
    return loinc, ucum


def _events(
    frame: pl.DataFrame, prefix: str, mapping: dict[str, Any], loinc_vocab: pl.DataFrame | None
) -> pl.DataFrame:
    """measurement/observation rows with a dictionary concept (or 'culture' / weight / height)."""
    concepts = load_concepts()
    code_to_concept: dict[str, str] = {}
    for c in concepts:
        for code in c.loinc:
            code_to_concept.setdefault(code, c.id)
    for code in mapping.get("culture_loinc", []):
        code_to_concept[str(code)] = "culture"
    for code in mapping.get("weight_loinc", []):
        code_to_concept[str(code)] = "_weight"
    for code in mapping.get("height_loinc", []):
        code_to_concept[str(code)] = "_height"
    id_to_concept: dict[int, str] = {}
    for concept, ids in (mapping.get("measurement_concept_ids") or {}).items():
        for i in ids:
            id_to_concept[int(i)] = concept
    for key, name in (("weight_concept_ids", "_weight"), ("height_concept_ids", "_height")):
        for i in mapping.get(key, []):
            id_to_concept[int(i)] = name
    codes = pl.DataFrame(
        {"_code": list(code_to_concept), "_by_code": list(code_to_concept.values())},
        schema={"_code": pl.String, "_by_code": pl.String},
    )
    ids = pl.DataFrame(
        {"_cid": list(id_to_concept), "_by_id": list(id_to_concept.values())},
        schema={"_cid": pl.Int64, "_by_id": pl.String},
    )
    out = frame.with_columns(pl.col(f"{prefix}_concept_id").cast(pl.Int64).alias("_cid"))
    if loinc_vocab is not None:
        out = (
            out.join(loinc_vocab.rename({"concept_id": "_cid"}), on="_cid", how="left")
            .join(codes.rename({"_code": "_voc_loinc", "_by_code": "_by_vocab"}), on="_voc_loinc", how="left")
            .drop("_voc_loinc")
        )
    else:
        out = out.with_columns(pl.lit(None, dtype=pl.String).alias("_by_vocab"))
    out = out.join(ids, on="_cid", how="left")
    out = out.with_columns(_text(out, f"{prefix}_source_value").alias("_code")).join(
        codes, on="_code", how="left"
    )
    return out.with_columns(pl.coalesce("_by_vocab", "_by_id", "_by_code").alias("_concept")).filter(
        pl.col("_concept").is_not_null()
    )


def load_omop(path: str | Path, *, schema: str | None = None) -> SourceData:
    """Stays and canonical observations from an OMOP CDM v5.4 (DuckDB file or Parquet folder).

    ``schema``: the DuckDB schema holding the CDM tables (e.g. "cdm"), where not the default."""
    read, kind, close = _reader(Path(path), schema)
    try:
        return _load(read, kind)
    finally:
        close()


def _load(read: Reader, kind: str) -> SourceData:
    mapping = load_mapping(SOURCE)
    stays, stay_kind = build_stays(read, mapping)
    loinc_vocab, ucum_vocab = _vocabulary(read)
    notes = [
        f"OMOP CDM read from {kind}; stays from {stay_kind}",
        "concepts by the vocabulary's LOINC codes"
        if loinc_vocab is not None
        else "no concept table: concepts by the standard ids in omop.yaml and LOINC source values",
    ]
    collector = Collector(SOURCE, stays, notes=notes)
    for concept, reason in (mapping.get("absent") or {}).items():
        collector.absent(concept, str(reason))
    unit_ids = pl.DataFrame(
        {
            "_uid": [int(k) for k in mapping["unit_concept_ids"]],
            "_map_unit": list(mapping["unit_concept_ids"].values()),
        },
        schema={"_uid": pl.Int64, "_map_unit": pl.String},
    )
    before = timedelta(hours=float(mapping["before_hours"]))
    infection_before = timedelta(hours=float(mapping["infection_before_hours"]))
    sizes: list[pl.DataFrame] = []
    for table, prefix in (("measurement", "measurement"), ("observation", "observation")):
        wanted = [
            "person_id",
            f"{prefix}_concept_id",
            f"{prefix}_datetime",
            f"{prefix}_date",
            "value_as_number",
            "unit_concept_id",
            "unit_source_value",
            f"{prefix}_source_value",
        ]
        frame = read(table, wanted)
        if frame is None:
            collector.notes.append(f"table {table} is not in this CDM")
            continue
        events = _events(frame.with_row_index("source_row", offset=1), prefix, mapping, loinc_vocab)
        unit_id = (
            pl.col("unit_concept_id").cast(pl.Int64)
            if "unit_concept_id" in events.columns
            else pl.lit(None, dtype=pl.Int64)
        )
        events = events.with_columns(unit_id.alias("_uid")).join(unit_ids, on="_uid", how="left")
        if ucum_vocab is not None:
            events = events.join(ucum_vocab.rename({"concept_id": "_uid"}), on="_uid", how="left")
        else:
            events = events.with_columns(pl.lit(None, dtype=pl.String).alias("_voc_unit"))
        source_unit = _text(events, "unit_source_value")
        source_unit = pl.when(source_unit == "").then(None).otherwise(source_unit)
        events = events.with_columns(
            pl.coalesce(source_unit, "_voc_unit", "_map_unit").alias("unit"),
            _time(events, f"{prefix}_datetime", f"{prefix}_date").alias("time"),
            pl.col("person_id").cast(pl.String).alias("_subject"),
            pl.col("source_row").cast(pl.Int64).alias("_rid"),
            pl.col("value_as_number").cast(pl.String).alias("value"),
        )
        is_culture = pl.col("_concept") == "culture"
        events = events.with_columns(
            pl.when(is_culture).then(pl.lit("1")).otherwise(pl.col("value")).alias("value"),
            pl.when(is_culture).then(pl.lit("")).otherwise(pl.col("unit")).alias("unit"),
        )
        lab = events.filter(~is_culture)
        cult = events.filter(is_culture)
        assigned = pl.concat(
            [
                assign_to_stays(lab, stays, subject="_subject", before=before),
                assign_to_stays(cult, stays, subject="_subject", before=infection_before),
            ],
            how="vertical_relaxed",
        )
        sizes.append(assigned.filter(pl.col("_concept").is_in(["_weight", "_height"])))
        label = f"{table}"
        outside = (
            events.group_by("_concept")
            .len()
            .join(assigned.group_by("_concept").len().rename({"len": "kept"}), on="_concept", how="left")
        )
        for concept, total, kept in outside.iter_rows():
            if concept.startswith("_"):
                continue
            collector.skip(concept, label, "outside every ICU stay window", int(total - (kept or 0)))
        for (concept,), rows in (
            assigned.filter(~pl.col("_concept").str.starts_with("_"))
            .partition_by(["_concept"], as_dict=True)
            .items()
        ):
            empty = rows.filter(pl.col("value").is_null())
            collector.skip(str(concept), label, "no value", empty.height)
            collector.add(str(concept), rows.filter(pl.col("value").is_not_null()), table=label)
    stays = _sizes(stays, sizes)
    collector.stays = stays
    _antibiotics(read, mapping, stays, collector, infection_before)
    return collector.build()


def _sizes(stays: pl.DataFrame, sizes: list[pl.DataFrame]) -> pl.DataFrame:
    """Weight (kg) and height (cm): the first value charted in the stay."""
    if not sizes:
        return stays
    rows = pl.concat(sizes, how="vertical_relaxed").with_columns(
        pl.col("value").cast(pl.Float64, strict=False)
    )
    firsts = rows.sort("time").group_by("stay_id", "_concept").agg(pl.col("value").first())
    wide = firsts.pivot(on="_concept", index="stay_id", values="value")
    for name, target in (("_weight", "weight_kg"), ("_height", "height_cm")):
        if name in wide.columns:
            stays = stays.join(wide.select("stay_id", pl.col(name).alias("_new")), on="stay_id", how="left")
            stays = stays.with_columns(pl.coalesce(target, "_new").alias(target)).drop("_new")
    return stays


def _antibiotics(
    read: Reader, mapping: dict[str, Any], stays: pl.DataFrame, collector: Collector, before: timedelta
) -> None:
    spec = mapping["antibiotic"]
    drugs = read(
        "drug_exposure",
        [
            "person_id",
            "drug_exposure_start_datetime",
            "drug_exposure_start_date",
            *spec["name_columns"],
            spec["route_column"],
        ],
    )
    if drugs is None:
        collector.absent("antibiotic", "no drug_exposure table in this CDM")
        return
    names = [c for c in spec["name_columns"] if c in drugs.columns]
    if not names:
        collector.absent("antibiotic", "drug_exposure has no drug_source_value")
        return
    text = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in names], separator=" ")
    route = _text(drugs, spec["route_column"]).fill_null("")
    frame = drugs.with_row_index("source_row", offset=1).filter(
        text.str.contains("(?i)" + expand_pattern("{antibiotics}"))
        & ~text.str.contains("(?i)" + expand_pattern("{antibiotic_exclude_name}"))
        & ~route.str.contains("(?i)" + expand_pattern("{antibiotic_exclude_route}"))
    )
    events = frame.select(
        pl.col("person_id").cast(pl.String).alias("_subject"),
        _time(frame, "drug_exposure_start_datetime", "drug_exposure_start_date").alias("time"),
        pl.col("source_row").cast(pl.Int64),
        pl.col("source_row").cast(pl.Int64).alias("_rid"),
    )
    assigned = assign_to_stays(events, stays, subject="_subject", before=before)
    collector.skip(
        "antibiotic", "drug_exposure", "outside every ICU stay window", events.height - assigned.height
    )
    collector.add(
        "antibiotic",
        assigned.with_columns(pl.lit("1").alias("value"), pl.lit("").alias("unit")),
        table="drug_exposure",
    )
