"""Unit conversion into canonical units: every factor of domain.md section D and every spelling the
issue lists, plus the errors for unknown, incompatible and weight-less units."""

from __future__ import annotations

import pytest

from immunostrat.concepts import UnitError, conversion_for, load_concepts, normalise_spelling, to_canonical

EXACT = 1e-9


def approx(x: float, rel: float = EXACT) -> object:
    return pytest.approx(x, rel=rel, abs=1e-12)


# (concept, value, unit, expected canonical value) straight from domain.md section D.
SECTION_D = [
    # PaO2: kPa x 7.50062 (pint's exact factor is 7.5006158; the spec rounds to 6 figures)
    ("pao2", 10.0, "kPa", 75.0062),
    ("pao2", 13.3, "kPa", 13.3 * 7.50062),
    # FiO2: percent / 100
    ("fio2", 40.0, "%", 0.40),
    ("fio2", 21.0, "%", 0.21),
    ("fio2", 100.0, "%", 1.0),
    # platelets: 10^3/uL = 10^9/L
    ("platelets", 150.0, "10^3/uL", 150.0),
    ("platelets", 150.0, "10^9/L", 150.0),
    ("platelets", 150_000.0, "/uL", 150.0),
    ("platelets", 150_000.0, "/mm3", 150.0),
    # bilirubin: umol/L / 17.1
    ("bilirubin", 17.1, "umol/L", 1.0),
    ("bilirubin", 34.2, "umol/L", 2.0),
    ("bilirubin", 100.0, "umol/L", 100.0 / 17.1),
    # creatinine: umol/L / 88.4
    ("creatinine", 88.4, "umol/L", 1.0),
    ("creatinine", 442.0, "umol/L", 5.0),
    ("creatinine", 100.0, "umol/L", 100.0 / 88.4),
    # ferritin: ug/L = ng/mL; mg/L x 1000; pmol/L / 2.247
    ("ferritin", 4420.0, "ug/L", 4420.0),
    ("ferritin", 4.42, "mg/L", 4420.0),
    ("ferritin", 2247.0, "pmol/L", 1000.0),
    ("ferritin", 4420.0 * 2.247, "pmol/L", 4420.0),
    # lactate: mg/dL / 9.01
    ("lactate", 18.02, "mg/dL", 2.0),
    ("lactate", 9.01, "mg/dL", 1.0),
    ("lactate", 2.0, "mmol/L", 2.0),
    # C3, C4: g/L x 100
    ("c3", 1.2, "g/L", 120.0),
    ("c4", 0.16, "g/L", 16.0),
    ("c3", 90.0, "mg/dL", 90.0),
    # haemoglobin: g/L / 10; mmol/L x 1.611
    ("hemoglobin", 92.0, "g/L", 9.2),
    ("hemoglobin", 1.0, "mmol/L", 1.611),
    ("hemoglobin", 6.0, "mmol/L", 6.0 * 1.611),
    # triglycerides: mg/dL / 88.57
    ("triglycerides", 88.57, "mg/dL", 1.0),
    ("triglycerides", 132.855, "mg/dL", 1.5),
    ("triglycerides", 354.28, "mg/dL", 4.0),
    # fibrinogen: mg/dL / 100
    ("fibrinogen", 250.0, "mg/dL", 2.5),
    ("fibrinogen", 2.5, "g/L", 2.5),
    # IL-6, TNF-alpha: ng/L = pg/mL
    ("il6", 35.0, "ng/L", 35.0),
    ("il6", 35.0, "pg/mL", 35.0),
    ("tnf_alpha", 12.5, "ng/L", 12.5),
    ("tnf_alpha", 12.5, "pg/mL", 12.5),
    # mHLA-DR: molecules or receptors per cell = AB/C
    ("mhla_dr", 5000.0, "AB/C", 5000.0),
    ("mhla_dr", 5000.0, "molecules/cell", 5000.0),
    ("mhla_dr", 5000.0, "receptors/cell", 5000.0),
]


@pytest.mark.parametrize(("concept", "value", "unit", "expected"), SECTION_D)
def test_section_d_conversion(concept: str, value: float, unit: str, expected: float) -> None:
    rel = 1e-6 if unit == "kPa" else EXACT
    assert to_canonical(concept, value, unit) == approx(expected, rel)


@pytest.mark.parametrize(
    ("concept", "unit", "factor_to_canonical"),
    [
        ("bilirubin", "umol/L", 1 / 17.1),
        ("creatinine", "umol/L", 1 / 88.4),
        ("ferritin", "pmol/L", 1 / 2.247),
        ("ferritin", "mg/L", 1000.0),
        ("ferritin", "ug/L", 1.0),
        ("lactate", "mg/dL", 1 / 9.01),
        ("c3", "g/L", 100.0),
        ("c4", "g/L", 100.0),
        ("hemoglobin", "g/L", 0.1),
        ("hemoglobin", "mmol/L", 1.611),
        ("triglycerides", "mg/dL", 1 / 88.57),
        ("fibrinogen", "mg/dL", 0.01),
        ("fio2", "%", 0.01),
        ("platelets", "10^3/uL", 1.0),
        ("il6", "ng/L", 1.0),
    ],
)
def test_conversion_is_a_pure_factor_both_ways(concept: str, unit: str, factor_to_canonical: float) -> None:
    conv = conversion_for(concept, unit)
    assert conv.offset == 0.0
    assert not conv.per_weight_kg
    assert conv.scale == approx(factor_to_canonical)
    # The reverse direction: canonical back into the source unit is 1 / scale (e.g. 1 mg/dL = 17.1 umol/L).
    assert 1.0 / conv.scale == approx(1.0 / factor_to_canonical)
    # The canonical unit itself converts with factor 1.
    canonical = load_concepts()[concept].canonical_unit
    spelled = {"1": "", "1e9/L": "10^9/L"}.get(canonical, canonical)
    assert conversion_for(concept, spelled).scale == approx(1.0)


@pytest.mark.parametrize(
    ("concept", "canonical_value", "unit", "factor"),
    [
        ("bilirubin", 2.0, "umol/L", 17.1),
        ("creatinine", 5.0, "umol/L", 88.4),
        ("ferritin", 4420.0, "pmol/L", 2.247),
        ("lactate", 2.0, "mg/dL", 9.01),
        ("triglycerides", 1.5, "mg/dL", 88.57),
        ("hemoglobin", 9.2, "g/L", 10.0),
        ("fibrinogen", 2.5, "mg/dL", 100.0),
        ("c3", 90.0, "g/L", 0.01),
    ],
)
def test_round_trip_from_canonical_and_back(
    concept: str, canonical_value: float, unit: str, factor: float
) -> None:
    """canonical -> source unit by the spec's factor, and back, lands on the same canonical value."""
    assert to_canonical(concept, canonical_value * factor, unit) == approx(canonical_value)


# Spellings issue 2 requires: (concept, unit, value, expected canonical).
SPELLINGS = [
    ("pao2", "mmHg", 80.0, 80.0),
    ("pao2", "mm[Hg]", 80.0, 80.0),
    ("map", "mmHg", 65.0, 65.0),
    ("map", "mm[Hg]", 65.0, 65.0),
    ("sbp", "mm[Hg]", 100.0, 100.0),
    ("pao2", "kPa", 8.0, 8.0 * 7.50062),
    ("platelets", "10^9/L", 99.0, 99.0),
    ("platelets", "10*9/L", 99.0, 99.0),
    ("platelets", "x10^3/uL", 99.0, 99.0),
    ("wbc", "10^9/L", 3.0, 3.0),
    ("wbc", "10*9/L", 3.0, 3.0),
    ("wbc", "x10^3/uL", 3.0, 3.0),
    ("bilirubin", "umol/L", 34.2, 2.0),
    ("bilirubin", "µmol/L", 34.2, 2.0),
    ("creatinine", "umol/L", 442.0, 5.0),
    ("creatinine", "µmol/L", 442.0, 5.0),
    ("bilirubin", "mg/dL", 2.0, 2.0),
    ("creatinine", "mg/dL", 5.0, 5.0),
    ("ferritin", "ng/mL", 500.0, 500.0),
    ("ferritin", "ug/L", 500.0, 500.0),
    ("ferritin", "mg/L", 0.5, 500.0),
    ("ferritin", "pmol/L", 1123.5, 500.0),
    ("crp", "mg/L", 50.0, 50.0),
    ("norepinephrine_rate", "ug/kg/min", 0.1, 0.1),
    ("epinephrine_rate", "ug/kg/min", 0.1, 0.1),
    ("dopamine_rate", "ug/kg/min", 5.0, 5.0),
    ("dobutamine_rate", "ug/kg/min", 5.0, 5.0),
    ("norepinephrine_rate", "mcg/kg/min", 0.1, 0.1),
    ("norepinephrine_rate", "µg/kg/min", 0.1, 0.1),
    ("urine_output", "mL", 250.0, 250.0),
    ("fio2", "%", 40.0, 0.4),
    ("spo2", "%", 95.0, 95.0),
    ("mhla_dr_percent", "%", 30.0, 30.0),
    ("mhla_dr", "AB/C", 8000.0, 8000.0),
    ("mhla_dr", "molecules/cell", 8000.0, 8000.0),
    ("mhla_dr", "receptors/cell", 8000.0, 8000.0),
]


@pytest.mark.parametrize(("concept", "unit", "value", "expected"), SPELLINGS)
def test_accepted_spelling(concept: str, unit: str, value: float, expected: float) -> None:
    rel = 1e-6 if unit == "kPa" else EXACT
    assert to_canonical(concept, value, unit) == approx(expected, rel)


@pytest.mark.parametrize("unit", ["mmHg", "mm[Hg]", "mm Hg", "  mmHg  "])
def test_mmhg_spellings_are_identity(unit: str) -> None:
    conv = conversion_for("pao2", unit)
    assert (conv.scale, conv.offset, conv.per_weight_kg) == (1.0, 0.0, False)


def test_every_declared_unit_of_every_concept_converts() -> None:
    """A unit listed in concepts.yaml must convert (weight-based ones flag the weight)."""
    failures = []
    for concept in load_concepts():
        for unit in concept.units:
            try:
                conv = conversion_for(concept.id, unit)
            except Exception as exc:  # collect every failure, not only the first
                failures.append((concept.id, unit, repr(exc)))
                continue
            assert conv.scale > 0, (concept.id, unit)
    assert failures == []


def test_canonical_value_in_canonical_unit_is_unchanged_for_every_concept() -> None:
    for concept in load_concepts():
        unit = next(
            u for u, target in concept.units.items() if _is_canonical(concept.canonical_unit, u, target)
        )
        low, high = concept.plausible
        mid = (low + high) / 2
        assert to_canonical(concept.id, mid, unit) == approx(mid), (concept.id, unit)


def _is_canonical(canonical: str, unit: str, target: object) -> bool:
    if unit == canonical:
        return True
    return isinstance(target, str) and target == canonical


# ---------------------------------------------------------------- FiO2 percent vs fraction


def test_fio2_percent_and_fraction_agree() -> None:
    assert to_canonical("fio2", 40.0, "%") == 0.4
    assert to_canonical("fio2", 0.4, "") == 0.4
    assert to_canonical("fio2", 0.4, None) == 0.4
    assert to_canonical("fio2", 0.4, "1") == 0.4
    assert to_canonical("fio2", 0.4, "fraction") == 0.4
    assert to_canonical("fio2", 40.0, "percent") == 0.4


def test_fio2_plain_number_is_taken_as_a_fraction_not_rescaled() -> None:
    # The unit decides; a bare 40 is not silently divided by 100 (the range check rejects it on reading).
    assert to_canonical("fio2", 40.0, "") == 40.0


@pytest.mark.parametrize("unit", ["mmHg", "mg/dL", "kPa", "L/min"])
def test_fio2_incompatible_units(unit: str) -> None:
    with pytest.raises(UnitError):
        conversion_for("fio2", unit)


# ---------------------------------------------------------------- weight-based vasopressors


@pytest.mark.parametrize(
    ("concept", "value", "unit", "weight", "expected"),
    [
        ("norepinephrine_rate", 7.0, "ug/min", 70.0, 0.1),
        ("norepinephrine_rate", 7.7, "ug/min", 70.0, 0.11),
        ("norepinephrine_rate", 7.0, "mcg/min", 70.0, 0.1),
        ("epinephrine_rate", 8.0, "µg/min", 80.0, 0.1),
        ("dopamine_rate", 350.0, "ug/min", 70.0, 5.0),
        ("dopamine_rate", 21.0, "mg/h", 70.0, 5.0),
        ("dopamine_rate", 21.0, "mg/hr", 70.0, 5.0),
        ("dobutamine_rate", 600.0, "ug/h", 100.0, 0.1),
        ("dobutamine_rate", 600.0, "mcg/h", 100.0, 0.1),
    ],
)
def test_rate_per_minute_divided_by_weight(
    concept: str, value: float, unit: str, weight: float, expected: float
) -> None:
    conv = conversion_for(concept, unit)
    assert conv.per_weight_kg
    assert to_canonical(concept, value, unit, weight_kg=weight) == approx(expected)


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [("ug/kg/min", 0.1, 0.1), ("ug/kg/h", 6.0, 0.1), ("mg/kg/h", 0.006, 0.1), ("ng/kg/min", 100.0, 0.1)],
)
def test_rate_per_kg_needs_no_weight(unit: str, value: float, expected: float) -> None:
    conv = conversion_for("norepinephrine_rate", unit)
    assert not conv.per_weight_kg
    assert to_canonical("norepinephrine_rate", value, unit) == approx(expected)


@pytest.mark.parametrize("weight", [None, 0.0, -70.0])
def test_rate_per_minute_without_weight_is_an_error(weight: float | None) -> None:
    with pytest.raises(UnitError, match="weight") as info:
        to_canonical("norepinephrine_rate", 7.0, "ug/min", weight_kg=weight)
    assert "weight" in info.value.expected


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("U/min", 0.04, 0.04),
        ("units/min", 0.04, 0.04),
        ("IU/min", 0.04, 0.04),
        ("U/h", 2.4, 0.04),
        ("units/h", 2.4, 0.04),
        ("units/hr", 2.4, 0.04),
        ("IU/h", 2.4, 0.04),
        ("[iU]/h", 2.4, 0.04),
    ],
)
def test_vasopressin_units_per_hour_to_units_per_minute(unit: str, value: float, expected: float) -> None:
    # U/h -> U/min divides by 60 (the "x60" bug would give 144).
    assert to_canonical("vasopressin_rate", value, unit) == approx(expected)
    assert not conversion_for("vasopressin_rate", unit).per_weight_kg


def test_vasopressin_is_not_a_mass_rate() -> None:
    with pytest.raises(UnitError):
        conversion_for("vasopressin_rate", "ug/min")


# ---------------------------------------------------------------- other conversions used by the scores


@pytest.mark.parametrize(
    ("concept", "value", "unit", "expected"),
    [
        ("temperature", 100.4, "degF", 38.0),
        ("temperature", 100.4, "°F", 38.0),
        ("temperature", 38.0, "Cel", 38.0),
        ("temperature", 38.0, "°C", 38.0),
        ("urine_output", 0.5, "L", 500.0),
        ("urine_output_24h", 0.5, "L/d", 500.0),
        ("urine_output_24h", 450.0, "mL/day", 450.0),
        ("proteinuria_24h", 500.0, "mg/24h", 0.5),
        ("crp", 5.0, "mg/dL", 50.0),
        ("il6", 1.0, "ng/mL", 1000.0),
        ("ast", 30.0, "IU/L", 30.0),
        ("creatinine", 0.442, "mmol/L", 5.0),
        ("bilirubin", 20.0, "mg/L", 2.0),
    ],
)
def test_other_conversions(concept: str, value: float, unit: str, expected: float) -> None:
    assert to_canonical(concept, value, unit) == approx(expected)


@pytest.mark.parametrize(
    ("concept", "value", "unit", "expected"),
    [
        # values that land exactly on SOFA / HScore cut-offs after conversion: no float noise
        ("bilirubin", 20.52, "umol/L", 1.2),
        ("bilirubin", 34.2, "umol/L", 2.0),
        ("bilirubin", 102.6, "umol/L", 6.0),
        ("bilirubin", 205.2, "umol/L", 12.0),
        ("creatinine", 106.08, "umol/L", 1.2),
        ("creatinine", 176.8, "umol/L", 2.0),
        ("creatinine", 309.4, "umol/L", 3.5),
        ("creatinine", 442.0, "umol/L", 5.0),
        ("triglycerides", 132.855, "mg/dL", 1.5),
        ("triglycerides", 354.28, "mg/dL", 4.0),
        ("ferritin", 2000 * 2.247, "pmol/L", 2000.0),
        ("ferritin", 6000 * 2.247, "pmol/L", 6000.0),
        ("ferritin", 6.0, "mg/L", 6000.0),
        ("fibrinogen", 250.0, "mg/dL", 2.5),
        ("hemoglobin", 92.0, "g/L", 9.2),
    ],
)
def test_conversion_lands_exactly_on_cutoffs(concept: str, value: float, unit: str, expected: float) -> None:
    assert to_canonical(concept, value, unit) == expected


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("concept", "unit"),
    [
        ("pao2", "mg/dL"),
        ("pao2", "furlong"),
        ("bilirubin", "mmHg"),
        ("platelets", "mg"),
        ("ferritin", "mmHg"),
        ("creatinine", "kPa"),
        ("norepinephrine_rate", "mL/h"),
        ("mhla_dr_percent", "AB/C"),
        ("urine_output", "mL/d"),
    ],
)
def test_incompatible_unit_is_a_unit_error(concept: str, unit: str) -> None:
    with pytest.raises(UnitError) as info:
        conversion_for(concept, unit)
    assert concept in str(info.value)
    assert "canonical" in info.value.expected


@pytest.mark.parametrize("unit", ["blorp", "mg//dL", "%%", "((", "10^^9/L"])
def test_unknown_unit_is_a_unit_error(unit: str) -> None:
    with pytest.raises(UnitError) as info:
        conversion_for("bilirubin", unit)
    assert "mg/dL" in info.value.expected


@pytest.mark.parametrize(
    ("concept", "unit"),
    [
        ("mhla_dr", "%"),  # percent-positive is a different measurement (domain.md A3)
        ("mhla_dr", "mg/L"),
        ("mhla_dr", "blorp"),
        ("anti_dsdna", "mg/L"),
        ("urine_rbc_hpf", "mg"),
        ("urine_wbc_hpf", "mg/dL"),
    ],
)
def test_wrong_unit_on_a_factor_only_concept_is_a_unit_error(concept: str, unit: str) -> None:
    """Concepts whose canonical unit pint does not know (AB/C, IU/mL, /hpf) must still answer UnitError."""
    with pytest.raises(UnitError):
        conversion_for(concept, unit)


@pytest.mark.parametrize("concept", ["platelets", "wbc"])
def test_grams_per_litre_is_not_a_cell_count(concept: str) -> None:
    """'G/L' (giga per litre) is a count; 'g/L' (grams per litre) is a mass concentration."""
    assert to_canonical(concept, 150.0, "G/L") == 150.0
    with pytest.raises(UnitError):
        conversion_for(concept, "g/L")


def test_missing_unit_where_one_is_needed() -> None:
    with pytest.raises(UnitError, match="needs a unit"):
        conversion_for("bilirubin", "")
    with pytest.raises(UnitError, match="needs a unit"):
        conversion_for("bilirubin", None)


def test_unknown_concept_raises_key_error() -> None:
    with pytest.raises(KeyError):
        conversion_for("not_a_concept", "mg/dL")


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("mm[Hg]", "mmHg"),
        ("µmol/L", "umol/L"),
        ("μmol/L", "umol/L"),
        ("mcg/kg/min", "ug/kg/min"),
        ("10^9/L", "1e9/L"),
        ("10*9/L", "1e9/L"),
        ("x10^3/uL", "1e3/uL"),
        ("/mm3", "1/mm**3"),
        ("{beats}/min", "1/min"),
    ],
)
def test_normalise_spelling(spelling: str, expected: str) -> None:
    assert normalise_spelling(spelling) == expected
