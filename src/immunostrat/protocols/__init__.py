"""Versioned immune-state protocols (files): endotype rules with reasons, therapy and dose,
renal adjustment; the engine that applies them to a patient or to a whole frame.
"""

from immunostrat.protocols.engine import classify_all, classify_frame, classify_patient, endotype_expression
from immunostrat.protocols.model import (
    PROTOCOL_FILES,
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
    "Classification",
    "Condition",
    "Dose",
    "Protocol",
    "Reason",
    "Regimen",
    "Rule",
    "classify_all",
    "classify_frame",
    "classify_patient",
    "cockcroft_gault",
    "endotype_expression",
    "list_protocols",
    "load_protocol",
    "parse_protocol",
]
