"""Cards for the patient-view service: the endotype, therapy and dose with its renal facts, every
reason with value, unit, time (in the site's time zone) and age, the published sources; a
suggestion holding a draft FHIR R4 MedicationRequest; override reasons; a link to the patient's page
when the web app's URL is configured."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import yaml

from immunostrat.protocols import Citation, Protocol, describe_age
from immunostrat.protocols.renal import INPUT_WORDS
from immunostrat.trial import eligibility

UCUM = "http://unitsofmeasure.org"
OVERRIDE_SYSTEM = "urn:immunostrat:cds:override-reason"
# Why a clinician may not follow the card; reported back through the feedback endpoint.
OVERRIDE_REASONS = (
    ("results-not-current", "Results do not reflect the patient's current state"),
    ("contraindicated", "Contraindication or intolerance"),
    ("already-treated", "Already receiving or recently received this therapy"),
    ("goals-of-care", "Not in line with the patient's goals of care"),
    ("clinical-judgement", "Other clinical judgement"),
)


@cache
def anti_inflammatory_terms() -> tuple[str, ...]:
    text = resources.files("immunostrat.api").joinpath("anti_inflammatory.yaml").read_text(encoding="utf-8")
    return tuple(str(t).lower() for t in yaml.safe_load(text)["terms"])


def local_time(value: datetime | str | None, zone: ZoneInfo) -> str:
    """``02 Dec 2026 09:15 CET``: a time as the site reads it."""
    if value is None:
        return "no time"
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(zone).strftime("%d %b %Y %H:%M %Z")


def _source(citation: Citation) -> dict[str, Any]:
    return {"label": citation.label, "url": citation.url}


def _reason_line(reason: dict[str, Any], zone: ZoneInfo) -> str:
    value = "no value" if reason["value"] is None else f"{reason['value']:g} {reason['unit']}"
    parts = [f"{reason['concept']} {value}"]
    if reason.get("time"):
        age = reason.get("age_hours")
        aged = f", {describe_age_hours(age)} before the decision" if age is not None else ""
        parts.append(f"measured {local_time(reason['time'], zone)}{aged}")
    test = f"{reason['comparison']} {reason['threshold']:g} {reason['unit']}"
    note = f" ({reason['note']})" if reason.get("note") and reason["outcome"] != "stale" else ""
    stale = f": {reason['note']}" if reason["outcome"] == "stale" and reason.get("note") else ""
    return f"- {reason['rule']}: {'; '.join(parts)}; {test} -> **{reason['outcome']}**{stale}{note}"


def describe_age_hours(hours: float) -> str:
    return describe_age(timedelta(hours=hours))


def medication_request(
    protocol: Protocol, c: eligibility.Classification, patient_id: str, decided_at: datetime
) -> dict[str, Any] | None:
    """The recommended therapy and dose as a draft FHIR R4 MedicationRequest (status draft, intent
    proposal): for the clinician to review and sign, never an order by itself."""
    dose = c.dose_detail
    if dose is None:
        return None
    regimen = protocol.therapies[c.endotype]
    timing: dict[str, Any] = {}
    if dose.get("interval_hours") is not None:
        timing = {"frequency": 1, "period": dose["interval_hours"], "periodUnit": "h"}
        if dose.get("duration_days") is not None:
            timing["boundsDuration"] = {
                "value": dose["duration_days"],
                "unit": "d",
                "system": UCUM,
                "code": "d",
            }
    instruction: dict[str, Any] = {"text": c.dose, "timing": {"repeat": timing} if timing else {}}
    if regimen.route:
        route: dict[str, Any] = {"text": regimen.route}
        if regimen.route_codings:
            route["coding"] = [r.model_dump() for r in regimen.route_codings]
        instruction["route"] = route
    if dose.get("amount") is not None:
        instruction["doseAndRate"] = [
            {
                "doseQuantity": {
                    "value": dose["amount"],
                    "unit": dose["unit"],
                    "system": UCUM,
                    "code": dose["unit"],
                }
            }
        ]
    medication: dict[str, Any] = {"text": regimen.drug.replace("_", "-")}
    if regimen.codings:
        medication["coding"] = [code.model_dump() for code in regimen.codings]
    return {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": decided_at.isoformat(),
        "medicationCodeableConcept": medication,
        "dosageInstruction": [instruction],
        "note": [{"text": f"Proposed by {protocol.label} for endotype {c.endotype}: clinician review."}],
    }


def _renal_line(dose: dict[str, Any] | None) -> str:
    if not dose or dose.get("renal_check") in (None, "not_applicable"):
        return ""
    check = dose["renal_check"]
    if check == "not_computable":
        words = ", ".join(INPUT_WORDS.get(m, m) for m in dose.get("renal_missing") or [])
        return f"\n\n**Renal dosing not checked:** measure or record {words}."
    crcl = dose.get("creatinine_clearance_ml_min")
    limit = dose.get("renal_threshold_ml_min")
    if check == "adjusted":
        usual = dose["standard_interval_hours"]
        return (
            f"\n\n**Renally adjusted:** creatinine clearance {crcl:g} mL/min (Cockcroft-Gault) < {limit:g} "
            f"mL/min: every {dose['interval_hours']:g} h instead of every {usual:g} h."
        )
    return f"\n\n**Renal function:** creatinine clearance {crcl:g} mL/min (Cockcroft-Gault), no adjustment."


def endotype_cards(
    protocol: Protocol,
    c: eligibility.Classification,
    *,
    patient_id: str,
    decided_at: datetime,
    zone: ZoneInfo,
    medications: list[dict[str, str]],
    patient_page_url: str | None,
) -> list[dict[str, Any]]:
    dose = c.dose_detail
    therapy = c.dose or ("no biomarker-guided immunotherapy" if c.therapy == "none" else c.therapy)
    undecided = [r for r in c.reasons if r["outcome"] in ("missing", "stale")]
    renal_check = (dose or {}).get("renal_check")
    warn = (c.endotype == "unknown" and bool(undecided)) or renal_check in ("adjusted", "not_computable")
    reasons = "\n".join(_reason_line(r, zone) for r in c.reasons) or "- no rule decided"
    warnings = "".join(f"\n\n**Warning:** {w}" for w in c.warnings)
    regimen = protocol.therapies[c.endotype]
    cited = protocol.cited(*protocol.source_citations, *regimen.citations)
    if (
        regimen.renal_adjustment is not None
        and regimen.renal_adjustment.citation
        and renal_check
        in (
            "adjusted",
            "not_computable",
        )
    ):
        cited += protocol.cited(regimen.renal_adjustment.citation)
    sources = "\n".join(f"- [{s.label}]({s.url})" for s in cited)
    summary = f"Immune endotype: {c.endotype}. Therapy: {therapy}"
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary if len(summary) <= 140 else summary[:139] + "…",
        "indicator": "warning" if warn else "info",
        "detail": (
            f"**Endotype:** {c.endotype} ({protocol.label}, decided {local_time(decided_at, zone)})\n\n"
            f"**Recommended therapy:** {therapy}{_renal_line(dose)}\n\n**Reasons:**\n{reasons}{warnings}"
            f"\n\n**Sources:**\n{sources}"
        ),
        "source": _source(cited[0]) if cited else {"label": protocol.name},
    }
    request = medication_request(protocol, c, patient_id, decided_at)
    if request is not None:
        card["suggestions"] = [
            {
                "label": f"Propose {c.dose}"[:140],
                "uuid": str(uuid.uuid4()),
                "isRecommended": True,
                "actions": [{"type": "create", "description": f"Draft order: {c.dose}", "resource": request}],
            }
        ]
        card["selectionBehavior"] = "at-most-one"
        card["overrideReasons"] = [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display}
            for code, display in OVERRIDE_REASONS
        ]
    if patient_page_url:
        card["links"] = [
            {
                "label": "Patient's immune state in immunostrat",
                "url": patient_page_url.format(patient_id=quote(patient_id, safe="")),
                "type": "absolute",
            }
        ]
    cards = [card]
    if c.endotype == "immunoparalysis":
        terms = anti_inflammatory_terms()
        conflicting = [m for m in medications if any(t in m["search"] for t in terms)]
        if conflicting:
            names = ", ".join(sorted({m["name"] for m in conflicting}))
            statuses = ", ".join(sorted({m["status"] for m in conflicting}))
            caution = protocol.cautions.get("immunoparalysis", "")
            caution_sources = protocol.cited(*protocol.caution_citations.get("immunoparalysis", ()))
            summary = f"Anti-inflammatory therapy considered for an immunoparalysed patient: {names}"
            detail = (
                f"{names} ({statuses}) while the patient is immunoparalysed by {protocol.label}. {caution}"
            )
            cards.append(
                {
                    "uuid": str(uuid.uuid4()),
                    "summary": summary[:140],
                    "indicator": "warning",
                    "detail": detail,
                    "source": _source(caution_sources[0]) if caution_sources else {"label": protocol.name},
                    "overrideReasons": card.get("overrideReasons", []),
                }
            )
    return cards
