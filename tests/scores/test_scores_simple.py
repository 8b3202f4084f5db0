"""qSOFA (domain.md B2), HScore (B3), MEX-SLEDAI (B4) and SLEDAI-2K (B5): every item and every edge on
both sides, missing items, maxima, and the same answers through DuckDB."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from immunostrat.scores.definitions import load_definition
from immunostrat.scores.simple import hscore, mex_sledai, qsofa, sledai_2k

# Shrinking re-scores a frame per step (~0.1 s each): report the failing batch as found instead.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


class Batch:
    """Scores queued input rows in one frame on first use (each call of a score costs ~0.1 s)."""

    def __init__(self, fn: Callable[..., Any], **params: Any) -> None:
        self.fn = fn
        self.params = params
        self.pending: list[dict[str, Any]] = []
        self.cache: dict[tuple, dict[str, Any]] = {}

    @staticmethod
    def key(inputs: dict[str, Any]) -> tuple:
        return tuple(sorted((k, None if v is None else float(v)) for k, v in inputs.items()))

    def queue(self, cases: list[dict[str, Any]]) -> None:
        self.pending.extend(cases)

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        key = self.key(inputs)
        if key not in self.cache:
            batch = [*self.pending, inputs]
            self.pending.clear()
            columns = sorted({k for row in batch for k in row})
            data = {c: [row.get(c) for row in batch] for c in columns}
            # _case keeps the height when a case has no inputs at all
            schema = {"_case": pl.Int64, **dict.fromkeys(columns, pl.Float64)}
            frame = pl.DataFrame({"_case": list(range(len(batch))), **data}, schema=schema)
            out = self.fn(frame, **self.params)
            for case, result in zip(batch, out.iter_rows(named=True), strict=True):
                self.cache[self.key(case)] = result
        return self.cache[key]


def names(text: str | None) -> set[str]:
    return {n for n in (text or "").split(",") if n}


# ================================================================ qSOFA

QSOFA = Batch(qsofa)
QSOFA_EDGES = [
    ({"resp_rate": 21.0}, "respiratory_rate", 0),
    ({"resp_rate": 22.0}, "respiratory_rate", 1),
    ({"resp_rate": 21.9}, "respiratory_rate", 0),
    ({"resp_rate": 35.0}, "respiratory_rate", 1),
    ({"gcs": 15.0}, "altered_mentation", 0),
    ({"gcs": 14.0}, "altered_mentation", 1),
    ({"gcs": 3.0}, "altered_mentation", 1),
    ({"sbp": 101.0}, "systolic_bp", 0),
    ({"sbp": 100.0}, "systolic_bp", 1),
    ({"sbp": 100.1}, "systolic_bp", 0),
    ({"sbp": 70.0}, "systolic_bp", 1),
]
QSOFA.queue([inputs for inputs, _, _ in QSOFA_EDGES])


@pytest.mark.parametrize(("inputs", "item", "points"), QSOFA_EDGES)
def test_qsofa_edges(inputs: dict[str, float], item: str, points: int) -> None:
    assert QSOFA(**inputs)[f"qsofa_{item}"] == points


@pytest.mark.parametrize(
    ("rr", "gcs", "sbp", "total", "positive"),
    [
        (21.0, 15.0, 101.0, 0, False),
        (22.0, 15.0, 101.0, 1, False),
        (22.0, 14.0, 101.0, 2, True),
        (21.0, 14.0, 100.0, 2, True),
        (22.0, 15.0, 100.0, 2, True),
        (30.0, 10.0, 80.0, 3, True),
    ],
)
def test_qsofa_total_and_positive_at_two(
    rr: float, gcs: float, sbp: float, total: int, positive: bool
) -> None:
    result = QSOFA(resp_rate=rr, gcs=gcs, sbp=sbp)
    assert result["qsofa_total"] == total
    assert result["qsofa_positive"] is positive
    assert result["qsofa_missing"] == 0


def test_qsofa_missing_criteria_count_as_not_met_and_are_reported() -> None:
    result = QSOFA(resp_rate=25.0)
    assert result["qsofa_total"] == 1
    assert result["qsofa_positive"] is False
    assert result["qsofa_missing"] == 2
    assert names(result["qsofa_missing_components"]) == {"altered_mentation", "systolic_bp"}
    empty = QSOFA()
    assert (empty["qsofa_total"], empty["qsofa_missing"]) == (0, 3)


# ================================================================ HScore

HSCORE = Batch(hscore)
ALL_ABSENT = {
    "immunosuppression": 0.0,
    "temperature": 37.0,
    "hepatomegaly": 0.0,
    "splenomegaly": 0.0,
    "hemoglobin": 13.0,
    "wbc": 7.0,
    "platelets": 250.0,
    "ferritin": 300.0,
    "triglycerides": 1.0,
    "fibrinogen": 3.5,
    "ast": 20.0,
    "hemophagocytosis": 0.0,
}
ALL_PRESENT = {
    "immunosuppression": 1.0,
    "temperature": 40.0,
    "hepatomegaly": 1.0,
    "splenomegaly": 1.0,
    "hemoglobin": 8.0,
    "wbc": 2.0,
    "platelets": 50.0,
    "ferritin": 10_000.0,
    "triglycerides": 5.0,
    "fibrinogen": 1.0,
    "ast": 200.0,
    "hemophagocytosis": 1.0,
}

HSCORE_EDGES = [
    # (changes to ALL_ABSENT, item, points) -- domain.md B3 with its edge rule
    ({"immunosuppression": 1.0}, "immunosuppression", 18),
    ({"temperature": 38.39}, "temperature", 0),
    ({"temperature": 38.4}, "temperature", 33),
    ({"temperature": 39.0}, "temperature", 33),
    ({"temperature": 39.4}, "temperature", 33),
    ({"temperature": 39.41}, "temperature", 49),
    ({"temperature": 41.0}, "temperature", 49),
    ({"hepatomegaly": 1.0}, "organomegaly", 23),
    ({"splenomegaly": 1.0}, "organomegaly", 23),
    ({"hepatomegaly": 1.0, "splenomegaly": 1.0}, "organomegaly", 38),
    ({"ferritin": 1999.9}, "ferritin", 0),
    ({"ferritin": 2000.0}, "ferritin", 35),
    ({"ferritin": 4420.0}, "ferritin", 35),
    ({"ferritin": 6000.0}, "ferritin", 35),
    ({"ferritin": 6000.1}, "ferritin", 50),
    ({"triglycerides": 1.49}, "triglycerides", 0),
    ({"triglycerides": 1.5}, "triglycerides", 44),
    ({"triglycerides": 4.0}, "triglycerides", 44),
    ({"triglycerides": 4.01}, "triglycerides", 64),
    ({"fibrinogen": 2.51}, "fibrinogen", 0),
    ({"fibrinogen": 2.5}, "fibrinogen", 30),
    ({"fibrinogen": 1.0}, "fibrinogen", 30),
    ({"ast": 29.9}, "ast", 0),
    ({"ast": 30.0}, "ast", 19),
    ({"hemophagocytosis": 1.0}, "hemophagocytosis", 35),
    # cytopenias: Hb <= 9.2 g/dL, WBC <= 5.0 x 10^9/L, platelets <= 110 x 10^9/L
    ({}, "cytopenias", 0),
    ({"hemoglobin": 9.2}, "cytopenias", 0),  # one lineage scores 0
    ({"wbc": 5.0}, "cytopenias", 0),
    ({"hemoglobin": 9.2, "wbc": 5.0}, "cytopenias", 24),
    ({"hemoglobin": 9.21, "wbc": 5.0}, "cytopenias", 0),
    ({"hemoglobin": 9.2, "wbc": 5.01}, "cytopenias", 0),
    ({"wbc": 5.0, "platelets": 110.0}, "cytopenias", 24),
    ({"wbc": 5.0, "platelets": 110.1}, "cytopenias", 0),
    ({"hemoglobin": 9.2, "platelets": 110.0}, "cytopenias", 24),
    ({"hemoglobin": 9.2, "wbc": 5.0, "platelets": 110.0}, "cytopenias", 34),
    ({"hemoglobin": 6.0, "wbc": 0.5, "platelets": 10.0}, "cytopenias", 34),
]
HSCORE.queue([dict(ALL_ABSENT, **changes) for changes, _, _ in HSCORE_EDGES])


@pytest.mark.parametrize(("changes", "item", "points"), HSCORE_EDGES)
def test_hscore_item_edges(changes: dict[str, float], item: str, points: int) -> None:
    result = HSCORE(**dict(ALL_ABSENT, **changes))
    assert result[f"hscore_{item}"] == points
    assert result["hscore_total"] == points  # every other item is absent
    assert result["hscore_missing"] == 0


def test_hscore_maximum_is_337() -> None:
    result = HSCORE(**ALL_PRESENT)
    assert result["hscore_total"] == 337
    assert result["hscore_max_possible"] == 337
    assert result["hscore_positive"] is True
    assert result["hscore_missing"] == 0
    assert load_definition("hscore")["maximum"] == 337


def test_hscore_nothing_known() -> None:
    result = HSCORE()
    assert result["hscore_total"] == 0
    assert result["hscore_max_possible"] == 337
    assert result["hscore_positive"] is None
    assert result["hscore_missing"] == 9
    assert names(result["hscore_missing_components"]) == {
        "immunosuppression",
        "temperature",
        "organomegaly",
        "cytopenias",
        "ferritin",
        "triglycerides",
        "fibrinogen",
        "ast",
        "hemophagocytosis",
    }


@pytest.mark.parametrize(
    ("absent", "item", "item_max"),
    [
        (["immunosuppression"], "immunosuppression", 18),
        (["temperature"], "temperature", 49),
        (["hepatomegaly", "splenomegaly"], "organomegaly", 38),
        (["hemoglobin", "wbc", "platelets"], "cytopenias", 34),
        (["ferritin"], "ferritin", 50),
        (["triglycerides"], "triglycerides", 64),
        (["fibrinogen"], "fibrinogen", 30),
        (["ast"], "ast", 19),
        (["hemophagocytosis"], "hemophagocytosis", 35),
    ],
)
def test_hscore_max_possible_adds_each_missing_items_maximum(
    absent: list[str], item: str, item_max: int
) -> None:
    inputs = {k: v for k, v in ALL_ABSENT.items() if k not in absent}
    result = HSCORE(**inputs)
    assert result["hscore_total"] == 0
    assert result["hscore_max_possible"] == item_max
    assert result["hscore_missing"] == 1
    assert names(result["hscore_missing_components"]) == {item}
    assert result["hscore_positive"] is False  # even the maximum stays below 169


# Complete inputs with known totals (domain.md B3 points).
HSCORE_TOTALS = [
    # 33 + 19 + 38 = 90: "< 1%" anchor
    ({"temperature": 38.4, "ast": 30.0, "hepatomegaly": 1.0, "splenomegaly": 1.0}, 90),
    # 18 + 35 + 38 = 91
    ({"immunosuppression": 1.0, "hemophagocytosis": 1.0, "hepatomegaly": 1.0, "splenomegaly": 1.0}, 91),
    # 18 + 33 + 35 + 44 + 38 = 168
    (
        {
            "immunosuppression": 1.0,
            "temperature": 39.0,
            "ferritin": 3000.0,
            "triglycerides": 2.0,
            "hepatomegaly": 1.0,
            "splenomegaly": 1.0,
        },
        168,
    ),
    # 35 + 44 + 30 + 19 + 23 + 18 = 169
    (
        {
            "ferritin": 2000.0,
            "triglycerides": 1.5,
            "fibrinogen": 2.5,
            "ast": 30.0,
            "hepatomegaly": 1.0,
            "immunosuppression": 1.0,
        },
        169,
    ),
    # 18 + 33 + 50 + 64 + 30 + 19 + 35 = 249
    (
        {
            "immunosuppression": 1.0,
            "temperature": 39.4,
            "ferritin": 7000.0,
            "triglycerides": 4.5,
            "fibrinogen": 2.0,
            "ast": 31.0,
            "hemophagocytosis": 1.0,
        },
        249,
    ),
    # 49 + 50 + 64 + 30 + 19 + 38 = 250: "> 99%" anchor
    (
        {
            "temperature": 39.5,
            "ferritin": 7000.0,
            "triglycerides": 4.5,
            "fibrinogen": 2.0,
            "ast": 31.0,
            "hepatomegaly": 1.0,
            "splenomegaly": 1.0,
        },
        250,
    ),
]
HSCORE.queue([dict(ALL_ABSENT, **changes) for changes, _ in HSCORE_TOTALS])


@pytest.mark.parametrize(("changes", "total"), HSCORE_TOTALS)
def test_hscore_totals_cutoff_and_probability_anchors(changes: dict[str, float], total: int) -> None:
    result = HSCORE(**dict(ALL_ABSENT, **changes))
    assert result["hscore_total"] == total
    assert result["hscore_max_possible"] == total
    assert result["hscore_positive"] is (total >= 169)
    if total <= 90:
        assert result["hscore_probability"] == "< 1%"
    elif total >= 250:
        assert result["hscore_probability"] == "> 99%"
    else:
        assert result["hscore_probability"] not in ("< 1%", "> 99%")
        assert "169" in result["hscore_probability"]


def test_hscore_positive_when_the_known_items_already_reach_169() -> None:
    # ferritin 50 + triglycerides 64 + temperature 49 + ast 19 = 182, the rest unknown
    result = HSCORE(ferritin=7000.0, triglycerides=5.0, temperature=40.0, ast=40.0)
    assert result["hscore_total"] == 182
    assert result["hscore_positive"] is True
    assert result["hscore_missing"] == 5


def test_hscore_positive_is_open_when_missing_items_could_still_reach_169() -> None:
    # 49 + 50 = 99 known; triglycerides (64) and fibrinogen (30) unknown: up to 193 -> undecided
    inputs = {k: v for k, v in ALL_ABSENT.items() if k not in ("triglycerides", "fibrinogen")}
    result = HSCORE(**dict(inputs, temperature=40.0, ferritin=7000.0))
    assert result["hscore_total"] == 99
    assert result["hscore_max_possible"] == 193
    assert result["hscore_positive"] is None
    assert names(result["hscore_missing_components"]) == {"triglycerides", "fibrinogen"}


def test_hscore_partial_cytopenia_counts_present_lineages_and_stays_open() -> None:
    inputs = {k: v for k, v in ALL_ABSENT.items() if k != "platelets"}
    result = HSCORE(**dict(inputs, hemoglobin=8.0, wbc=3.0))
    assert result["hscore_cytopenias"] == 24
    assert "cytopenias" in names(result["hscore_missing_components"])
    assert result["hscore_max_possible"] >= 34


def test_hscore_one_organ_known_enlarged_other_unknown() -> None:
    """Hepatomegaly yes, spleen not examined: 23 now, 38 possible; the bound must allow the 38."""
    inputs = {k: v for k, v in ALL_ABSENT.items() if k != "splenomegaly"}
    result = HSCORE(**dict(inputs, hepatomegaly=1.0))
    assert result["hscore_organomegaly"] == 23
    assert result["hscore_max_possible"] >= 38


def test_hscore_positive_not_ruled_out_while_the_spleen_is_unknown() -> None:
    # 49 + 50 + 24 + 19 + 23 (liver) = 165 known; an enlarged spleen would make organomegaly 38: 180
    inputs = {k: v for k, v in ALL_ABSENT.items() if k != "splenomegaly"}
    inputs.update(temperature=39.5, ferritin=6001.0, hemoglobin=9.0, wbc=4.0, ast=30.0, hepatomegaly=1.0)
    result = HSCORE(**inputs)
    assert result["hscore_total"] == 165
    assert HSCORE(**dict(inputs, splenomegaly=1.0))["hscore_total"] == 180
    assert result["hscore_positive"] is not False


HSCORE_INPUT_VALUES: dict[str, list[float]] = {
    "immunosuppression": [0.0, 1.0],
    "temperature": [37.0, 38.39, 38.4, 39.4, 39.41],
    "hepatomegaly": [0.0, 1.0],
    "splenomegaly": [0.0, 1.0],
    "hemoglobin": [9.2, 9.21, 12.0],
    "wbc": [5.0, 5.01],
    "platelets": [110.0, 110.1],
    "ferritin": [1999.0, 2000.0, 6000.0, 6000.1],
    "triglycerides": [1.49, 1.5, 4.0, 4.01],
    "fibrinogen": [2.5, 2.51],
    "ast": [29.9, 30.0],
    "hemophagocytosis": [0.0, 1.0],
}


@st.composite
def partial_and_completion(draw: st.DrawFn) -> tuple[dict[str, float | None], dict[str, float]]:
    complete = {k: draw(st.sampled_from(v)) for k, v in HSCORE_INPUT_VALUES.items()}
    hidden = draw(st.sets(st.sampled_from(sorted(HSCORE_INPUT_VALUES)), max_size=3))
    partial = {k: (None if k in hidden else v) for k, v in complete.items()}
    return partial, complete


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    phases=NO_SHRINK,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cases=st.lists(partial_and_completion(), min_size=1, max_size=50))
def test_hscore_total_and_max_possible_bound_every_completion(
    cases: list[tuple[dict[str, float | None], dict[str, float]]],
) -> None:
    """total (missing = 0) is a lower bound and max_possible an upper bound of the completed score."""
    rows = [row for partial, complete in cases for row in (partial, complete)]
    columns = sorted(HSCORE_INPUT_VALUES)
    frame = pl.DataFrame(
        {c: [r[c] for r in rows] for c in columns}, schema=dict.fromkeys(columns, pl.Float64)
    )
    out = hscore(frame).to_dicts()
    for i, (partial, complete) in enumerate(cases):
        low, full = out[2 * i], out[2 * i + 1]
        assert low["hscore_total"] <= full["hscore_total"], (partial, complete)
        assert full["hscore_total"] <= low["hscore_max_possible"], (partial, complete)
        if low["hscore_positive"] is not None:
            assert low["hscore_positive"] == (full["hscore_total"] >= 169), (partial, complete)


# ================================================================ MEX-SLEDAI

MEX = Batch(mex_sledai)
MEX_FLAGS = {
    "mex_neurological_disorder": ("neurological_disorder", 8),
    "mex_renal_disorder": ("renal_disorder", 6),
    "mex_vasculitis": ("vasculitis", 4),
    "mex_hemolysis": ("hemolysis_or_thrombocytopenia", 3),
    "mex_myositis": ("myositis", 3),
    "mex_arthritis": ("arthritis", 2),
    "mex_mucocutaneous": ("mucocutaneous", 2),
    "mex_serositis": ("serositis", 2),
    "mex_fever": ("fever_or_fatigue", 1),
    "mex_fatigue": ("fever_or_fatigue", 1),
}
MEX_LABS = [
    # (inputs, item, points): domain.md B4 thresholds
    ({"platelets": 99.9}, "hemolysis_or_thrombocytopenia", 3),
    ({"platelets": 100.0}, "hemolysis_or_thrombocytopenia", 0),
    ({"hemoglobin": 11.9, "reticulocytes_percent": 3.1}, "hemolysis_or_thrombocytopenia", 3),
    ({"hemoglobin": 12.0, "reticulocytes_percent": 3.1}, "hemolysis_or_thrombocytopenia", 0),
    ({"hemoglobin": 11.9, "reticulocytes_percent": 3.0}, "hemolysis_or_thrombocytopenia", 0),
    ({"hemoglobin": 8.0}, "hemolysis_or_thrombocytopenia", 0),  # anaemia alone is not haemolysis
    ({"temperature": 38.0}, "fever_or_fatigue", 1),
    ({"temperature": 37.9}, "fever_or_fatigue", 0),
    ({"wbc": 3.99}, "leukopenia_or_lymphopenia", 1),
    ({"wbc": 4.0}, "leukopenia_or_lymphopenia", 0),
    ({"lymphocytes": 1.19}, "leukopenia_or_lymphopenia", 1),
    ({"lymphocytes": 1.2}, "leukopenia_or_lymphopenia", 0),
    ({"wbc": 3.0, "lymphocytes": 0.5}, "leukopenia_or_lymphopenia", 1),  # one item, scored once
    ({"mex_hemolysis": 1.0, "platelets": 50.0}, "hemolysis_or_thrombocytopenia", 3),  # one item, scored once
    ({"mex_fever": 1.0, "mex_fatigue": 1.0, "temperature": 39.0}, "fever_or_fatigue", 1),
]
MEX_ALL = {flag: 1.0 for flag in MEX_FLAGS} | {"wbc": 2.0}
MEX.queue([{flag: 1.0} for flag in MEX_FLAGS] + [inputs for inputs, _, _ in MEX_LABS] + [MEX_ALL])


@pytest.mark.parametrize("flag", sorted(MEX_FLAGS))
def test_mex_sledai_each_recorded_descriptor(flag: str) -> None:
    item, points = MEX_FLAGS[flag]
    result = MEX(**{flag: 1.0})
    assert result[f"mex_sledai_{item}"] == points
    assert result["mex_sledai_total"] == points
    assert MEX(**{flag: 0.0})["mex_sledai_total"] == 0


@pytest.mark.parametrize(("inputs", "item", "points"), MEX_LABS)
def test_mex_sledai_laboratory_items(inputs: dict[str, float], item: str, points: int) -> None:
    result = MEX(**inputs)
    assert result[f"mex_sledai_{item}"] == points
    assert result["mex_sledai_total"] == points


def test_mex_sledai_maximum_is_32() -> None:
    result = MEX(**MEX_ALL)
    assert result["mex_sledai_total"] == 32
    assert result["mex_sledai_missing"] == 0
    assert load_definition("mex-sledai")["maximum"] == 32
    assert sum(int(i["points"]) for i in load_definition("mex-sledai")["items"].values()) == 32


def test_mex_sledai_missing_descriptors_are_reported() -> None:
    empty = MEX()
    assert (empty["mex_sledai_total"], empty["mex_sledai_missing"]) == (0, 10)
    result = MEX(mex_renal_disorder=1.0, wbc=5.0)
    assert result["mex_sledai_total"] == 6
    assert result["mex_sledai_missing"] == 8
    missing = names(result["mex_sledai_missing_components"])
    assert "renal_disorder" not in missing and "leukopenia_or_lymphopenia" not in missing
    assert "neurological_disorder" in missing


# ================================================================ SLEDAI-2K

LIMITS = {"c3_lower_limit_mg_dl": 90.0, "c4_lower_limit_mg_dl": 10.0, "anti_dsdna_upper_limit_iu_ml": 30.0}
SLEDAI = Batch(sledai_2k)
SLEDAI_LIMITS = Batch(sledai_2k, **LIMITS)

SLEDAI_FLAGS = {
    "sledai_seizure": ("seizure", 8),
    "sledai_psychosis": ("psychosis", 8),
    "sledai_organic_brain_syndrome": ("organic_brain_syndrome", 8),
    "sledai_visual_disturbance": ("visual_disturbance", 8),
    "sledai_cranial_nerve_disorder": ("cranial_nerve_disorder", 8),
    "sledai_lupus_headache": ("lupus_headache", 8),
    "sledai_cva": ("cva", 8),
    "sledai_vasculitis": ("vasculitis", 8),
    "sledai_arthritis": ("arthritis", 4),
    "sledai_myositis": ("myositis", 4),
    "sledai_urinary_casts": ("urinary_casts", 4),
    "sledai_rash": ("rash", 2),
    "sledai_alopecia": ("alopecia", 2),
    "sledai_mucosal_ulcers": ("mucosal_ulcers", 2),
    "sledai_pleurisy": ("pleurisy", 2),
    "sledai_pericarditis": ("pericarditis", 2),
    "sledai_low_complement": ("low_complement", 2),
    "sledai_increased_dna_binding": ("increased_dna_binding", 2),
    "sledai_fever": ("fever", 1),
}
SLEDAI_LABS = [
    # (inputs, item, points): domain.md B5 thresholds
    ({"urine_rbc_hpf": 5.0}, "hematuria", 0),
    ({"urine_rbc_hpf": 5.1}, "hematuria", 4),
    ({"urine_rbc_hpf": 6.0}, "hematuria", 4),
    ({"proteinuria_24h": 0.5}, "proteinuria", 0),
    ({"proteinuria_24h": 0.51}, "proteinuria", 4),
    ({"urine_wbc_hpf": 5.0}, "pyuria", 0),
    ({"urine_wbc_hpf": 6.0}, "pyuria", 4),
    ({"temperature": 38.0}, "fever", 0),
    ({"temperature": 38.1}, "fever", 1),
    ({"platelets": 100.0}, "thrombocytopenia", 0),
    ({"platelets": 99.9}, "thrombocytopenia", 1),
    ({"wbc": 3.0}, "leukopenia", 0),
    ({"wbc": 2.99}, "leukopenia", 1),
]
SLEDAI_LAB_LIMITS = [
    ({"c3": 90.0}, "low_complement", 0),
    ({"c3": 89.9}, "low_complement", 2),
    ({"c4": 10.0}, "low_complement", 0),
    ({"c4": 9.9}, "low_complement", 2),
    ({"c3": 50.0, "c4": 5.0}, "low_complement", 2),  # one item, scored once
    ({"anti_dsdna": 30.0}, "increased_dna_binding", 0),
    ({"anti_dsdna": 30.1}, "increased_dna_binding", 2),
]
SLEDAI_ALL_FINDINGS = {flag: 1.0 for flag in SLEDAI_FLAGS} | {
    "urine_rbc_hpf": 20.0,
    "proteinuria_24h": 3.0,
    "urine_wbc_hpf": 20.0,
    "platelets": 40.0,
    "wbc": 1.5,
}
SLEDAI_ALL_LABS = {
    k: v
    for k, v in SLEDAI_ALL_FINDINGS.items()
    if k not in ("sledai_low_complement", "sledai_increased_dna_binding")
} | {"c3": 40.0, "c4": 4.0, "anti_dsdna": 300.0}
SLEDAI.queue([{flag: 1.0} for flag in SLEDAI_FLAGS] + [i for i, _, _ in SLEDAI_LABS] + [SLEDAI_ALL_FINDINGS])
SLEDAI_LIMITS.queue([i for i, _, _ in SLEDAI_LAB_LIMITS] + [SLEDAI_ALL_LABS])


@pytest.mark.parametrize("flag", sorted(SLEDAI_FLAGS))
def test_sledai_2k_each_recorded_descriptor(flag: str) -> None:
    item, points = SLEDAI_FLAGS[flag]
    result = SLEDAI(**{flag: 1.0})
    assert result[f"sledai_2k_{item}"] == points
    assert result["sledai_2k_total"] == points
    assert SLEDAI(**{flag: 0.0})["sledai_2k_total"] == 0


@pytest.mark.parametrize(("inputs", "item", "points"), SLEDAI_LABS)
def test_sledai_2k_laboratory_thresholds(inputs: dict[str, float], item: str, points: int) -> None:
    result = SLEDAI(**inputs)
    assert result[f"sledai_2k_{item}"] == points
    assert result["sledai_2k_total"] == points


@pytest.mark.parametrize(("inputs", "item", "points"), SLEDAI_LAB_LIMITS)
def test_sledai_2k_complement_and_dna_binding_against_the_lab_limits(
    inputs: dict[str, float], item: str, points: int
) -> None:
    result = SLEDAI_LIMITS(**inputs)
    assert result[f"sledai_2k_{item}"] == points
    assert result["sledai_2k_total"] == points


def test_sledai_2k_lab_values_without_limits_do_not_score() -> None:
    # Without the laboratory's limits a C3 of 40 cannot be judged; the recorded finding still counts.
    result = SLEDAI(c3=40.0, c4=4.0, anti_dsdna=300.0)
    assert result["sledai_2k_total"] == 0
    assert SLEDAI(c3=40.0, sledai_low_complement=1.0)["sledai_2k_low_complement"] == 2


def test_sledai_2k_maximum_is_105_with_findings_and_with_lab_limits() -> None:
    assert SLEDAI(**SLEDAI_ALL_FINDINGS)["sledai_2k_total"] == 105
    with_limits = SLEDAI_LIMITS(**SLEDAI_ALL_LABS)
    assert with_limits["sledai_2k_total"] == 105
    assert with_limits["sledai_2k_missing"] == 0
    assert load_definition("sledai-2k")["maximum"] == 105
    assert sum(int(i["points"]) for i in load_definition("sledai-2k")["items"].values()) == 105


def test_sledai_2k_items_and_weights_match_the_paper() -> None:
    points = {name: int(item["points"]) for name, item in load_definition("sledai-2k")["items"].items()}
    assert sorted(points.values()).count(8) == 8
    assert sorted(points.values()).count(4) == 6
    assert sorted(points.values()).count(2) == 7
    assert sorted(points.values()).count(1) == 3
    assert load_definition("sledai-2k")["window_days"] == 10


def test_sledai_2k_missing_descriptors_are_reported() -> None:
    empty = SLEDAI()
    assert (empty["sledai_2k_total"], empty["sledai_2k_missing"]) == (0, 24)
    result = SLEDAI(sledai_rash=1.0, urine_rbc_hpf=2.0)
    assert result["sledai_2k_total"] == 2
    assert result["sledai_2k_missing"] == 22
    assert {"rash", "hematuria"}.isdisjoint(names(result["sledai_2k_missing_components"]))


# ================================================================ same answers through DuckDB


@pytest.mark.parametrize(
    ("fn", "rows"),
    [
        (
            qsofa,
            [{"resp_rate": 22.0, "gcs": 14.0, "sbp": 101.0}, {"resp_rate": None, "gcs": 15.0, "sbp": 100.0}],
        ),
        (hscore, [ALL_PRESENT, ALL_ABSENT, {"ferritin": 6000.0, "hepatomegaly": 1.0}]),
        (mex_sledai, [MEX_ALL, {"platelets": 99.0, "wbc": 4.0}]),
        (sledai_2k, [SLEDAI_ALL_FINDINGS, {"urine_rbc_hpf": 5.0, "temperature": 38.1}]),
    ],
)
def test_polars_and_duckdb_agree(fn: Callable[..., Any], rows: list[dict[str, Any]]) -> None:
    columns = sorted({k for r in rows for k in r})
    data = pl.DataFrame(
        {c: [r.get(c) for r in rows] for c in columns}, schema=dict.fromkeys(columns, pl.Float64)
    ).with_row_index("row_id")
    left = fn(data)
    right = (
        fn(duckdb.sql("SELECT * FROM data")).pl().sort("row_id").select(left.columns).cast(dict(left.schema))
    )
    assert left.to_dicts() == right.to_dicts()
