"""The per-stay plan over whole ICU databases (Ibis on DuckDB or Spark to hourly buckets, Polars after):
hourly grid, windows, scores, Sepsis-3 onset, endotype timeline; synthetic scale data for benchmarks.
"""

from immunostrat.cohort.agreement import format_agreement, label_agreement
from immunostrat.cohort.engine import (
    ENGINES,
    TABLES,
    CohortResult,
    ParquetInput,
    Progress,
    build_cohort,
    connect,
    spark_session,
    write_tables,
)
from immunostrat.cohort.summary import CohortSummary, cohort_summary, format_summary
from immunostrat.cohort.synthetic import SyntheticInfo, stays_for_rows, synthetic_input, write_synthetic

__all__ = [
    "ENGINES",
    "TABLES",
    "CohortResult",
    "CohortSummary",
    "ParquetInput",
    "Progress",
    "SyntheticInfo",
    "build_cohort",
    "cohort_summary",
    "connect",
    "format_agreement",
    "format_summary",
    "label_agreement",
    "spark_session",
    "stays_for_rows",
    "synthetic_input",
    "write_synthetic",
    "write_tables",
]
