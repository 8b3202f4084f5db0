"""Clinical scores (SOFA, qSOFA, Sepsis-3, HScore, MEX-SLEDAI, SLEDAI-2K) as band tables (data)
plus small pure column expressions that run unchanged on polars, DuckDB, Ibis and Spark.
"""

from immunostrat.scores.definitions import SCORE_FILES, load_definition
from immunostrat.scores.expressions import band_points, compare, ensure_columns
from immunostrat.scores.sepsis3 import sepsis3, septic_shock, suspected_infection
from immunostrat.scores.simple import hscore, mex_sledai, qsofa, sledai_2k
from immunostrat.scores.sofa import (
    SOFA_COMPONENTS,
    SOFA_INPUTS,
    SOFA_OUTPUTS,
    SOFA_VARIANTS,
    sofa,
    sofa_definition,
    sofa_expressions,
    sofa_inputs,
    sofa_labels,
)
from immunostrat.scores.windows import score_windows, windows_at, windows_every, worst_values

SCORES = ("sofa", "sofa-2", "qsofa", "hscore", "mex-sledai", "sledai-2k")

__all__ = [
    "SCORES",
    "SCORE_FILES",
    "SOFA_COMPONENTS",
    "SOFA_INPUTS",
    "SOFA_OUTPUTS",
    "SOFA_VARIANTS",
    "band_points",
    "compare",
    "ensure_columns",
    "hscore",
    "load_definition",
    "mex_sledai",
    "qsofa",
    "score_windows",
    "sepsis3",
    "septic_shock",
    "sledai_2k",
    "sofa",
    "sofa_definition",
    "sofa_expressions",
    "sofa_inputs",
    "sofa_labels",
    "suspected_infection",
    "windows_at",
    "windows_every",
    "worst_values",
]
