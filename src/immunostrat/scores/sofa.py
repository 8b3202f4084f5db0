"""SOFA as column expressions over the worst values of a window, for each versioned definition:
``sofa-1996`` (Vincent 1996; ``sofa`` is its alias) and ``sofa-2`` (Ranzani 2025).

One generic compiler turns a definition file into narwhals expressions (design.md section 2): each
organ system is the maximum of its band table (``input`` + ``bands``, with ``requires`` and
``cap_without_requirement``), its alternative band tables (``also``, optionally only ``when_missing``
another input) and its ``rules`` and ``extra_rules`` (points when a condition over inputs holds;
sofa-1996's ``drugs`` are such rules with one condition; options add ``extra_rules``). ``derived``
inputs (sums, any-positive flags, per-kg-per-hour ratios) are computed first. Band tables:
``definitions/sofa-1996.yaml``, ``definitions/sofa-2.yaml``; the latter's ``options`` name the
choices where its sources disagree.

Input columns (canonical units, any subset; absent ones count as missing): :data:`SOFA_INPUTS` for
sofa-1996; :func:`sofa_inputs` lists those of any variant. Choosing the worst value in a window is
the caller's job (bedside: ``scores.windows``; cohort: a RANGE window). The six organ systems keep
the same output columns in every variant (``sofa_respiration`` ... ``sofa_renal``; SOFA-2 calls them
respiratory, hemostasis, liver, cardiovascular, brain, kidney: :func:`sofa_labels`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import cache, reduce
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

SOFA_COMPONENTS = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")
SOFA_VARIANTS = ("sofa-1996", "sofa-2")
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

Resolve = Callable[[str], nw.Expr]


def sofa_variant_id(variant: str = "sofa") -> str:
    """The definition id of ``variant`` (``sofa`` -> ``sofa-1996``); KeyError for an unknown one."""
    name = "sofa-1996" if variant == "sofa" else variant
    if name not in SOFA_VARIANTS:
        raise KeyError(f"unknown SOFA variant {variant!r}; use one of {', '.join(SOFA_VARIANTS)}")
    return name


def _set_path(node: Any, path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def sofa_definition(variant: str = "sofa", options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The band table of ``variant`` with its named ``options`` applied (absent ones: the file's
    defaults). ``options_used`` records every option's choice."""
    spec = copy.deepcopy(load_definition(sofa_variant_id(variant)))
    known: dict[str, Any] = spec.get("options", {})
    unknown = set(options or {}) - set(known)
    if unknown:
        raise KeyError(
            f"unknown {spec['id']} option(s) {sorted(unknown)}; known: {', '.join(known) or 'none'}"
        )
    used: dict[str, str] = {}
    for name, option in known.items():
        choice = str((options or {}).get(name, option["default"]))
        if choice not in option["choices"]:
            raise ValueError(
                f"{spec['id']} option {name}: unknown choice {choice!r}; use one of {list(option['choices'])}"
            )
        for path, value in (option["choices"][choice] or {}).get("set", {}).items():
            _set_path(spec, path, copy.deepcopy(value))
        used[name] = choice
    spec["options_used"] = used
    return spec


def sofa_labels(variant: str = "sofa") -> dict[str, str]:
    """Each organ-system slot's name in ``variant`` (SOFA-2: brain, kidney, hemostasis, ...)."""
    comps = load_definition(sofa_variant_id(variant))["components"]
    return {c: str(comps[c].get("label", c)) for c in SOFA_COMPONENTS}


def _condition(node: Mapping[str, Any], col: Resolve) -> nw.Expr:
    """A rule condition: a leaf ``{input, op, threshold}`` (false when the input is null), or
    ``all`` / ``any`` of conditions, or ``not`` of one."""
    if "all" in node:
        return reduce(lambda a, b: a & b, [_condition(c, col) for c in node["all"]])
    if "any" in node:
        return reduce(lambda a, b: a | b, [_condition(c, col) for c in node["any"]])
    if "not" in node:
        return ~_condition(node["not"], col)
    expr = col(node["input"])
    return ~expr.is_null() & compare(expr, node["op"], node["threshold"])


def _leaf_inputs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [str(node["input"])] if "input" in node else []
        return own + [
            i for k, v in node.items() if k in ("all", "any", "not", "when") for i in _leaf_inputs(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in _leaf_inputs(v)]
    return []


def _derived(node: Mapping[str, Any], col: Resolve) -> nw.Expr:
    """``sum`` (null when every term is null), ``any_positive`` (1.0/0.0, null when all null) or
    ``ratio: [numerator, denominator]`` with ``divide_by`` (null unless the denominator is > 0)."""
    if "sum" in node or "any_positive" in node:
        terms = [col(n) for n in node.get("sum", node.get("any_positive", []))]
        all_null = reduce(lambda a, b: a & b, [t.is_null() for t in terms])
        if "sum" in node:
            value = nw.sum_horizontal(*[t.fill_null(0) for t in terms])
        else:
            positive = reduce(lambda a, b: a | b, [t.fill_null(0) > 0 for t in terms])
            value = nw.when(positive).then(nw.lit(1.0)).otherwise(nw.lit(0.0))
        return nw.when(all_null).then(nw.lit(None, dtype=nw.Float64())).otherwise(value).cast(nw.Float64())
    if "ratio" in node:
        num, den = (col(n) for n in node["ratio"])
        scale = float(node.get("divide_by", 1))
        return (
            nw.when(~den.is_null() & (den > 0))
            .then(num / den / scale)
            .otherwise(nw.lit(None, dtype=nw.Float64()))
            .cast(nw.Float64())
        )
    raise ValueError(f"unknown derived input {dict(node)!r}")


def _base_inputs(spec: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each derived input's source columns (a ratio: its numerator, since a weight alone is no
    measurement of the organ system)."""
    base: dict[str, list[str]] = {}
    for name, node in (spec.get("derived") or {}).items():
        names = node.get("sum") or node.get("any_positive") or node.get("ratio", [])[:1]
        base[name] = [b for n in names for b in base.get(n, [n])]
    return base


def _component_inputs(comp: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(inputs the component reads, names used as ``requires``)."""
    alts = comp.get("also") or []
    alts = [alts] if isinstance(alts, dict) else list(alts)
    tables = [comp, *alts]
    inputs = [str(t["input"]) for t in tables if "input" in t]
    for key in ("drugs", "rules", "extra_rules"):
        inputs += _leaf_inputs(comp.get(key, []))
    required = [str(b["requires"]) for t in tables for b in t.get("bands", []) if b.get("requires")]
    return inputs, required


def sofa_inputs(variant: str = "sofa", options: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every input column ``variant`` reads (derived inputs expanded to their sources)."""
    spec = sofa_definition(variant, options)
    base = _base_inputs(spec)
    derived = spec.get("derived") or {}
    names: list[str] = []
    for c in SOFA_COMPONENTS:
        inputs, required = _component_inputs(spec["components"][c])
        for n in [*inputs, *required]:
            names += [n] if n not in derived else base[n]
    for n in derived.values():
        if "ratio" in n:
            names += [str(x) for x in n["ratio"]]
    return tuple(dict.fromkeys(names))


def _component(comp: Mapping[str, Any], col: Resolve) -> nw.Expr:
    extra = {name: col(name) for name in _component_inputs(comp)[1]}
    parts: list[nw.Expr] = []
    if "input" in comp:
        raw = band_points(col(comp["input"]), comp["bands"], extra)
        cap = comp.get("cap_without_requirement")
        required = [b["requires"] for b in comp["bands"] if b.get("requires")]
        if cap is not None and required:
            lacking = ~(col(required[0]).fill_null(0) >= 1)
            raw = nw.when(lacking & (raw > int(cap))).then(nw.lit(int(cap))).otherwise(raw)
        parts.append(raw.fill_null(0))
    alts = comp.get("also") or []
    for alt in [alts] if isinstance(alts, dict) else alts:
        points = band_points(col(alt["input"]), alt["bands"], extra).fill_null(0)
        if alt.get("when_missing"):
            points = nw.when(col(alt["when_missing"]).is_null()).then(points).otherwise(nw.lit(0))
        parts.append(points)
    rules = [{"points": d["points"], "when": d} for d in comp.get("drugs", [])]
    rules += [*comp.get("rules", []), *comp.get("extra_rules", [])]
    for rule in rules:
        parts.append(
            nw.when(_condition(rule["when"], col)).then(nw.lit(int(rule["points"]))).otherwise(nw.lit(0))
        )
    return parts[0] if len(parts) == 1 else nw.max_horizontal(*parts)


def sofa_expressions(variant: str = "sofa", options: Mapping[str, str] | None = None) -> list[nw.Expr]:
    """The SOFA output columns of ``variant`` (with ``options``) as narwhals expressions."""
    return list(_compiled_expressions(variant, tuple(sorted((options or {}).items()))))


@cache
def _compiled_expressions(variant: str, options: tuple[tuple[str, str], ...]) -> tuple[nw.Expr, ...]:
    """Built once per definition and options: the band table is data that does not change while the
    process runs, and building the expressions costs more than scoring a few rows with them."""
    return tuple(_build_expressions(variant, dict(options) or None))


def _build_expressions(variant: str, options: Mapping[str, str] | None) -> list[nw.Expr]:
    spec = sofa_definition(variant, options)
    env: dict[str, nw.Expr] = {}

    def col(name: str) -> nw.Expr:
        return env[name] if name in env else nw.col(name)

    for name, node in (spec.get("derived") or {}).items():
        env[name] = _derived(node, col)
    base = _base_inputs(spec)
    points: dict[str, nw.Expr] = {}
    missing: dict[str, nw.Expr] = {}
    for c in SOFA_COMPONENTS:
        comp = spec["components"][c]
        points[c] = _component(comp, col)
        inputs = [b for n in _component_inputs(comp)[0] for b in base.get(n, [n])]
        missing[c] = reduce(lambda a, b: a & b, [nw.col(n).is_null() for n in dict.fromkeys(inputs)])

    outputs = [points[c].fill_null(0).cast(nw.Int64()).alias(f"sofa_{c}") for c in SOFA_COMPONENTS]
    total = nw.sum_horizontal(*[points[c].fill_null(0) for c in SOFA_COMPONENTS]).cast(nw.Int64())
    return [
        *outputs,
        total.alias("sofa_total"),
        *missing_report("sofa", {c: missing[c] for c in SOFA_COMPONENTS}),
        nw.lit(spec["id"]).alias("sofa_variant"),
    ]


def sofa_component_max(variant: str = "sofa") -> dict[str, int]:
    """The most points each organ system can score, read from the band table (bands, drugs, rules and
    alternatives alike), so that callers can bound what a missing component could add."""
    spec = load_definition(sofa_variant_id(variant))

    def points(node: Any) -> list[int]:
        if isinstance(node, dict):
            own = [int(node["points"])] if "points" in node else []
            return own + [p for v in node.values() for p in points(v)]
        if isinstance(node, list):
            return [p for v in node for p in points(v)]
        return []

    return {c: max(points(spec["components"][c])) for c in SOFA_COMPONENTS}


def sofa(frame: FrameT, variant: str = "sofa", options: Mapping[str, str] | None = None) -> FrameT:
    """Add the SOFA columns of ``variant`` (``sofa``/``sofa-1996`` or ``sofa-2``, with its named
    ``options``) to ``frame`` (polars, DuckDB, Ibis or PySpark; same type back).

    Missing organ systems score 0 (the usual convention; SOFA-2 footnote b) and are counted in
    ``sofa_missing`` and named in ``sofa_missing_components``; ``sofa_variant`` records the definition.
    """
    nw_frame = ensure_columns(as_narwhals(frame), sofa_inputs(variant, options))
    key = ("sofa", variant, tuple(sorted((options or {}).items())))
    return with_score_columns(nw_frame, key, lambda: sofa_expressions(variant, options))
