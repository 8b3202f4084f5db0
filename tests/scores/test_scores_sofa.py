"""SOFA (Vincent 1996; domain.md B1): every band edge on both sides, the ventilation rule, vasopressor
bands, urine output, missing organ systems, monotonicity (hypothesis) and polars == DuckDB."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from immunostrat.scores.sofa import SOFA_COMPONENTS, SOFA_INPUTS, SOFA_OUTPUTS, sofa

FLOAT_INPUTS = {name: pl.Float64 for name in SOFA_INPUTS}

# Shrinking re-scores a frame per step (~0.1 s each): report the failing batch as found instead.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows with any subset of the SOFA inputs, every input column typed Float64 (absent -> null)."""
    data = {name: [r.get(name) for r in rows] for name in SOFA_INPUTS}
    return pl.DataFrame(data, schema=FLOAT_INPUTS)


def _key(inputs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, None if v is None else float(v)) for k, v in inputs.items()))


_PENDING: list[dict[str, Any]] = []
_CACHE: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}


def prefetch(cases: list[dict[str, Any]]) -> None:
    """Queue inputs so that the first score() call scores them all in one frame (a call costs ~0.1 s)."""
    _PENDING.extend(cases)


def score(**inputs: Any) -> dict[str, Any]:
    key = _key(inputs)
    if key not in _CACHE:
        batch = [*_PENDING, inputs]
        _PENDING.clear()
        for case, result in zip(batch, sofa(frame(batch)).iter_rows(named=True), strict=True):
            _CACHE[_key(case)] = result
    return _CACHE[key]


def component(name: str, **inputs: Any) -> int:
    return int(score(**inputs)[f"sofa_{name}"])


# ---------------------------------------------------------------- respiration


RESPIRATION = [
    (500.0, 0, 0),
    (400.0, 0, 0),
    (399.9, 0, 1),
    (300.0, 0, 1),
    (299.9, 0, 2),
    (200.0, 0, 2),
    # without respiratory support the score is capped at 2
    (199.9, 0, 2),
    (100.0, 0, 2),
    (99.9, 0, 2),
    (40.0, 0, 2),
    # with respiratory support
    (400.0, 1, 0),
    (399.9, 1, 1),
    (300.0, 1, 1),
    (299.9, 1, 2),
    (200.0, 1, 2),
    (199.9, 1, 3),
    (100.0, 1, 3),
    (99.9, 1, 4),
    (40.0, 1, 4),
]
prefetch([{"pao2_fio2_ratio": r, "mechanical_ventilation": float(v)} for r, v, _ in RESPIRATION])


@pytest.mark.parametrize(("ratio", "ventilated", "points"), RESPIRATION)
def test_respiration_bands(ratio: float, ventilated: int, points: int) -> None:
    assert component("respiration", pao2_fio2_ratio=ratio, mechanical_ventilation=float(ventilated)) == points


@pytest.mark.parametrize("ratio", [199.9, 99.9, 50.0])
def test_respiration_unknown_ventilation_counts_as_no_support(ratio: float) -> None:
    assert component("respiration", pao2_fio2_ratio=ratio) == 2
    assert score(pao2_fio2_ratio=ratio)["sofa_missing_components"].split(",").count("respiration") == 0


def test_respiration_ventilation_flag_alone_is_missing() -> None:
    result = score(mechanical_ventilation=1.0)
    assert result["sofa_respiration"] == 0
    assert "respiration" in result["sofa_missing_components"].split(",")


# ---------------------------------------------------------------- coagulation, liver, CNS


COAGULATION = [
    (300.0, 0),
    (150.0, 0),
    (149.9, 1),
    (100.0, 1),
    (99.9, 2),
    (50.0, 2),
    (49.9, 3),
    (20.0, 3),
    (19.9, 4),
    (0.0, 4),
]
prefetch([{"platelets": v} for v, _ in COAGULATION])


@pytest.mark.parametrize(("platelets", "points"), COAGULATION)
def test_coagulation_bands(platelets: float, points: int) -> None:
    assert component("coagulation", platelets=platelets) == points


LIVER = [
    (0.3, 0),
    (1.19, 0),
    (1.2, 1),
    (1.9, 1),
    (1.95, 1),  # between the published ranges: the band whose lower bound it reaches
    (1.99, 1),
    (2.0, 2),
    (5.9, 2),
    (5.99, 2),
    (6.0, 3),
    (11.9, 3),
    (11.99, 3),
    (12.0, 4),  # printed "> 12.0", implemented >= 12.0
    (30.0, 4),
]
prefetch([{"bilirubin": v} for v, _ in LIVER])


@pytest.mark.parametrize(("bilirubin", "points"), LIVER)
def test_liver_bands(bilirubin: float, points: int) -> None:
    assert component("liver", bilirubin=bilirubin) == points


CNS = [
    (15, 0),
    (14, 1),
    (13, 1),
    (12, 2),
    (10, 2),
    (9, 3),
    (6, 3),
    (5, 4),
    (3, 4),
    (14.5, 1),
    (12.5, 2),
    (5.5, 4),
]
prefetch([{"gcs": float(v)} for v, _ in CNS])


@pytest.mark.parametrize(("gcs", "points"), CNS)
def test_cns_bands(gcs: float, points: int) -> None:
    assert component("cns", gcs=float(gcs)) == points


# ---------------------------------------------------------------- cardiovascular


CARDIOVASCULAR = [
    ({"map": 90.0}, 0),
    ({"map": 70.0}, 0),
    ({"map": 69.9}, 1),
    ({"map": 40.0}, 1),
    # dopamine <= 5 -> 2; > 5 -> 3; > 15 -> 4
    ({"dopamine_rate": 0.5}, 2),
    ({"dopamine_rate": 5.0}, 2),
    ({"dopamine_rate": 5.01}, 3),
    ({"dopamine_rate": 15.0}, 3),
    ({"dopamine_rate": 15.01}, 4),
    ({"dopamine_rate": 25.0}, 4),
    # dobutamine, any dose -> 2
    ({"dobutamine_rate": 0.01}, 2),
    ({"dobutamine_rate": 5.0}, 2),
    ({"dobutamine_rate": 20.0}, 2),
    ({"dobutamine_rate": 40.0}, 2),
    # epinephrine / norepinephrine <= 0.1 -> 3; > 0.1 -> 4
    ({"epinephrine_rate": 0.01}, 3),
    ({"epinephrine_rate": 0.1}, 3),
    ({"epinephrine_rate": 0.11}, 4),
    ({"epinephrine_rate": 0.5}, 4),
    ({"norepinephrine_rate": 0.01}, 3),
    ({"norepinephrine_rate": 0.1}, 3),
    ({"norepinephrine_rate": 0.101}, 4),
    ({"norepinephrine_rate": 0.11}, 4),
    # a drug at rate 0 is no drug
    ({"dopamine_rate": 0.0, "map": 75.0}, 0),
    ({"norepinephrine_rate": 0.0, "map": 65.0}, 1),
    ({"dobutamine_rate": 0.0}, 0),
    # the worst band wins across MAP and drugs
    ({"map": 60.0, "dobutamine_rate": 5.0}, 2),
    ({"map": 60.0, "dopamine_rate": 5.0, "norepinephrine_rate": 0.05}, 3),
    ({"map": 80.0, "dobutamine_rate": 10.0, "epinephrine_rate": 0.2}, 4),
    ({"dopamine_rate": 16.0, "norepinephrine_rate": 0.05}, 4),
]
prefetch([inputs for inputs, _ in CARDIOVASCULAR])


@pytest.mark.parametrize(("inputs", "points"), CARDIOVASCULAR)
def test_cardiovascular_bands(inputs: dict[str, float], points: int) -> None:
    assert component("cardiovascular", **inputs) == points


def test_cardiovascular_ignores_vasopressin() -> None:
    # The 1996 table has no vasopressin band; an extra column must not change the score.
    frame_with = frame([{"map": 75.0}]).with_columns(vasopressin_rate=pl.lit(0.04))
    assert sofa(frame_with)["sofa_cardiovascular"].to_list() == [0]


# ---------------------------------------------------------------- renal


RENAL_CREATININE = [
    (0.8, 0),
    (1.19, 0),
    (1.2, 1),
    (1.9, 1),
    (1.99, 1),
    (2.0, 2),
    (3.4, 2),
    (3.49, 2),
    (3.5, 3),
    (4.9, 3),
    (4.99, 3),
    (5.0, 4),
    (12.0, 4),
]
prefetch([{"creatinine": v} for v, _ in RENAL_CREATININE])


@pytest.mark.parametrize(("creatinine", "points"), RENAL_CREATININE)
def test_renal_by_creatinine(creatinine: float, points: int) -> None:
    assert component("renal", creatinine=creatinine) == points


RENAL_URINE = [(2000.0, 0), (500.0, 0), (499.9, 3), (499.0, 3), (200.0, 3), (199.9, 4), (199.0, 4), (0.0, 4)]
prefetch([{"urine_output_24h": v} for v, _ in RENAL_URINE])


@pytest.mark.parametrize(("urine", "points"), RENAL_URINE)
def test_renal_by_urine_output(urine: float, points: int) -> None:
    assert component("renal", urine_output_24h=urine) == points


RENAL_BOTH = [
    (1.0, 450.0, 3),
    (5.0, 450.0, 4),
    (4.0, 150.0, 4),
    (2.5, 1500.0, 2),
    (1.0, 1500.0, 0),
    (3.6, 600.0, 3),
]
prefetch([{"creatinine": c, "urine_output_24h": u} for c, u, _ in RENAL_BOTH])


@pytest.mark.parametrize(("creatinine", "urine", "points"), RENAL_BOTH)
def test_renal_takes_the_worse_of_creatinine_and_urine(creatinine: float, urine: float, points: int) -> None:
    assert component("renal", creatinine=creatinine, urine_output_24h=urine) == points
    result = score(creatinine=creatinine, urine_output_24h=urine)
    assert "renal" not in result["sofa_missing_components"].split(",")


# ---------------------------------------------------------------- totals, missing components


NORMAL = {
    "pao2_fio2_ratio": 450.0,
    "mechanical_ventilation": 0.0,
    "platelets": 250.0,
    "bilirubin": 0.5,
    "map": 85.0,
    "gcs": 15.0,
    "creatinine": 0.8,
    "urine_output_24h": 1800.0,
}

WORST = {
    "pao2_fio2_ratio": 60.0,
    "mechanical_ventilation": 1.0,
    "platelets": 10.0,
    "bilirubin": 15.0,
    "map": 50.0,
    "norepinephrine_rate": 0.5,
    "gcs": 3.0,
    "creatinine": 6.0,
    "urine_output_24h": 50.0,
}


def test_all_normal_scores_zero_with_nothing_missing() -> None:
    result = score(**NORMAL)
    assert result["sofa_total"] == 0
    assert result["sofa_missing"] == 0
    assert not result["sofa_missing_components"]


def test_all_worst_scores_24() -> None:
    result = score(**WORST)
    assert [result[f"sofa_{c}"] for c in SOFA_COMPONENTS] == [4] * 6
    assert result["sofa_total"] == 24
    assert result["sofa_missing"] == 0


def test_total_is_the_sum_of_components() -> None:
    inputs = {
        "pao2_fio2_ratio": 250.0,
        "platelets": 90.0,
        "bilirubin": 6.0,
        "map": 65.0,
        "gcs": 9.0,
        "creatinine": 1.5,
    }
    result = score(**inputs)
    assert [result[f"sofa_{c}"] for c in SOFA_COMPONENTS] == [2, 2, 3, 1, 3, 1]
    assert result["sofa_total"] == 12


def test_nothing_measured_scores_zero_and_reports_all_six_missing() -> None:
    result = score()
    assert result["sofa_total"] == 0
    assert result["sofa_missing"] == 6
    assert set(result["sofa_missing_components"].split(",")) == set(SOFA_COMPONENTS)


@pytest.mark.parametrize(
    ("absent", "missing_name"),
    [
        (["pao2_fio2_ratio"], "respiration"),
        (["platelets"], "coagulation"),
        (["bilirubin"], "liver"),
        (["map"], "cardiovascular"),
        (["gcs"], "cns"),
        (["creatinine", "urine_output_24h"], "renal"),
    ],
)
def test_each_missing_component_is_named_counted_and_scored_zero(
    absent: list[str], missing_name: str
) -> None:
    worst = {k: v for k, v in WORST.items() if k not in absent}
    if missing_name == "cardiovascular":
        worst.pop("norepinephrine_rate")
    result = score(**worst)
    assert result[f"sofa_{missing_name}"] == 0
    assert result["sofa_missing"] == 1
    assert result["sofa_missing_components"] == missing_name
    assert result["sofa_total"] == 20


def test_missing_count_and_names_with_two_missing() -> None:
    result = score(platelets=40.0, gcs=14.0, map=72.0, creatinine=1.0)
    assert result["sofa_missing"] == 2
    assert set(result["sofa_missing_components"].split(",")) == {"respiration", "liver"}
    assert result["sofa_total"] == 3 + 1


@pytest.mark.parametrize(
    "present", [{"dopamine_rate": 3.0}, {"norepinephrine_rate": 0.05}, {"dobutamine_rate": 5.0}]
)
def test_cardiovascular_with_a_drug_but_no_map_is_not_missing(present: dict[str, float]) -> None:
    result = score(**present)
    assert "cardiovascular" not in result["sofa_missing_components"].split(",")
    assert result["sofa_cardiovascular"] >= 2


def test_renal_by_urine_only_is_not_missing() -> None:
    result = score(urine_output_24h=150.0)
    assert result["sofa_renal"] == 4
    assert "renal" not in result["sofa_missing_components"].split(",")


def test_output_columns_and_variant() -> None:
    out = sofa(frame([NORMAL]))
    for name in SOFA_OUTPUTS:
        assert name in out.columns
    assert out["sofa_variant"].to_list() == ["sofa-1996"]
    for name in (*[f"sofa_{c}" for c in SOFA_COMPONENTS], "sofa_total", "sofa_missing"):
        assert out.schema[name] == pl.Int64


def test_absent_input_columns_are_added_as_missing() -> None:
    out = sofa(pl.DataFrame({"patient_id": ["a", "b"], "platelets": [40.0, 200.0]}))
    assert out["patient_id"].to_list() == ["a", "b"]
    assert out["sofa_coagulation"].to_list() == [3, 0]
    assert out["sofa_missing"].to_list() == [5, 5]


def test_integer_input_columns_work() -> None:
    out = sofa(
        pl.DataFrame(
            {"gcs": [15, 12, 5], "mechanical_ventilation": [1, 1, 0], "pao2_fio2_ratio": [90, 90, 90]}
        )
    )
    assert out["sofa_cns"].to_list() == [0, 2, 4]
    assert out["sofa_respiration"].to_list() == [4, 4, 2]


def test_many_rows_scored_independently() -> None:
    rows = [NORMAL, WORST, {}, {"platelets": 99.9}]
    assert sofa(frame(rows))["sofa_total"].to_list() == [0, 24, 0, 2]


# ---------------------------------------------------------------- monotonicity (hypothesis)

# For each input: a strategy of present values, and the direction in which the value is worse.
RANGES: dict[str, tuple[float, float, int]] = {
    # name: (low, high, direction) with +1 = higher is worse, -1 = lower is worse
    "pao2_fio2_ratio": (20.0, 700.0, -1),
    "platelets": (0.0, 600.0, -1),
    "bilirubin": (0.0, 40.0, +1),
    "map": (20.0, 140.0, -1),
    "dopamine_rate": (0.0, 30.0, +1),
    "dobutamine_rate": (0.0, 30.0, +1),
    "epinephrine_rate": (0.0, 1.0, +1),
    "norepinephrine_rate": (0.0, 1.0, +1),
    "gcs": (3.0, 15.0, -1),
    "creatinine": (0.1, 15.0, +1),
    "urine_output_24h": (0.0, 4000.0, -1),
}
EDGES = {
    "pao2_fio2_ratio": [100.0, 99.9, 200.0, 199.9, 300.0, 299.9, 400.0, 399.9],
    "platelets": [20.0, 19.9, 50.0, 49.9, 100.0, 99.9, 150.0, 149.9],
    "bilirubin": [1.19, 1.2, 1.99, 2.0, 5.99, 6.0, 11.99, 12.0],
    "map": [70.0, 69.9],
    "dopamine_rate": [0.0, 5.0, 5.01, 15.0, 15.01],
    "dobutamine_rate": [0.0, 0.01],
    "epinephrine_rate": [0.0, 0.1, 0.11],
    "norepinephrine_rate": [0.0, 0.1, 0.11],
    "gcs": [5.0, 6.0, 9.0, 10.0, 12.0, 13.0, 14.0, 15.0],
    "creatinine": [1.19, 1.2, 1.99, 2.0, 3.49, 3.5, 4.99, 5.0],
    "urine_output_24h": [199.9, 200.0, 499.9, 500.0],
}


def value_strategy(name: str) -> st.SearchStrategy[float | None]:
    low, high, _ = RANGES[name]
    number = st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    if name == "gcs":
        number = st.integers(min_value=3, max_value=15).map(float)
    return st.one_of(st.none(), st.sampled_from(EDGES[name]), number)


inputs_strategy = st.fixed_dictionaries(
    {name: value_strategy(name) for name in RANGES}
    | {"mechanical_ventilation": st.one_of(st.none(), st.sampled_from([0.0, 1.0]))}
)

# Each example scores a batch of cases in one frame: one sofa() call costs tens of milliseconds.
PROPERTY = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    phases=NO_SHRINK,
    suppress_health_check=[HealthCheck.too_slow],
)
WORSENABLE = [*sorted(RANGES), "mechanical_ventilation"]


def _worse(name: str, value: float | None, other: float) -> float:
    """The worse of ``value`` and ``other`` for input ``name`` (None = not measured, the best case)."""
    if name == "mechanical_ventilation":
        return 1.0
    _, _, direction = RANGES[name]
    if value is None:
        return other
    return max(value, other) if direction > 0 else min(value, other)


@st.composite
def worsening(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A case, the same case with one input made worse (or newly measured), and that input's name."""
    base = draw(inputs_strategy)
    name = draw(st.sampled_from(WORSENABLE))
    if name == "mechanical_ventilation":
        other = 1.0
    else:
        other = draw(value_strategy(name).filter(lambda v: v is not None))
    return base, dict(base, **{name: _worse(name, base[name], other)}), name


@PROPERTY
@given(cases=st.lists(worsening(), min_size=1, max_size=60))
def test_sofa_never_falls_when_one_input_worsens(
    cases: list[tuple[dict[str, Any], dict[str, Any], str]],
) -> None:
    out = sofa(frame([row for base, worse, _ in cases for row in (base, worse)]))
    for i, (base, worse, name) in enumerate(cases):
        before, after = out.row(2 * i, named=True), out.row(2 * i + 1, named=True)
        assert after["sofa_total"] >= before["sofa_total"], (name, base, worse)
        for comp in SOFA_COMPONENTS:
            assert after[f"sofa_{comp}"] >= before[f"sofa_{comp}"], (comp, name, base, worse)


@PROPERTY
@given(rows=st.lists(inputs_strategy, min_size=1, max_size=60))
def test_sofa_components_stay_in_range_and_sum_to_total(rows: list[dict[str, Any]]) -> None:
    for result in sofa(frame(rows)).iter_rows(named=True):
        parts = [result[f"sofa_{c}"] for c in SOFA_COMPONENTS]
        assert all(0 <= p <= 4 for p in parts)
        assert result["sofa_total"] == sum(parts)
        missing = [m for m in (result["sofa_missing_components"] or "").split(",") if m]
        assert result["sofa_missing"] == len(missing)
        for name in missing:
            assert result[f"sofa_{name}"] == 0


@pytest.mark.parametrize("name", sorted(RANGES))
def test_each_component_is_monotone_over_a_sweep(name: str) -> None:
    """A dense sweep of one input (others normal): the affected component never decreases as it worsens."""
    low, high, direction = RANGES[name]
    steps = 2000
    values = [low + (high - low) * i / steps for i in range(steps + 1)] + EDGES[name]
    values = sorted(set(values), reverse=direction < 0)
    rows = [dict(NORMAL, mechanical_ventilation=vent, **{name: v}) for vent in (0.0, 1.0) for v in values]
    totals = sofa(frame(rows))["sofa_total"].to_list()
    for part in (totals[: len(values)], totals[len(values) :]):
        assert part == sorted(part), name
    assert max(totals) > 0, name  # the sweep reaches at least one abnormal band


# ---------------------------------------------------------------- same result on polars and DuckDB


def _edge_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [NORMAL, WORST, {}]
    for name, edges in EDGES.items():
        for value in edges:
            rows.append({name: value})
            rows.append(dict(NORMAL, **{name: value}))
    for ratio in EDGES["pao2_fio2_ratio"]:
        rows.append({"pao2_fio2_ratio": ratio, "mechanical_ventilation": 1.0})
    return rows


def test_polars_and_duckdb_give_identical_results() -> None:
    rows = _edge_rows()
    data = frame(rows).with_row_index("row_id")
    via_polars = sofa(data)
    relation = duckdb.sql("SELECT * FROM data")
    via_duckdb = sofa(relation)
    assert isinstance(via_duckdb, duckdb.DuckDBPyRelation)
    from_duckdb = via_duckdb.pl().sort("row_id")
    columns = ["row_id", *SOFA_OUTPUTS]
    left = via_polars.select(columns)
    right = from_duckdb.select(columns).cast(dict(left.schema))
    assert left.height == len(rows)
    assert left.to_dicts() == right.to_dicts()


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    phases=NO_SHRINK,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rows=st.lists(inputs_strategy, min_size=1, max_size=20))
def test_polars_and_duckdb_agree_on_random_frames(rows: list[dict[str, Any]]) -> None:
    data = frame(rows).with_row_index("row_id")
    left = sofa(data).select("row_id", *SOFA_OUTPUTS)
    right = (
        sofa(duckdb.sql("SELECT * FROM data"))
        .pl()
        .sort("row_id")
        .select(left.columns)
        .cast(dict(left.schema))
    )
    assert left.to_dicts() == right.to_dicts()
