"""immunosep-2025 and the mHLA-DR monitoring protocol: every endotype, every unknown path, reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from immunostrat.concepts import observations_from_records
from immunostrat.protocols import (
    Classification,
    classify_all,
    classify_frame,
    classify_patient,
    cockcroft_gault,
    freshness,
    list_protocols,
    load_protocol,
    parse_protocol,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def _obs(*rows: tuple[str, float, str, float], patient: str = "p1") -> pl.DataFrame:
    """rows: (concept, value, unit, hours after T0)."""
    records = [
        {
            "patient_id": patient,
            "time": (T0 + timedelta(hours=h)).isoformat(),
            "concept": c,
            "value": v,
            "unit": u,
        }
        for c, v, u, h in rows
    ]
    return observations_from_records(records).observations


def _classify(
    *rows: tuple[str, float, str, float], at_hours: float | None = None, **patient: object
) -> Classification:
    protocol = load_protocol("immunosep-2025")
    at = None if at_hours is None else T0 + timedelta(hours=at_hours)
    info = {"patient_id": "p1", **patient} if patient else None
    return classify_patient(protocol, _obs(*rows), info, patient_id="p1", at=at)


def test_shipped_protocols_are_listed_with_source_and_version() -> None:
    ids = {p.id: p for p in list_protocols()}
    assert set(ids) == {"immunosep-2025", "mhla-dr-monitoring"}
    assert ids["immunosep-2025"].version == "1.0.0"
    assert "10.1001/jama.2025.24175" in ids["immunosep-2025"].source
    assert [r.id for r in ids["immunosep-2025"].rules] == ["mals", "immunoparalysis", "intermediate"]


@pytest.mark.parametrize(
    ("ferritin", "hla", "endotype", "therapy"),
    [
        (4420.01, 20000, "mals", "anakinra"),
        (4421, 3000, "mals", "anakinra"),  # both criteria: MALS takes precedence
        (4420, 4999, "immunoparalysis", "interferon_gamma"),  # ferritin at the cut-off: not MALS
        (4420, 5000, "intermediate", "none"),  # HLA-DR at 5,000 is not < 5,000
        (100, 4999.9, "immunoparalysis", "interferon_gamma"),
        (100, 15000, "intermediate", "none"),
    ],
)
def test_endotypes_on_both_sides_of_each_cutoff(
    ferritin: float, hla: float, endotype: str, therapy: str
) -> None:
    result = _classify(("ferritin", ferritin, "ng/mL", 0), ("mhla_dr", hla, "AB/C", 0.5))
    assert result.endotype == endotype
    assert result.therapy == therapy
    assert result.fired_rule == endotype


def test_mals_needs_no_hla_dr_but_others_do() -> None:
    assert _classify(("ferritin", 9000, "ug/L", 0)).endotype == "mals"
    low = _classify(("ferritin", 900, "ng/mL", 0))
    assert low.endotype == "unknown"
    missing = [r for r in low.reasons if r.outcome == "missing"]
    assert missing and missing[0].concept == "mhla_dr"
    assert any("mhla_dr" in w for w in low.warnings)


def test_unknown_when_ferritin_missing_even_if_hla_dr_is_low() -> None:
    result = _classify(("mhla_dr", 1000, "AB/C", 0))
    assert result.endotype == "unknown"
    assert result.fired_rule is None
    assert result.reasons[0].concept == "ferritin" and result.reasons[0].outcome == "missing"
    # The MALS rule is undecided, so no later rule may be tried (precedence).
    assert {r.rule for r in result.reasons} == {"mals"}


def test_stale_measurements_make_the_endotype_unknown() -> None:
    fresh = _classify(("ferritin", 900, "ng/mL", 0), ("mhla_dr", 1000, "AB/C", 0), at_hours=24)
    assert fresh.endotype == "immunoparalysis"
    stale = _classify(("ferritin", 900, "ng/mL", 0), ("mhla_dr", 1000, "AB/C", 0), at_hours=24.01)
    assert stale.endotype == "unknown"
    assert {r.outcome for r in stale.reasons} == {"stale"}
    stale_mals = _classify(("ferritin", 9000, "ng/mL", 0), at_hours=30)
    assert stale_mals.endotype == "unknown"


def test_stale_reason_names_the_age_at_the_decision_time() -> None:
    # values from 1 Jan 2020, decided on 2 Dec 2026: 6.92 years old
    protocol = load_protocol("immunosep-2025")
    then = datetime(2020, 1, 1, tzinfo=UTC)
    records = [
        {"patient_id": "p1", "time": then.isoformat(), "concept": c, "value": v, "unit": u}
        for c, v, u in (("ferritin", 900, "ng/mL"), ("mhla_dr", 1000, "AB/C"))
    ]
    obs = observations_from_records(records).observations
    result = classify_patient(protocol, obs, patient_id="p1", at=datetime(2026, 12, 2, 9, 15, tzinfo=UTC))
    assert result.endotype == "unknown" and result.therapy == "none"
    (ferritin,) = [r for r in result.reasons if r.concept == "ferritin"]
    assert ferritin.outcome == "stale"
    assert ferritin.note == (
        "measured 6.9 years before the decision time; the protocol accepts values up to 24 h old"
    )
    assert ferritin.age_hours == pytest.approx(
        (datetime(2026, 12, 2, 9, 15, tzinfo=UTC) - then).total_seconds() / 3600
    )
    assert any("6.9 years" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("age", "fresh", "words"),
    [
        (timedelta(minutes=25), True, "25 min"),
        (timedelta(hours=24), True, "24 h"),
        (timedelta(hours=24, seconds=36), False, "24 h"),
        (timedelta(hours=30), False, "30 h"),
        (timedelta(days=3, hours=12), False, "3.5 days"),
        (timedelta(days=800), False, "2.2 years"),
        (-timedelta(hours=2), False, "2 h after"),
    ],
)
def test_freshness_is_one_rule_with_a_readable_age(age: timedelta, fresh: bool, words: str) -> None:
    result = freshness(T0 - age, T0, 24)
    assert result.fresh is fresh
    assert words in result.note() and "up to 24 h old" in result.note()
    assert result.age_hours == pytest.approx(age.total_seconds() / 3600)


def test_values_after_the_decision_time_are_ignored() -> None:
    result = _classify(
        ("ferritin", 900, "ng/mL", 0),
        ("mhla_dr", 1000, "AB/C", 0),
        ("ferritin", 9000, "ng/mL", 5),
        at_hours=1,
    )
    assert result.endotype == "immunoparalysis"
    later = _classify(
        ("ferritin", 900, "ng/mL", 0), ("mhla_dr", 1000, "AB/C", 0), ("ferritin", 9000, "ng/mL", 5)
    )
    assert later.endotype == "mals"


def test_reasons_name_rule_value_unit_time_threshold_and_comparison() -> None:
    result = _classify(("ferritin", 2000 * 2.247, "pmol/L", 0), ("mhla_dr", 3000, "molecules/cell", 1))
    assert result.endotype == "immunoparalysis"
    by_key = {(r.rule, r.concept): r for r in result.reasons}
    mals = by_key[("mals", "ferritin")]
    assert (mals.outcome, mals.comparison, mals.threshold, mals.unit) == ("not met", ">", 4420, "ng/mL")
    assert mals.value == pytest.approx(2000)
    assert mals.time == T0
    hla = by_key[("immunoparalysis", "mhla_dr")]
    assert (hla.outcome, hla.value, hla.unit, hla.time) == ("met", 3000, "AB/C", T0 + timedelta(hours=1))
    assert "ferritin 2000 ng/mL" in result.reasons_text()


def test_therapy_doses_follow_the_protocol() -> None:
    mals = _classify(("ferritin", 9000, "ng/mL", 0))
    assert mals.dose is not None
    assert (mals.dose.drug, mals.dose.amount, mals.dose.unit, mals.dose.route) == (
        "anakinra",
        200,
        "mg",
        "IV",
    )
    assert (mals.dose.interval_hours, mals.dose.duration_days) == (8, 15)
    ip = _classify(("ferritin", 900, "ng/mL", 0), ("mhla_dr", 1000, "AB/C", 0))
    assert ip.dose is not None
    assert (ip.dose.drug, ip.dose.amount, ip.dose.unit, ip.dose.route, ip.dose.interval_hours) == (
        "interferon_gamma",
        100,
        "ug",
        "SC",
        48,
    )
    assert any("mesenchymal" in w for w in ip.warnings)
    inter = _classify(("ferritin", 900, "ng/mL", 0), ("mhla_dr", 9000, "AB/C", 0))
    assert inter.dose is None and inter.therapy == "none"


def test_cockcroft_gault() -> None:
    # (140 - 60) * 72 / (72 * 1.0) = 80; female x 0.85
    assert cockcroft_gault(age_years=60, weight_kg=72, female=False, creatinine_mg_dl=1.0) == pytest.approx(
        80.0
    )
    assert cockcroft_gault(age_years=60, weight_kg=72, female=True, creatinine_mg_dl=1.0) == pytest.approx(
        68.0
    )
    with pytest.raises(ValueError, match="weight_kg"):
        cockcroft_gault(age_years=60, weight_kg=None, female=True, creatinine_mg_dl=1.0)


@pytest.mark.parametrize(("creatinine", "adjusted"), [(2.4, True), (1.0, False)])
def test_anakinra_renal_adjustment_below_30_ml_min(creatinine: float, adjusted: bool) -> None:
    # man, 80 y, 60 kg: CrCl = 60*60/(72*creatinine): 2.4 -> 20.8 mL/min; 1.0 -> 50 mL/min
    result = _classify(
        ("ferritin", 9000, "ng/mL", 0), ("creatinine", creatinine, "mg/dL", 0), age=80, weight_kg=60, sex="M"
    )
    assert result.dose is not None
    assert result.dose.renal_adjusted is adjusted
    assert result.dose.renal_check == ("adjusted" if adjusted else "not_needed")
    # The Kineret label's "every other day" is one dose every 48 h, not twice the 8-h interval.
    assert result.dose.interval_hours == (48 if adjusted else 8)
    assert result.dose.standard_interval_hours == 8
    assert any("clinician review" in w for w in result.warnings) is adjusted
    if adjusted:
        assert "every 48 h" in result.dose.text and "every other day" in result.dose.text
        (renal_warning,) = [w for w in result.warnings if "creatinine clearance" in w]
        assert "every 48 h (every other day)" in renal_warning and "21 mL/min" in renal_warning
        assert "every 16 h" not in result.dose.text + renal_warning


def test_dose_text_and_warning_agree_for_a_70_year_old_woman_with_creatinine_3_6() -> None:
    # CrCl = (140 - 70) x 70 / (72 x 3.6) x 0.85 = 16.1 mL/min (Cockcroft-Gault)
    result = _classify(
        ("ferritin", 9000, "ng/mL", 0), ("creatinine", 3.6, "mg/dL", 0), age=70, weight_kg=70, sex="F"
    )
    assert result.dose is not None and result.dose.creatinine_clearance_ml_min == pytest.approx(
        16.1, abs=0.05
    )
    assert result.dose.text == (
        "anakinra 200 mg IV every 48 h for 15 days (renally adjusted, every other day: "
        "creatinine clearance 16 mL/min < 30; clinician review)"
    )


def test_exactly_30_ml_min_is_not_adjusted() -> None:
    # CrCl = (140-50)*80/(72*c) = 30 -> c = 3.333...
    result = _classify(
        ("ferritin", 9000, "ng/mL", 0), ("creatinine", 7200 / 2160, "mg/dL", 0), age=50, weight_kg=80, sex="M"
    )
    assert result.dose is not None and result.dose.creatinine_clearance_ml_min == pytest.approx(
        30.0, abs=0.05
    )
    assert not result.dose.renal_adjusted


def test_renal_check_reports_missing_inputs_instead_of_guessing() -> None:
    result = _classify(("ferritin", 9000, "ng/mL", 0))
    assert result.dose is not None and not result.dose.renal_adjusted
    assert result.dose.renal_check == "not_computable"
    assert result.dose.renal_missing == ["age", "weight_kg", "sex", "creatinine"]
    assert result.dose.interval_hours == 8
    assert any("renal adjustment not checked" in w and "creatinine" in w for w in result.warnings)
    only_weight = _classify(("ferritin", 9000, "ng/mL", 0), ("creatinine", 3.6, "mg/dL", 0), age=70, sex="F")
    assert only_weight.dose is not None and only_weight.dose.renal_missing == ["weight_kg"]
    (warning,) = [w for w in only_weight.warnings if "renal adjustment not checked" in w]
    assert "measure or record body weight" in warning and "every other day" in warning


def test_interferon_gamma_has_no_renal_rule() -> None:
    result = _classify(("ferritin", 900, "ng/mL", 0), ("mhla_dr", 1000, "AB/C", 0))
    assert result.dose is not None and result.dose.renal_check == "not_applicable"


def test_classify_all_and_classify_frame_agree() -> None:
    protocol = load_protocol("immunosep-2025")
    cases = {"a": (9000, None), "b": (4420, 4999), "c": (3000, 6000), "d": (None, 1000), "e": (3000, None)}
    records = []
    for pid, (fer, hla) in cases.items():
        if fer is not None:
            records.append(
                {
                    "patient_id": pid,
                    "time": T0.isoformat(),
                    "concept": "ferritin",
                    "value": fer,
                    "unit": "ng/mL",
                }
            )
        if hla is not None:
            records.append(
                {
                    "patient_id": pid,
                    "time": T0.isoformat(),
                    "concept": "mhla_dr",
                    "value": hla,
                    "unit": "AB/C",
                }
            )
    obs = observations_from_records(records).observations
    per_patient = {c.patient_id: c.endotype for c in classify_all(protocol, obs)}
    wide = pl.DataFrame(
        {
            "patient_id": list(cases),
            "ferritin": [v[0] for v in cases.values()],
            "mhla_dr": [v[1] for v in cases.values()],
        },
        schema_overrides={"ferritin": pl.Float64, "mhla_dr": pl.Float64},
    )
    framed = classify_frame(protocol, wide)
    assert dict(zip(framed["patient_id"], framed["endotype"], strict=True)) == per_patient
    assert per_patient == {
        "a": "mals",
        "b": "immunoparalysis",
        "c": "intermediate",
        "d": "unknown",
        "e": "unknown",
    }


def test_monitoring_protocol_grades_and_consecutive_days() -> None:
    monitoring = load_protocol("mhla-dr-monitoring")

    def grade(*rows: tuple[float, float]) -> str:
        obs = _obs(*[("mhla_dr", v, "AB/C", h) for v, h in rows])
        return classify_patient(monitoring, obs, patient_id="p1").endotype

    assert grade((16000, 0)) == "immunocompetent"
    assert grade((15000, 0)) == "immunocompetent"
    assert grade((14999, 0)) == "reduced"
    assert grade((8000, 0)) == "reduced"
    assert grade((7999, 0)) == "low"
    assert grade((7000, 0), (6000, 24)) == "immunosuppression"  # two consecutive days < 8,000
    assert grade((9000, 0), (6000, 24)) == "low"
    assert grade((7000, 0), (6000, 2)) == "low"  # 2 h apart is not two days
    assert grade((7000, 0), (6000, 48)) == "low"  # a gap of 2 days is not consecutive


def test_protocol_files_are_validated() -> None:
    raw = load_protocol("immunosep-2025").model_dump()
    raw["rules"][0]["all"][0]["unit"] = "ug/L"
    with pytest.raises(ValueError, match="canonical unit"):
        parse_protocol(raw)
    raw = load_protocol("immunosep-2025").model_dump()
    raw["rules"][1]["endotype"] = "hyperinflammation"
    with pytest.raises(ValueError, match="undeclared endotype"):
        parse_protocol(raw)
    raw = load_protocol("immunosep-2025").model_dump()
    raw["therapies"]["mals"]["citations"] = ["domain_md"]
    with pytest.raises(ValueError, match="domain_md"):
        parse_protocol(raw)


def test_user_visible_protocol_text_cites_published_sources_only() -> None:
    for protocol in list_protocols():
        shown = [protocol.source, *protocol.cautions.values()]
        shown += [c.label for c in protocol.citations.values()]
        shown += [r.note or "" for r in protocol.therapies.values()]
        assert not any(".md" in text for text in shown), protocol.id
    immunosep = load_protocol("immunosep-2025")
    urls = {c.url for c in immunosep.citations.values()}
    assert "https://doi.org/10.1001/jama.2025.24175" in urls
    assert "https://doi.org/10.1016/j.xcrm.2022.100817" in urls
