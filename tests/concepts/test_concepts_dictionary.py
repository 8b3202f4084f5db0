"""The concept dictionary: public concept ids, LOINC codes (domain.md section D) and their check digit."""

from __future__ import annotations

import pytest

from immunostrat.concepts import (
    ConceptDictionary,
    is_valid_loinc,
    load_concepts,
    loinc_check_digit,
)
from immunostrat.concepts.dictionary import parse_dictionary

# Issue 2, "These concept ids are the public interface (never rename these)".
PUBLIC_IDS = [
    "pao2", "fio2", "spo2", "mechanical_ventilation", "platelets", "bilirubin", "map", "sbp", "resp_rate",
    "heart_rate", "temperature", "norepinephrine_rate", "epinephrine_rate", "dopamine_rate",
    "dobutamine_rate", "vasopressin_rate", "gcs", "creatinine", "urine_output", "urine_output_24h",
    "lactate", "ferritin", "mhla_dr", "mhla_dr_percent", "crp", "il6", "tnf_alpha", "c3", "c4",
    "anti_dsdna", "wbc", "hemoglobin", "triglycerides", "fibrinogen", "ast",
]  # fmt: skip

# domain.md section D: concept -> LOINC codes listed there (first = the preferred one).
DOMAIN_LOINC = {
    "ferritin": ["2276-4", "20567-4"],
    "platelets": ["777-3"],
    "bilirubin": ["1975-2", "14631-6"],
    "creatinine": ["2160-0", "14682-9"],
    "pao2": ["2703-7"],
    "fio2": ["3150-0"],
    "lactate": ["2524-7", "32693-4", "2518-9", "2519-7"],
    "map": ["8478-0"],
    "gcs": ["9269-2"],
    "urine_output": ["9187-6"],
    "urine_output_24h": ["9188-4"],
    "c3": ["4485-9"],
    "c4": ["4498-2"],
    "anti_dsdna": ["5130-0"],
    "il6": ["26881-3"],
    "tnf_alpha": ["3074-2"],
    "crp": ["1988-5"],
    "wbc": ["6690-2"],
    "hemoglobin": ["718-7"],
    "triglycerides": ["2571-8"],
    "fibrinogen": ["3255-7"],
    "ast": ["1920-8"],
    "heart_rate": ["8867-4"],
    "resp_rate": ["9279-1"],
    "temperature": ["8310-5"],
    "sbp": ["8480-6"],
    "spo2": ["59408-5"],
}


def reference_check_digit(number: str) -> int:
    """The LOINC Users' Guide procedure, written out step by step (independent of the code under test).

    1. odd positions counted from the right, as a number, times 2; 2. even positions from the right;
    3. the even digits written in front of the doubled number; 4. sum the digits; 5. distance to the
    next multiple of ten.
    """
    reversed_digits = number[::-1]
    odd = reversed_digits[0::2][::-1]
    even = reversed_digits[1::2][::-1]
    doubled = str(int(odd) * 2)
    combined = even + doubled
    total = sum(int(c) for c in combined)
    return (10 - total % 10) % 10


def test_every_public_concept_id_exists() -> None:
    concepts = load_concepts()
    missing = [cid for cid in PUBLIC_IDS if cid not in concepts]
    assert missing == []


def test_dictionary_is_a_concept_dictionary_with_lookup() -> None:
    concepts = load_concepts()
    assert isinstance(concepts, ConceptDictionary)
    assert len(concepts) == len(concepts.ids()) >= len(PUBLIC_IDS)
    assert concepts["pao2"].canonical_unit == "mmHg"
    assert concepts.by_loinc("2276-4") is concepts["ferritin"]
    assert concepts.by_loinc("3074-8") is None


@pytest.mark.parametrize(("concept_id", "codes"), sorted(DOMAIN_LOINC.items()))
def test_domain_loinc_codes_are_on_the_right_concept(concept_id: str, codes: list[str]) -> None:
    concept = load_concepts()[concept_id]
    for code in codes:
        assert code in concept.loinc
    assert concept.loinc[0] == codes[0]
    assert concept.code == codes[0]


def test_spo2_is_not_arterial_sao2() -> None:
    # domain.md D: SpO2 59408-5 (2708-6 is arterial SaO2).
    assert "2708-6" not in load_concepts()["spo2"].loinc


def test_mhla_dr_has_a_local_code_and_no_loinc() -> None:
    concepts = load_concepts()
    for cid in ("mhla_dr", "mhla_dr_percent"):
        concept = concepts[cid]
        assert concept.loinc == ()
        assert concept.local_code
        assert concept.code == concept.local_code
    assert concepts["mhla_dr"].local_code != concepts["mhla_dr_percent"].local_code


def test_every_dictionary_loinc_passes_the_mod10_check() -> None:
    codes = [(c.id, code) for c in load_concepts() for code in c.loinc]
    assert len(codes) >= 30
    for concept_id, code in codes:
        number, _, check = code.partition("-")
        assert reference_check_digit(number) == int(check), (concept_id, code)
        assert is_valid_loinc(code), (concept_id, code)


@pytest.mark.parametrize(
    ("number", "digit"),
    [
        ("3074", 2),
        ("2276", 4),
        ("777", 3),
        ("59408", 5),
        ("26881", 3),
        ("33959", 8),
        ("12345", 5),
        ("718", 7),
    ],
)
def test_check_digit_of_known_codes(number: str, digit: int) -> None:
    assert loinc_check_digit(number) == digit
    assert reference_check_digit(number) == digit


@pytest.mark.parametrize("number", [str(n) for n in range(1, 100_000, 997)])
def test_check_digit_agrees_with_the_users_guide_procedure(number: str) -> None:
    assert loinc_check_digit(number) == reference_check_digit(number)


@pytest.mark.parametrize("code", ["3074-8", "2276-5", "777-4", "2708-7", "59408-4", "1975-3"])
def test_known_bad_codes_fail(code: str) -> None:
    assert not is_valid_loinc(code)


@pytest.mark.parametrize("code", ["", "3074", "3074-", "-2", "30a4-2", "3074-22", "3074-x", "3074_2"])
def test_malformed_codes_fail(code: str) -> None:
    assert not is_valid_loinc(code)


def test_check_digit_rejects_non_digits() -> None:
    with pytest.raises(ValueError):
        loinc_check_digit("30a4")


def _raw(loinc: list[str]) -> dict:
    return {
        "concepts": {
            "tnf_alpha": {
                "description": "TNF",
                "category": "immune",
                "canonical_unit": "pg/mL",
                "units": {"pg/mL": "pg/mL"},
                "plausible": [0, 10],
                "loinc": loinc,
            }
        }
    }


def test_loader_rejects_a_bad_check_digit() -> None:
    with pytest.raises(ValueError, match="3074-8"):
        parse_dictionary(_raw(["3074-8"]))
    assert parse_dictionary(_raw(["3074-2"]))["tnf_alpha"].loinc == ("3074-2",)


def test_loader_rejects_an_empty_plausible_range_and_a_concept_without_code() -> None:
    raw = _raw(["3074-2"])
    raw["concepts"]["tnf_alpha"]["plausible"] = [10, 0]
    with pytest.raises(ValueError, match="plausible"):
        parse_dictionary(raw)
    raw = _raw([])
    with pytest.raises(ValueError, match="LOINC code or a local_code"):
        parse_dictionary(raw)


def test_every_concept_has_a_sane_plausible_range_and_code() -> None:
    for concept in load_concepts():
        low, high = concept.plausible
        assert low < high, concept.id
        assert concept.code, concept.id
        assert concept.canonical_unit, concept.id


def test_fio2_plausible_range_is_the_fraction() -> None:
    assert load_concepts()["fio2"].plausible == (0.21, 1.0)
    assert load_concepts()["fio2"].canonical_unit == "1"
