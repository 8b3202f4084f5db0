"""Credibility of the in-silico trials: the plan as data (context of use, comparators, training or held
out, pre-registered criterion), calibration of the free therapy strengths and validation on held-out trials.
"""

from .plan import Comparator, CredibilityPlan, load_plan, parse_plan
from .validate import (
    OutcomeStore,
    Posterior,
    ValidationReport,
    calibrate,
    population_weights,
    simulate_arm,
    validate,
    validation_frame,
)

__all__ = [
    "Comparator",
    "CredibilityPlan",
    "OutcomeStore",
    "Posterior",
    "ValidationReport",
    "calibrate",
    "load_plan",
    "parse_plan",
    "population_weights",
    "simulate_arm",
    "validate",
    "validation_frame",
]
