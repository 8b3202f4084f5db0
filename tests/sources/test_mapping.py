"""Mapping files (data), the shared collector (one canonicalize pass, junk counted) and the package's
layering rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

import immunostrat.sources as sources
from immunostrat.sources import SOURCES, load_mapping
from immunostrat.sources.collect import Collector, expand_hourly
from immunostrat.sources.mapping import check_mapping, expand_pattern

MAPPINGS = ["mimic-iv", "mimic-iv-demo", "eicu", "eicu-demo", "physionet2019", "omop", "fhir", "long"]
T0 = datetime(2024, 1, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize("name", MAPPINGS)
def test_every_mapping_loads(name: str) -> None:
    mapping = load_mapping(name)
    assert mapping["source"] in SOURCES


def test_one_mapping_per_source() -> None:
    folder = Path(sources.__file__).parent
    for name in SOURCES:
        assert (folder / f"{name}.yaml").is_file()


def test_unknown_concept_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown concept"):
        check_mapping({"concepts": {"not_a_concept": {"table": "t", "time": "x"}}, "tables": {}}, "test")
    with pytest.raises(ValueError, match="both mapped and absent"):
        check_mapping({"concepts": {"map": {"table": "t", "time": "x"}}, "absent": {"map": "no"}}, "test")


def test_antibiotic_names() -> None:
    names = re.compile(expand_pattern("{antibiotics}"), re.IGNORECASE)
    assert names.search("Vancomycin 1 g IV") and names.search("PIPERACILLIN-TAZOBACTAM")
    assert not names.search("Acetaminophen") and not names.search("Heparin")
    assert re.search(expand_pattern("{antibiotic_exclude_route}"), "OU", re.IGNORECASE)


def collector_with(rows: list[tuple[str, str, str, float | None]]) -> Collector:
    stays = pl.DataFrame(
        {"stay_id": ["s1"], "patient_id": ["p1"], "icu_intime": [T0], "weight_kg": [70.0]}
    ).with_columns(pl.col("icu_intime").cast(pl.Datetime("us", "UTC")))
    collector = Collector("test", stays.select("stay_id", "patient_id", "icu_intime", "weight_kg"))
    frame = pl.DataFrame(
        [(("s1", T0, v, u, i + 1, w)) for i, (_, v, u, w) in enumerate(rows)],
        schema={"stay_id": pl.String, "time": pl.Datetime("us", "UTC"), "value": pl.String,
                "unit": pl.String, "source_row": pl.Int64, "weight_kg": pl.Float64},
        orient="row",
    )  # fmt: skip
    for concept in dict.fromkeys(c for c, *_ in rows):
        part = frame.filter(pl.Series([c == concept for c, *_ in rows]))
        collector.add(concept, part, table="t")
    return collector


def test_collector_band_edges_and_recorded_weight() -> None:
    # norepinephrine SOFA edge 0.1 ug/kg/min on both sides, by the row's weight (80 kg) and by the
    # stay's weight (70 kg); vasopressin units/hour -> units/min (x 1/60, never x 60).
    data = collector_with(
        [
            ("norepinephrine_rate", "8", "mcg/min", 80.0),
            ("norepinephrine_rate", "8.08", "mcg/min", 80.0),
            ("norepinephrine_rate", "7", "mcg/min", None),
            ("vasopressin_rate", "2.4", "units/hour", None),
            ("map", "abc", "mmHg", None),
            ("map", "70", "mmHg", None),
            ("map", "7000", "mmHg", None),
        ]
    ).build()
    got = data.observations.sort("source_row")
    assert got["value"].to_list() == [0.1, 0.101, 0.1, 0.04, 70.0]
    assert got["patient_id"].unique().to_list() == ["s1"]  # the per-row weight key never leaks
    dropped = {r["reason"]: r["rows"] for r in data.tables["dropped"].iter_rows(named=True)}
    assert dropped == {"value is not a number": 1, "outside the plausible range": 1}
    report = {c.concept: c for c in data.report}
    assert report["map"].rows == 1 and "1 outside the plausible range" in report["map"].detail
    assert report["il6"].status == "absent" and report["il6"].detail == "not mapped for test"


def test_expand_hourly_with_stops() -> None:
    t = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(8, 14)]
    frame = pl.DataFrame(
        {
            "stay_id": ["s"] * 3,
            "time": [t[0], t[2], t[4]],
            "end_time": [t[2], t[3], t[5]],
            "value": ["5", "7", "9"],
        }
    ).with_columns(pl.col("time", "end_time").cast(pl.Datetime("us", "UTC")))
    out = expand_hourly(frame, stop_value="0").sort("time", "value")
    # 08-10 continued by 10-11 (no stop at 10:00); a gap 11-12: stop at 11:00; the last stops at 13:00
    assert list(zip(out["time"].dt.hour(), out["value"], strict=True)) == [
        (8, "5"), (9, "5"), (10, "7"), (11, "0"), (12, "9"), (13, "0")
    ]  # fmt: skip


def test_expand_hourly() -> None:
    frame = pl.DataFrame(
        {"time": [T0, T0], "end_time": [datetime(2024, 1, 1, 10, tzinfo=UTC), T0], "v": [1, 2]}
    ).with_columns(pl.col("time", "end_time").cast(pl.Datetime("us", "UTC")))
    out = expand_hourly(frame)
    assert out["v"].to_list() == [1, 1, 2]  # 08:00, 09:00 (10:00 is the end); a zero-length period: start
    assert "end_time" not in out.columns


def test_no_machine_paths_and_layering() -> None:
    folder = Path(sources.__file__).parent
    for path in [*folder.glob("*.py"), *folder.glob("*.yaml")]:
        text = path.read_text(encoding="utf-8")
        assert "/work/" not in text and "/home/" not in text, path.name
        if path.suffix == ".py":
            for forbidden in ("scores", "protocols", "cohort", "cli", "api", "trial", "simulation"):
                assert not re.search(rf"^\s*(from|import) immunostrat\.{forbidden}\b", text, re.M), path.name
