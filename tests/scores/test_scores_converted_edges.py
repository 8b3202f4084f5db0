"""Values given in other units land on the right side of each SOFA / HScore cut-off after conversion
(domain.md D factors feeding the B1 and B3 bands): read, convert, pivot, score."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from immunostrat.concepts import observations_from_records, to_canonical
from immunostrat.scores.simple import hscore
from immunostrat.scores.sofa import SOFA_INPUTS, sofa

# (concept, value, unit, SOFA input, component, points)
SOFA_CASES = [
    # bilirubin umol/L / 17.1 against 1.2 / 2.0 / 6.0 / 12.0 mg/dL
    ("bilirubin", 20.5, "umol/L", "liver", 0),
    ("bilirubin", 20.52, "umol/L", "liver", 1),
    ("bilirubin", 34.1, "umol/L", "liver", 1),
    ("bilirubin", 34.2, "umol/L", "liver", 2),
    ("bilirubin", 34.2, "µmol/L", "liver", 2),
    ("bilirubin", 102.5, "umol/L", "liver", 2),
    ("bilirubin", 102.6, "umol/L", "liver", 3),
    ("bilirubin", 205.1, "umol/L", "liver", 3),
    ("bilirubin", 205.2, "umol/L", "liver", 4),
    ("bilirubin", 20.0, "mg/L", "liver", 2),
    # creatinine umol/L / 88.4 against 1.2 / 2.0 / 3.5 / 5.0 mg/dL
    ("creatinine", 106.0, "umol/L", "renal", 0),
    ("creatinine", 106.08, "umol/L", "renal", 1),
    ("creatinine", 176.7, "umol/L", "renal", 1),
    ("creatinine", 176.8, "umol/L", "renal", 2),
    ("creatinine", 309.3, "umol/L", "renal", 2),
    ("creatinine", 309.4, "umol/L", "renal", 3),
    ("creatinine", 441.9, "umol/L", "renal", 3),
    ("creatinine", 442.0, "umol/L", "renal", 4),
    ("creatinine", 442.0, "µmol/L", "renal", 4),
    ("creatinine", 0.442, "mmol/L", "renal", 4),
    # platelets: counts per uL and 10^3/uL against 150 / 100 / 50 / 20 x 10^9/L
    ("platelets", 150_000.0, "/uL", "coagulation", 0),
    ("platelets", 149_999.0, "/uL", "coagulation", 1),
    ("platelets", 100.0, "x10^3/uL", "coagulation", 1),
    ("platelets", 99.9, "10^3/uL", "coagulation", 2),
    ("platelets", 50.0, "10*9/L", "coagulation", 2),
    ("platelets", 49_999.0, "/mm3", "coagulation", 3),
    ("platelets", 20.0, "10^9/L", "coagulation", 3),
    ("platelets", 19.99, "G/L", "coagulation", 4),
    # MAP in kPa against 70 mmHg (70 mmHg = 9.3326 kPa)
    ("map", 9.34, "kPa", "cardiovascular", 0),
    ("map", 9.33, "kPa", "cardiovascular", 1),
    ("map", 70.0, "mm[Hg]", "cardiovascular", 0),
    ("map", 69.9, "mm[Hg]", "cardiovascular", 1),
    # urine output per day in litres against 500 / 200 mL/day
    ("urine_output_24h", 0.5, "L/d", "renal", 0),
    ("urine_output_24h", 0.4999, "L/d", "renal", 3),
    ("urine_output_24h", 0.2, "L/day", "renal", 3),
    ("urine_output_24h", 0.1999, "L/day", "renal", 4),
]


@pytest.fixture(scope="module")
def scored_sofa_cases() -> list[dict[str, Any]]:
    """Every case read as an observation (one patient each), pivoted to SOFA inputs and scored once."""
    records = [
        {"patient_id": f"c{i}", "time": "2024-03-01T08:00:00Z", "concept": c, "value": v, "unit": u}
        for i, (c, v, u, _, _) in enumerate(SOFA_CASES)
    ]
    obs = observations_from_records(records).observations
    wide = obs.pivot(on="concept", index="patient_id", values="value")
    for name in SOFA_INPUTS:
        if name not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(name))
    scored = sofa(wide)
    by_patient = {r["patient_id"]: r for r in scored.iter_rows(named=True)}
    return [by_patient[f"c{i}"] for i in range(len(SOFA_CASES))]


@pytest.mark.parametrize("index", range(len(SOFA_CASES)), ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in SOFA_CASES])
def test_converted_value_scores_the_right_band(index: int, scored_sofa_cases: list[dict[str, Any]]) -> None:
    _, _, _, comp, points = SOFA_CASES[index]
    assert scored_sofa_cases[index][f"sofa_{comp}"] == points


def test_bilirubin_34_2_umol_is_exactly_2_mg_dl() -> None:
    assert to_canonical("bilirubin", 34.2, "umol/L") == 2.0
    assert to_canonical("creatinine", 442.0, "umol/L") == 5.0


PAO2_CASES = [
    # (PaO2 kPa, FiO2 value, FiO2 unit, ventilated, respiration points)
    (26.7, "50", "%", 0.0, 0),  # 200.27 mmHg / 0.5 = 400.5
    (26.6, "50", "%", 0.0, 1),  # 199.52 / 0.5 = 399.0
    (26.6, "0.5", "", 0.0, 1),
    (20.0, "50", "%", 0.0, 1),  # 150.01 / 0.5 = 300.02
    (19.9, "50", "%", 0.0, 2),  # 149.26 / 0.5 = 298.5
    (13.4, "50", "%", 1.0, 2),  # 100.51 / 0.5 = 201.0
    (13.3, "50", "%", 1.0, 3),  # 99.76 / 0.5 = 199.5
    (13.3, "50", "%", 0.0, 2),  # capped without respiratory support
    (8.0, "60", "%", 1.0, 3),  # 60.00 / 0.6 = 100.008
    (7.9, "60", "%", 1.0, 4),  # 59.25 / 0.6 = 98.76
    (7.9, "0.6", "", 1.0, 4),
]


@pytest.fixture(scope="module")
def scored_pao2_cases() -> list[dict[str, Any]]:
    records = []
    for i, (kpa, fio2, fio2_unit, vent, _) in enumerate(PAO2_CASES):
        when = "2024-03-01T08:00:00Z"
        records += [
            {"patient_id": f"c{i:02d}", "time": when, "concept": "pao2", "value": kpa, "unit": "kPa"},
            {"patient_id": f"c{i:02d}", "time": when, "concept": "fio2", "value": fio2, "unit": fio2_unit},
            {
                "patient_id": f"c{i:02d}",
                "time": when,
                "concept": "mechanical_ventilation",
                "value": vent,
                "unit": "",
            },
        ]
    obs = observations_from_records(records).observations
    wide = obs.pivot(on="concept", index="patient_id", values="value").sort("patient_id")
    wide = wide.with_columns((pl.col("pao2") / pl.col("fio2")).alias("pao2_fio2_ratio"))
    return sofa(wide).to_dicts()


@pytest.mark.parametrize("index", range(len(PAO2_CASES)), ids=[str(c) for c in PAO2_CASES])
def test_pao2_in_kpa_and_fio2_in_percent_or_fraction(
    index: int, scored_pao2_cases: list[dict[str, Any]]
) -> None:
    assert scored_pao2_cases[index]["sofa_respiration"] == PAO2_CASES[index][-1]


PUMP_CASES = [
    # (concept, pump rate, unit, weight kg, cardiovascular points)
    ("dopamine_rate", 350.0, "ug/min", 70.0, 2),  # 5.0 ug/kg/min
    ("dopamine_rate", 351.0, "ug/min", 70.0, 3),  # 5.014
    ("dopamine_rate", 21.0, "mg/h", 70.0, 2),  # 5.0
    ("dopamine_rate", 63.0, "mg/h", 70.0, 3),  # 15.0
    ("dopamine_rate", 63.1, "mg/h", 70.0, 4),  # 15.02
    ("norepinephrine_rate", 7.0, "ug/min", 70.0, 3),  # 0.1
    ("norepinephrine_rate", 7.7, "mcg/min", 70.0, 4),  # 0.11
    ("epinephrine_rate", 8.0, "ug/min", 80.0, 3),  # 0.1
    ("epinephrine_rate", 8.1, "ug/min", 80.0, 4),  # 0.10125
    ("norepinephrine_rate", 7.0, "ug/min", 35.0, 4),  # the same pump rate in a smaller patient: 0.2
    ("dobutamine_rate", 1400.0, "ug/min", 70.0, 2),  # 20 ug/kg/min: any dose -> 2
]


@pytest.fixture(scope="module")
def scored_pump_cases() -> list[dict[str, Any]]:
    records = [
        {"patient_id": f"c{i:02d}", "time": "2024-03-01T08:00:00Z", "concept": c, "value": v, "unit": u}
        for i, (c, v, u, _, _) in enumerate(PUMP_CASES)
    ]
    patients = [{"patient_id": f"c{i:02d}", "weight_kg": w} for i, (_, _, _, w, _) in enumerate(PUMP_CASES)]
    obs = observations_from_records(records, patients=patients).observations
    assert set(obs["unit"]) == {"ug/kg/min"}
    wide = obs.pivot(on="concept", index="patient_id", values="value").sort("patient_id")
    return sofa(wide).to_dicts()


@pytest.mark.parametrize("index", range(len(PUMP_CASES)), ids=[str(c) for c in PUMP_CASES])
def test_pump_rates_divided_by_the_patients_weight(
    index: int, scored_pump_cases: list[dict[str, Any]]
) -> None:
    assert scored_pump_cases[index]["sofa_cardiovascular"] == PUMP_CASES[index][-1]


# HScore cut-offs reached through conversion (domain.md B3 edges, D factors).
HSCORE_CASES = [
    ("ferritin", 2000 * 2.247, "pmol/L", "ferritin", 35),
    ("ferritin", 1999 * 2.247, "pmol/L", "ferritin", 0),
    ("ferritin", 6.0, "mg/L", "ferritin", 35),
    ("ferritin", 6.0001, "mg/L", "ferritin", 50),
    ("ferritin", 6000.0, "ug/L", "ferritin", 35),
    ("triglycerides", 132.855, "mg/dL", "triglycerides", 44),  # 1.5 mmol/L
    ("triglycerides", 132.8, "mg/dL", "triglycerides", 0),
    ("triglycerides", 354.28, "mg/dL", "triglycerides", 44),  # 4.0 mmol/L
    ("triglycerides", 354.3, "mg/dL", "triglycerides", 64),
    ("fibrinogen", 250.0, "mg/dL", "fibrinogen", 30),  # 2.5 g/L
    ("fibrinogen", 250.1, "mg/dL", "fibrinogen", 0),
    ("temperature", 101.12, "degF", "temperature", 33),  # 38.4 C
    ("temperature", 101.1, "degF", "temperature", 0),
    ("temperature", 102.92, "[degF]", "temperature", 33),  # 39.4 C
    ("temperature", 102.95, "[degF]", "temperature", 49),
]


@pytest.fixture(scope="module")
def scored_hscore_cases() -> list[dict[str, Any]]:
    columns = sorted({c[0] for c in HSCORE_CASES})
    data = {
        name: [to_canonical(c, v, u) if c == name else None for c, v, u, _, _ in HSCORE_CASES]
        for name in columns
    }
    return hscore(pl.DataFrame(data, schema=dict.fromkeys(columns, pl.Float64))).to_dicts()


@pytest.mark.parametrize(
    "index", range(len(HSCORE_CASES)), ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in HSCORE_CASES]
)
def test_hscore_edges_after_conversion(index: int, scored_hscore_cases: list[dict[str, Any]]) -> None:
    _, _, _, item, points = HSCORE_CASES[index]
    assert scored_hscore_cases[index][f"hscore_{item}"] == points


def test_hemoglobin_cytopenia_edge_in_g_per_litre_and_mmol() -> None:
    hb_g_l = to_canonical("hemoglobin", 92.0, "g/L")
    hb_mmol = to_canonical("hemoglobin", 5.72, "mmol/L")  # 9.21 g/dL: not cytopenic
    out = hscore(
        pl.DataFrame({"hemoglobin": [hb_g_l, hb_mmol], "wbc": [4.0, 4.0], "platelets": [300.0, 300.0]})
    )
    assert out["hscore_cytopenias"].to_list() == [24, 0]
