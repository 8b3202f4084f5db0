"""The per-stay plan over whole ICU databases (Ibis on DuckDB or Spark): hourly grid, windows,
scores, Sepsis-3 onset and the immune-endotype timeline.
"""
