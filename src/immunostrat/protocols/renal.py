"""Creatinine clearance by Cockcroft-Gault, for renal dose adjustment."""

from __future__ import annotations

# What each Cockcroft-Gault input is called when we ask a clinician to measure or record it.
INPUT_WORDS = {"age": "age", "weight_kg": "body weight", "sex": "sex", "creatinine": "serum creatinine"}


def missing_inputs(
    *, age_years: float | None, weight_kg: float | None, female: bool | None, creatinine_mg_dl: float | None
) -> list[str]:
    """The Cockcroft-Gault inputs that are not known (``age``, ``weight_kg``, ``sex``, ``creatinine``)."""
    given = (("age", age_years), ("weight_kg", weight_kg), ("sex", female), ("creatinine", creatinine_mg_dl))
    return [name for name, value in given if value is None]


def cockcroft_gault(
    *, age_years: float | None, weight_kg: float | None, female: bool | None, creatinine_mg_dl: float | None
) -> float:
    """Creatinine clearance in mL/min: (140 - age) x weight / (72 x serum creatinine), x 0.85 if female.

    Source: Cockcroft DW, Gault MH. Prediction of creatinine clearance from serum creatinine.
    Nephron 1976;16:31-41. Raises ValueError naming what is missing, never guesses.
    """
    missing = missing_inputs(
        age_years=age_years, weight_kg=weight_kg, female=female, creatinine_mg_dl=creatinine_mg_dl
    )
    if missing:
        raise ValueError(f"Cockcroft-Gault needs {', '.join(missing)}")
    assert age_years is not None and weight_kg is not None and creatinine_mg_dl is not None
    if creatinine_mg_dl <= 0:
        raise ValueError("Cockcroft-Gault needs a positive creatinine")
    clearance = (140.0 - age_years) * weight_kg / (72.0 * creatinine_mg_dl)
    return clearance * 0.85 if female else clearance
