"""The bedside page's reading and timeline without a browser: pasted rows into the API's
classification with errors naming the pasted line, FHIR resources keeping their ids, the study drug
from a MedicationAdministration, and an SVG the pages' CSP allows with a hover title per point and
the protocol's own thresholds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from immunostrat.errors import InputError
from immunostrat.protocols import load_protocol
from immunostrat.trial import eligibility
from immunostrat.web import bedside

NOW = datetime.now(UTC)
PROTOCOL = eligibility.load(bedside.PROTOCOL_ID)


def _at(hours: float) -> str:
    return (NOW - timedelta(hours=hours)).isoformat()


def _paste(*rows: str) -> bedside.Gathered:
    out = bedside.Gathered()
    bedside.gather_paste("\n".join(rows), out, PROTOCOL)
    return out


def _error(out: bedside.Gathered) -> str:
    with pytest.raises(InputError) as caught:
        bedside.decide(None, out, NOW, with_timeline=True)  # type: ignore[arg-type]
    return bedside._explain(caught.value, out)


def test_pasted_rows_are_classified_and_drawn_with_their_sources() -> None:
    out = _paste(
        f"{_at(30)},ferritin,6,mg/L",
        f"{_at(30)};lactate;3;mmol/L".replace(";", ","),
        f"{_at(3)},Ferritin,2000,ng/mL",  # an alias
        f"{_at(3)},HLA-DR,3200,AB/C",
    )
    assert out.sources == ["pasted line 1", "pasted line 2", "pasted line 3", "pasted line 4"]
    context = bedside.decide(None, out, NOW, with_timeline=True)  # type: ignore[arg-type]
    assert context["result"]["endotype"] == "immunoparalysis"
    svg = context["timeline"].svg
    assert "style=" not in svg and "<style" not in svg and "<svg " in svg
    points = re.findall(r'<g class="point"><title>([^<]*)</title><use ', svg)
    assert len(points) == 4, points  # two ferritin, one mHLA-DR, one lactate: a title on each marker
    assert any("Ferritin: 6000 ng/mL (entered 6 mg/L)" in p and "pasted line 1" in p for p in points)
    cut = {c.concept: c.threshold for rule in load_protocol(bedside.PROTOCOL_ID).rules for c in rule.all}
    titles = re.findall(r"<title>([^<]*threshold[^<]*)</title>", svg)
    assert [t.split(":")[1].split("(")[0].strip() for t in titles] == [
        f"ferritin {cut['ferritin']:g} ng/mL",
        f"mhla_dr {cut['mhla_dr']:g} AB/C",
    ]


def test_one_time_only_draws_no_timeline() -> None:
    out = _paste(f"{_at(1)},ferritin,900,ng/mL", f"{_at(1)},mhla_dr,9000,AB/C")
    context = bedside.decide(None, out, NOW, with_timeline=True)  # type: ignore[arg-type]
    assert context["result"]["endotype"] == "intermediate" and context["timeline"] is None


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (("time,concept,value,unit", f"{_at(2)},ferritin,900,ng/mL", f"{_at(1)},ferritin,lots,ng/mL"),
         "pasted line 3, field 'value': value is not a number (got 'lots')"),
        ((f"{_at(2)},ferritin,900,ng/mL", f"{_at(1)},ferritin,9,ng/furlong"), "pasted line 2, field 'unit'"),
        ((f"{_at(2)},ferritn,900,ng/mL",), "pasted line 1, field 'concept'"),
        ((f"{_at(2)},mhla_dr,3.2,AB/C",), "pasted line 1, field 'value'"),  # thousands of AB/C: a slip
        (("06/01/2025 08:00,ferritin,900,ng/mL",), "pasted line 1, field 'time'"),
    ],
)  # fmt: skip
def test_a_bad_pasted_row_is_named(rows: tuple[str, ...], expected: str) -> None:
    assert expected in _error(_paste(*rows))


def test_a_pasted_row_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(InputError, match="pasted line 2"):
        _paste(f"{_at(2)},ferritin,900,ng/mL", f"{_at(1)},ferritin,3,2,ng/mL")
    with pytest.raises(InputError, match="unknown column"):
        _paste("time,concept,value,units", f"{_at(1)},ferritin,900,ng/mL")
    with pytest.raises(InputError, match="one patient at a time"):
        _paste(
            "patient_id,time,concept,value,unit",
            f"a,{_at(1)},ferritin,9,ng/mL",
            f"b,{_at(1)},ferritin,9,ng/mL",
        )


def _bundle() -> dict[str, Any]:
    def obs(oid: str, value: Any, unit: str, hours: float) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
            "effectiveDateTime": _at(hours),
            "valueQuantity": {"value": value, "unit": unit},
        }

    given = {
        "resourceType": "MedicationAdministration",
        "id": "ma",
        "status": "completed",
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "L04AC03"}]},
        "effectivePeriod": {"start": _at(20), "end": _at(19)},
    }
    other = {**given, "id": "other", "medicationCodeableConcept": {"text": "paracetamol"}}
    entries = [{"resourceType": "Patient", "id": "p"}, obs("o1", 9000, "ng/mL", 30), obs("o2", 4, "mg/L", 5)]
    return {"resourceType": "Bundle", "entry": [{"resource": r} for r in [*entries, given, other]]}


def test_fhir_records_keep_their_resource_and_the_study_drug_is_shaded() -> None:
    out = bedside.Gathered()
    bedside.gather_bundle(_bundle(), out, PROTOCOL)
    assert out.sources == ["FHIR Observation/o1", "FHIR Observation/o2"]
    (drug,) = out.drugs  # by its ATC code; paracetamol is noted, not drawn
    assert drug.drug == "anakinra" and drug.end - drug.start == timedelta(hours=1)
    assert any("MedicationAdministration/other" in n for n in out.notes)
    svg = bedside.decide(None, out, NOW, with_timeline=True)["timeline"].svg  # type: ignore[arg-type]
    assert "source: FHIR MedicationAdministration/ma" in svg


def test_a_fhir_value_error_names_the_resource() -> None:
    bundle = _bundle()
    bundle["entry"][2]["resource"]["valueQuantity"]["unit"] = "stones"
    out = bedside.Gathered()
    bedside.gather_bundle(bundle, out, PROTOCOL)
    assert "FHIR Observation/o2, field 'unit'" in _error(out)
