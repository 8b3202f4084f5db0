"""qSOFA, HScore, MEX-SLEDAI and SLEDAI-2K as column expressions over their band tables.

Each function adds ``<score>_<component>`` columns, ``<score>_total``, ``<score>_missing`` and
``<score>_missing_components`` to any narwhals-compatible frame (polars, DuckDB, Ibis, PySpark).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import narwhals.stable.v2 as nw

from immunostrat.scores.definitions import load_definition
from immunostrat.scores.expressions import (
    as_narwhals,
    band_points,
    compare,
    ensure_columns,
    missing_report,
    with_score_columns,
)

FrameT = TypeVar("FrameT")


def qsofa(frame: FrameT) -> FrameT:
    """qSOFA (Singer 2016): RR >= 22, GCS < 15, SBP <= 100; >= 2 positive (``qsofa_positive``).

    An unmeasured criterion counts as not met and is reported in ``qsofa_missing``.
    """
    spec = load_definition("qsofa")
    comps: dict[str, Any] = spec["components"]
    nw_frame = ensure_columns(as_narwhals(frame), [c["input"] for c in comps.values()])
    points = {name: band_points(nw.col(c["input"]), c["bands"]).fill_null(0) for name, c in comps.items()}
    missing = {name: nw.col(c["input"]).is_null() for name, c in comps.items()}
    total = nw.sum_horizontal(*points.values()).cast(nw.Int64())
    return nw_frame.with_columns(
        *[p.cast(nw.Int64()).alias(f"qsofa_{n}") for n, p in points.items()],
        total.alias("qsofa_total"),
        (total >= spec["positive_at"]).alias("qsofa_positive"),
        *missing_report("qsofa", missing),
    ).to_native()


def hscore(frame: FrameT) -> FrameT:
    """HScore (Fardet 2014) with missing items reported and the range the score could still reach.

    ``hscore_total`` counts missing items as 0, so it is a lower bound; ``hscore_max_possible`` adds
    each missing item's maximum. ``hscore_positive`` is true when the lower bound reaches the cut-off
    (169), false when even the maximum stays below it, null when missing items leave it open.
    ``hscore_probability`` gives only the abstract's anchors (< 1% at <= 90, > 99% at >= 250): no
    validated probability curve exists (domain.md B3).
    """
    spec = load_definition("hscore")
    comps: dict[str, Any] = spec["components"]
    inputs = (
        ["hepatomegaly", "splenomegaly"]
        + [c["input"] for c in comps.values() if "input" in c]
        + [lin["input"] for lin in comps["cytopenias"]["lineages"]]
    )
    nw_frame = ensure_columns(as_narwhals(frame), inputs)
    points: dict[str, nw.Expr] = {}
    # best: the item's points if every unknown input took its worst value (for hscore_max_possible)
    best: dict[str, nw.Expr] = {}
    missing: dict[str, nw.Expr] = {}
    for name, comp in comps.items():
        if "bands" in comp:
            points[name] = band_points(nw.col(comp["input"]), comp["bands"])
            missing[name] = nw.col(comp["input"]).is_null()
            top = max(int(b["points"]) for b in comp["bands"])
            best[name] = nw.when(missing[name]).then(nw.lit(top)).otherwise(points[name])
    organ = comps["organomegaly"]

    def organ_points(unknown_as: int) -> nw.Expr:
        hep, spl = (nw.col(c).fill_null(unknown_as) >= 1 for c in organ["inputs"])
        return (
            nw.when(hep & spl)
            .then(nw.lit(organ["both"]))
            .otherwise(nw.when(hep | spl).then(nw.lit(organ["one"])).otherwise(nw.lit(0)))
        )

    points["organomegaly"] = organ_points(0)
    best["organomegaly"] = organ_points(1)
    missing["organomegaly"] = nw.any_horizontal(
        *[nw.col(c).is_null() for c in organ["inputs"]], ignore_nulls=False
    )
    cyto = comps["cytopenias"]
    low = [
        compare(nw.col(lin["input"]), lin["op"], lin["threshold"]).fill_null(False).cast(nw.Int64())
        for lin in cyto["lineages"]
    ]
    unknown = [nw.col(lin["input"]).is_null().cast(nw.Int64()) for lin in cyto["lineages"]]
    count = nw.sum_horizontal(*low)
    count_if_worst = nw.sum_horizontal(*low, *unknown)
    by_count: dict[int, int] = {int(k): int(v) for k, v in cyto["points_by_count"].items()}

    def cyto_points(lineages: nw.Expr) -> nw.Expr:
        result: nw.Expr = nw.lit(0)
        for n, p in sorted(by_count.items()):
            result = nw.when(lineages == n).then(nw.lit(p)).otherwise(result)
        return result

    points["cytopenias"] = cyto_points(count)
    best["cytopenias"] = cyto_points(count_if_worst)
    missing["cytopenias"] = nw.any_horizontal(
        *[nw.col(lin["input"]).is_null() for lin in cyto["lineages"]], ignore_nulls=False
    )
    total = nw.sum_horizontal(*[p.fill_null(0) for p in points.values()]).cast(nw.Int64())
    max_possible = nw.sum_horizontal(*[best[n].fill_null(0) for n in points]).cast(nw.Int64())
    cutoff = int(spec["cutoff"])
    positive = (
        nw.when(total >= cutoff)
        .then(nw.lit(True))
        .otherwise(
            nw.when(max_possible < cutoff).then(nw.lit(False)).otherwise(nw.lit(None, dtype=nw.Boolean()))
        )
    )
    low_anchor, high_anchor = spec["probability_anchors"]
    probability = (
        nw.when(max_possible <= low_anchor["at_most"])
        .then(nw.lit(low_anchor["text"]))
        .otherwise(
            nw.when(total >= high_anchor["at_least"])
            .then(nw.lit(high_anchor["text"]))
            .otherwise(nw.lit(f"not calibrated between the anchors; cut-off {cutoff}"))
        )
    )
    return nw_frame.with_columns(
        *[p.fill_null(0).cast(nw.Int64()).alias(f"hscore_{n}") for n, p in points.items()],
        total.alias("hscore_total"),
        max_possible.alias("hscore_max_possible"),
        positive.alias("hscore_positive"),
        probability.alias("hscore_probability"),
        *missing_report("hscore", missing),
    ).to_native()


def _condition(
    term: Mapping[str, Any], parameters: Mapping[str, float | None]
) -> tuple[nw.Expr, list[str]] | None:
    """A descriptor as (expression that is true when present, its input columns); None if unusable."""
    if "all" in term:
        parts = [_condition(t, parameters) for t in term["all"]]
        if any(p is None for p in parts):
            return None
        exprs = [p[0] for p in parts if p is not None]
        cols = [c for p in parts if p is not None for c in p[1]]
        return nw.all_horizontal(*exprs, ignore_nulls=False), cols
    column = nw.col(term["input"])
    if "op" not in term:
        return column >= 1, [term["input"]]
    threshold = term.get("threshold")
    if "parameter" in term:
        threshold = parameters.get(term["parameter"])
        if threshold is None:
            return None
    return compare(column, term["op"], float(threshold)), [term["input"]]  # type: ignore[arg-type]


def _item_score(frame: FrameT, name: str, prefix: str, parameters: Mapping[str, float | None]) -> FrameT:
    spec = load_definition(name)
    items: dict[str, Any] = spec["items"]
    compiled: dict[str, list[tuple[nw.Expr, list[str]]]] = {}
    for item, definition in items.items():
        candidates = [_condition(t, parameters) for t in definition["any"]]
        compiled[item] = [t for t in candidates if t is not None]
    inputs = [c for terms in compiled.values() for _, cols in terms for c in cols]
    nw_frame = ensure_columns(as_narwhals(frame), inputs)

    def build() -> list[nw.Expr]:
        points: dict[str, nw.Expr] = {}
        missing: dict[str, nw.Expr] = {}
        for item, terms in compiled.items():
            present = nw.any_horizontal(*[e.fill_null(False) for e, _ in terms], ignore_nulls=True)
            points[item] = nw.when(present).then(nw.lit(int(items[item]["points"]))).otherwise(nw.lit(0))
            missing[item] = nw.all_horizontal(
                *[nw.col(c).is_null() for _, cols in terms for c in cols], ignore_nulls=False
            )
        total = nw.sum_horizontal(*points.values()).cast(nw.Int64())
        return [
            *[p.cast(nw.Int64()).alias(f"{prefix}_{n}") for n, p in points.items()],
            total.alias(f"{prefix}_total"),
            *missing_report(prefix, missing),
        ]

    key = (name, prefix, tuple(sorted(parameters.items())))
    return with_score_columns(nw_frame, key, build)


def mex_sledai(frame: FrameT) -> FrameT:
    """MEX-SLEDAI (Guzman 1992), 0-32: descriptors present in the window score their points.

    An unrecorded descriptor is absent (counts 0) and is reported in ``mex_sledai_missing``.
    """
    return _item_score(frame, "mex-sledai", "mex_sledai", {})


def sledai_2k(
    frame: FrameT,
    *,
    c3_lower_limit_mg_dl: float | None = None,
    c4_lower_limit_mg_dl: float | None = None,
    anti_dsdna_upper_limit_iu_ml: float | None = None,
) -> FrameT:
    """SLEDAI-2K (Gladman 2002), 0-105. Complement and DNA-binding items use the local laboratory's
    limits when given, else the recorded findings ``sledai_low_complement`` and
    ``sledai_increased_dna_binding``.
    """
    parameters = {
        "c3_lower_limit_mg_dl": c3_lower_limit_mg_dl,
        "c4_lower_limit_mg_dl": c4_lower_limit_mg_dl,
        "anti_dsdna_upper_limit_iu_ml": anti_dsdna_upper_limit_iu_ml,
    }
    return _item_score(frame, "sledai-2k", "sledai_2k", parameters)
