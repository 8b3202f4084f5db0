"""Worked examples stated in the domain spec (shared/specs/domain.md), one test each, by section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from immunostrat.concepts import is_valid_loinc, load_concepts, observations_from_records, to_canonical
from immunostrat.concepts.units import UnitError
from immunostrat.errors import InputError
from immunostrat.protocols import classify_patient, load_protocol
from immunostrat.scores import hscore, mex_sledai, qsofa, septic_shock, sledai_2k, sofa, suspected_infection

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def _records(rows: list[tuple[str, float, str, float]], patient: str = "p") -> pl.DataFrame:
    return observations_from_records(
        [
            {
                "patient_id": patient,
                "time": (T0 + timedelta(hours=h)).isoformat(),
                "concept": c,
                "value": v,
                "unit": u,
            }
            for c, v, u, h in rows
        ]
    ).observations


# --- A1 ImmunoSep ------------------------------------------------------------------------------------


def test_a1_mals_takes_precedence_when_both_criteria_are_met() -> None:
    obs = _records([("ferritin", 5000, "ng/mL", 0), ("mhla_dr", 2000, "AB/C", 0)])
    result = classify_patient(load_protocol("immunosep-2025"), obs, patient_id="p")
    assert result.endotype == "mals" and result.therapy == "anakinra"


def test_a1_immunoparalysis_needs_ferritin_at_or_below_4420() -> None:
    obs = _records([("ferritin", 4420, "ng/mL", 0), ("mhla_dr", 4999, "AB/C", 0)])
    assert (
        classify_patient(load_protocol("immunosep-2025"), obs, patient_id="p").endotype == "immunoparalysis"
    )


def test_a1_regimens() -> None:
    therapies = load_protocol("immunosep-2025").therapies
    anakinra, ifn = therapies["mals"], therapies["immunoparalysis"]
    assert (anakinra.drug, anakinra.dose, anakinra.dose_unit, anakinra.route) == ("anakinra", 200, "mg", "IV")
    assert (anakinra.interval_hours, anakinra.duration_days) == (8, 15)
    assert (ifn.drug, ifn.dose, ifn.dose_unit, ifn.route) == ("interferon_gamma", 100, "ug", "SC")
    assert (ifn.interval_hours, ifn.duration_days) == (48, 15)
    renal = anakinra.renal_adjustment
    assert renal is not None
    # the label's "every other day" is one dose every 48 h (not 2 x the 8-h interval)
    assert (renal.creatinine_clearance_below_ml_min, renal.adjusted_interval_hours) == (30, 48)
    assert renal.adjusted_interval_words == "every other day"
    assert renal.verify  # ImmunoSep published none: the marker stays


# --- A3 mHLA-DR -------------------------------------------------------------------------------------


def test_a3_percent_positive_is_never_converted_into_ab_per_cell() -> None:
    with pytest.raises(UnitError):
        to_canonical("mhla_dr", 25, "%")
    with pytest.raises(InputError):
        observations_from_records(
            [{"patient_id": "p", "time": T0.isoformat(), "concept": "mhla_dr", "value": 25, "unit": "%"}]
        )
    assert to_canonical("mhla_dr_percent", 25, "%") == 25


def test_a3_monitoring_grades_at_8000_and_15000() -> None:
    monitoring = load_protocol("mhla-dr-monitoring")

    def grade(value: float) -> str:
        return classify_patient(
            monitoring, _records([("mhla_dr", value, "AB/C", 0)]), patient_id="p"
        ).endotype

    assert [grade(v) for v in (7999, 8000, 14999, 15000)] == ["low", "reduced", "reduced", "immunocompetent"]


# --- B1 SOFA ----------------------------------------------------------------------------------------


def _sofa_row(**inputs: float | None) -> dict[str, object]:
    frame = pl.DataFrame({k: [v] for k, v in inputs.items()}, schema={k: pl.Float64 for k in inputs})
    return sofa(frame).row(0, named=True)


def test_b1_band_edges_the_spec_calls_out() -> None:
    assert _sofa_row(bilirubin=1.95)["sofa_liver"] == 1  # falls in the band whose lower bound it reaches
    assert _sofa_row(bilirubin=12.0)["sofa_liver"] == 4  # printed "> 12.0", implemented >= 12.0
    assert _sofa_row(creatinine=5.0)["sofa_renal"] == 4  # printed "> 5.0", implemented >= 5.0
    assert _sofa_row(map=80, dopamine_rate=5.0)["sofa_cardiovascular"] == 2  # 1996 wording "<= 5"


def test_b1_respiration_is_capped_at_2_without_respiratory_support() -> None:
    assert _sofa_row(pao2_fio2_ratio=90, mechanical_ventilation=0)["sofa_respiration"] == 2
    assert _sofa_row(pao2_fio2_ratio=90, mechanical_ventilation=1)["sofa_respiration"] == 4


def test_b1_missing_systems_score_zero_and_are_reported() -> None:
    row = _sofa_row(platelets=40)
    assert row["sofa_total"] == 3 and row["sofa_missing"] == 5
    assert row["sofa_missing_components"] == "respiration,liver,cardiovascular,cns,renal"


# --- B2 qSOFA, Sepsis-3, shock ----------------------------------------------------------------------


def test_b2_qsofa_two_points_is_positive() -> None:
    row = qsofa(pl.DataFrame({"resp_rate": [22.0], "gcs": [15.0], "sbp": [100.0]})).row(0, named=True)
    assert row["qsofa_total"] == 2 and row["qsofa_positive"] is True


@pytest.mark.parametrize(
    ("abx_h", "culture_h", "onset_h"),
    [(0, 24, 0), (0, 24.1, None), (10, 0, 0), (72, 0, 0), (72.1, 0, None)],
)
def test_b2_suspected_infection_windows(abx_h: float, culture_h: float, onset_h: float | None) -> None:
    obs = _records([("antibiotic", 1, "", abx_h), ("culture", 1, "", culture_h)])
    found = suspected_infection(obs)
    if onset_h is None:
        assert found.is_empty()
    else:
        assert found["suspicion_time"][0] == T0 + timedelta(hours=onset_h)


def test_b2_septic_shock_needs_lactate_above_2_mmol_l_with_a_vasopressor() -> None:
    shock = _records([("norepinephrine_rate", 0.1, "ug/kg/min", 0), ("lactate", 2.1, "mmol/L", 1)])
    assert septic_shock(shock)["septic_shock"][0] is True
    no_shock = _records([("norepinephrine_rate", 0.1, "ug/kg/min", 0), ("lactate", 2.0, "mmol/L", 1)])
    assert septic_shock(no_shock)["septic_shock"][0] is False


# --- B3 HScore, B4 MEX-SLEDAI, B5 SLEDAI-2K ----------------------------------------------------------


def test_b3_hscore_edges_and_maximum() -> None:
    edges = hscore(
        pl.DataFrame(
            {
                "temperature": [38.4],
                "ferritin": [6000.0],
                "triglycerides": [4.0],
                "fibrinogen": [2.5],
                "ast": [30.0],
            }
        )
    ).row(0, named=True)
    assert (edges["hscore_temperature"], edges["hscore_ferritin"], edges["hscore_triglycerides"]) == (
        33,
        35,
        44,
    )
    assert (edges["hscore_fibrinogen"], edges["hscore_ast"]) == (30, 19)
    full = {
        "immunosuppression": 1,
        "temperature": 40.0,
        "hepatomegaly": 1,
        "splenomegaly": 1,
        "hemoglobin": 8.0,
        "wbc": 2.0,
        "platelets": 50.0,
        "ferritin": 9000.0,
        "triglycerides": 5.0,
        "fibrinogen": 1.0,
        "ast": 100.0,
        "hemophagocytosis": 1,
    }
    row = hscore(pl.DataFrame({k: [float(v)] for k, v in full.items()})).row(0, named=True)
    assert row["hscore_total"] == 337 and row["hscore_probability"] == "> 99%"


def test_b4_mex_sledai_range_is_0_to_32() -> None:
    findings = [
        "mex_neurological_disorder",
        "mex_renal_disorder",
        "mex_vasculitis",
        "mex_hemolysis",
        "mex_myositis",
        "mex_arthritis",
        "mex_mucocutaneous",
        "mex_serositis",
        "mex_fever",
        "mex_fatigue",
    ]
    everything = pl.DataFrame({f: [1.0] for f in findings} | {"wbc": [3.0]})
    assert mex_sledai(everything)["mex_sledai_total"][0] == 32
    nothing = pl.DataFrame(
        {f: [0.0] for f in findings} | {"wbc": [6.0], "lymphocytes": [2.0], "platelets": [250.0]}
    )
    assert mex_sledai(nothing)["mex_sledai_total"][0] == 0


def test_b5_sledai_2k_maximum_is_105() -> None:
    binary = [c for c in load_concepts().ids() if c.startswith("sledai_")]
    frame = pl.DataFrame(
        {c: [1.0] for c in binary}
        | {
            "urine_rbc_hpf": [10.0],
            "proteinuria_24h": [1.0],
            "urine_wbc_hpf": [10.0],
            "platelets": [50.0],
            "wbc": [2.0],
        }
    )
    assert sledai_2k(frame)["sledai_2k_total"][0] == 105


# --- D units and LOINC ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concept", "value", "unit", "canonical"),
    [
        ("pao2", 10, "kPa", 75.0062),
        ("fio2", 40, "%", 0.4),
        ("platelets", 150, "10^3/uL", 150),
        ("bilirubin", 17.1, "umol/L", 1.0),
        ("creatinine", 88.4, "umol/L", 1.0),
        ("ferritin", 1, "mg/L", 1000),
        ("ferritin", 2.247, "pmol/L", 1.0),
        ("lactate", 9.01, "mg/dL", 1.0),
        ("c3", 1.2, "g/L", 120),
        ("hemoglobin", 90, "g/L", 9.0),
        ("hemoglobin", 1, "mmol/L", 1.611),
        ("triglycerides", 88.57, "mg/dL", 1.0),
        ("fibrinogen", 250, "mg/dL", 2.5),
        ("il6", 12, "ng/L", 12),
        ("mhla_dr", 5000, "receptors/cell", 5000),
    ],
)
def test_d_unit_table(concept: str, value: float, unit: str, canonical: float) -> None:
    assert to_canonical(concept, value, unit) == pytest.approx(canonical, rel=1e-9)


def test_d_vasopressor_per_minute_uses_the_recorded_weight() -> None:
    assert to_canonical("norepinephrine_rate", 7, "ug/min", weight_kg=70) == pytest.approx(0.1)


def test_d_loinc_check_digits() -> None:
    for code in ("2276-4", "777-3", "1975-2", "2160-0", "3150-0", "3074-2", "9269-2"):
        assert is_valid_loinc(code)
    assert not is_valid_loinc("3074-8")  # "3074-8 is not a valid code"
