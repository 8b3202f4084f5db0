"""Analysis plans (data), statistics, tables, figures, reports and published results of
the ImmunoSep, PROVIDE and SLE trials; sample size for the next trial.

Public entry points: ``validate_export`` (the trial export schema), ``run_analysis`` /
``analyze`` (plan -> results, HTML/PDF/JSON report), ``sample_size_*``, ``synthetic_trial``.
Heavy modules (statsmodels, lifelines, matplotlib, Playwright) load on first use.
"""

from __future__ import annotations

from typing import Any

from immunostrat.analysis.schema import SCHEMA_VERSION, TrialExport, validate_export

__all__ = [
    "SCHEMA_VERSION",
    "TrialExport",
    "analyze",
    "list_published",
    "load_plan",
    "reproduce",
    "run_analysis",
    "sample_size_repeated_measures",
    "sample_size_time_to_event",
    "sample_size_two_proportions",
    "shipped_plans",
    "synthetic_sle_trial",
    "synthetic_trial",
    "validate_export",
    "write_synthetic_trial",
]

_LAZY = {
    "analyze": "immunostrat.analysis.report",
    "run_analysis": "immunostrat.analysis.runner",
    "load_plan": "immunostrat.analysis.plan",
    "shipped_plans": "immunostrat.analysis.plan",
    "list_published": "immunostrat.analysis.published",
    "reproduce": "immunostrat.analysis.published",
    "sample_size_two_proportions": "immunostrat.analysis.samplesize",
    "sample_size_time_to_event": "immunostrat.analysis.samplesize",
    "sample_size_repeated_measures": "immunostrat.analysis.samplesize",
    "synthetic_trial": "immunostrat.analysis.synthetic",
    "synthetic_sle_trial": "immunostrat.analysis.synthetic",
    "write_synthetic_trial": "immunostrat.analysis.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'immunostrat.analysis' has no attribute {name!r}")
