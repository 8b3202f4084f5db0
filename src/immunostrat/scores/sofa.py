"""SOFA (Vincent 1996) as column expressions over the worst values of a window.

Input columns (canonical units, any subset; absent ones count as missing): ``pao2_fio2_ratio``
(mmHg), ``mechanical_ventilation`` (0/1), ``platelets`` (10^9/L), ``bilirubin`` (mg/dL), ``map``
(mmHg), ``dopamine_rate``, ``dobutamine_rate``, ``epinephrine_rate``, ``norepinephrine_rate``
(ug/kg/min, given for >= 1 h), ``gcs``, ``creatinine`` (mg/dL), ``urine_output_24h`` (mL/day).
Choosing the worst value in a window is the caller's job (bedside: ``scores.windows``; cohort: a
RANGE window). Band table: ``definitions/sofa-1996.yaml``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import narwhals.stable.v2 as nw

from immunostrat.scores.definitions import load_definition
from immunostrat.scores.expressions import as_narwhals, band_points, compare, ensure_columns, missing_report

FrameT = TypeVar("FrameT")

SOFA_COMPONENTS = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")
SOFA_INPUTS = (
    "pao2_fio2_ratio",
    "mechanical_ventilation",
    "platelets",
    "bilirubin",
    "map",
    "dopamine_rate",
    "dobutamine_rate",
    "epinephrine_rate",
    "norepinephrine_rate",
    "gcs",
    "creatinine",
    "urine_output_24h",
)
SOFA_OUTPUTS = (
    *(f"sofa_{c}" for c in SOFA_COMPONENTS),
    "sofa_total",
    "sofa_missing",
    "sofa_missing_components",
    "sofa_variant",
)


def sofa_expressions() -> list[nw.Expr]:
    """The SOFA output columns as narwhals expressions over the input columns."""
    spec = load_definition("sofa")
    comps: dict[str, Any] = spec["components"]
    points: dict[str, nw.Expr] = {}
    missing: dict[str, nw.Expr] = {}

    resp = comps["respiration"]
    vent = nw.col("mechanical_ventilation").fill_null(0) >= 1
    raw = band_points(
        nw.col(resp["input"]), resp["bands"], {"mechanical_ventilation": nw.col("mechanical_ventilation")}
    )
    cap = int(resp["cap_without_requirement"])
    points["respiration"] = nw.when(~vent & (raw > cap)).then(nw.lit(cap)).otherwise(raw)
    missing["respiration"] = nw.col(resp["input"]).is_null()

    for name in ("coagulation", "liver", "cns"):
        points[name] = band_points(nw.col(comps[name]["input"]), comps[name]["bands"])
        missing[name] = nw.col(comps[name]["input"]).is_null()

    cv = comps["cardiovascular"]
    map_points = band_points(nw.col(cv["input"]), cv["bands"]).fill_null(0)
    drug_points = [
        nw.when(compare(nw.col(d["input"]).fill_null(0), d["op"], d["threshold"]))
        .then(nw.lit(d["points"]))
        .otherwise(0)
        for d in cv["drugs"]
    ]
    drug_inputs = sorted({d["input"] for d in cv["drugs"]})
    points["cardiovascular"] = nw.max_horizontal(map_points, *drug_points)
    missing["cardiovascular"] = nw.col(cv["input"]).is_null() & nw.all_horizontal(
        *[nw.col(d).is_null() for d in drug_inputs], ignore_nulls=False
    )

    renal = comps["renal"]
    creat = band_points(nw.col(renal["input"]), renal["bands"]).fill_null(0)
    urine = band_points(nw.col(renal["also"]["input"]), renal["also"]["bands"]).fill_null(0)
    points["renal"] = nw.max_horizontal(creat, urine)
    missing["renal"] = nw.col(renal["input"]).is_null() & nw.col(renal["also"]["input"]).is_null()

    outputs = [points[c].fill_null(0).cast(nw.Int64()).alias(f"sofa_{c}") for c in SOFA_COMPONENTS]
    total = nw.sum_horizontal(*[points[c].fill_null(0) for c in SOFA_COMPONENTS]).cast(nw.Int64())
    return [
        *outputs,
        total.alias("sofa_total"),
        *missing_report("sofa", {c: missing[c] for c in SOFA_COMPONENTS}),
        nw.lit(spec["id"]).alias("sofa_variant"),
    ]


def sofa_component_max() -> dict[str, int]:
    """The most points each organ system can score, read from the band table (bands, drugs and the
    urine alternative alike), so that callers can bound what a missing component could add."""
    spec = load_definition("sofa")

    def points(node: Any) -> list[int]:
        if isinstance(node, dict):
            own = [int(node["points"])] if "points" in node else []
            return own + [p for v in node.values() for p in points(v)]
        if isinstance(node, list):
            return [p for v in node for p in points(v)]
        return []

    return {c: max(points(spec["components"][c])) for c in SOFA_COMPONENTS}


def sofa(frame: FrameT) -> FrameT:
    """Add the SOFA columns to ``frame`` (polars, DuckDB, Ibis or PySpark; same type back).

    Missing organ systems score 0 (the usual convention) and are counted in ``sofa_missing`` and
    named in ``sofa_missing_components``; ``sofa_variant`` records the definition used.
    """
    nw_frame = ensure_columns(as_narwhals(frame), SOFA_INPUTS)
    return nw_frame.with_columns(*sofa_expressions()).to_native()
