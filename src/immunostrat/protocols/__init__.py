"""Versioned immune-state protocols (files): endotype rules with reasons, therapy and dose,
renal adjustment; the engine that applies them to a patient or to a whole frame.
"""

from immunostrat.protocols.engine import classify_all, classify_frame, classify_patient, endotype_expression
from immunostrat.protocols.freshness import Freshness, describe_age, freshness
from immunostrat.protocols.model import (
    PROTOCOL_FILES,
    Citation,
    Classification,
    Condition,
    Dose,
    Protocol,
    Reason,
    Regimen,
    Rule,
    list_protocols,
    load_protocol,
    parse_protocol,
)
from immunostrat.protocols.renal import cockcroft_gault

__all__ = [
    "PROTOCOL_FILES",
    "Citation",
    "Classification",
    "Condition",
    "Dose",
    "Freshness",
    "Protocol",
    "Reason",
    "Regimen",
    "Rule",
    "classify_all",
    "classify_frame",
    "classify_patient",
    "cockcroft_gault",
    "describe_age",
    "endotype_expression",
    "freshness",
    "list_protocols",
    "load_protocol",
    "parse_protocol",
]
