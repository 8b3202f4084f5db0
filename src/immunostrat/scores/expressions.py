"""Band tables compiled to narwhals expressions: one helper, every engine.

narwhals expressions run unchanged on polars (bedside, trials), DuckDB relations, Ibis tables and
PySpark frames (cohorts), so each score is written once (design.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import narwhals.stable.v2 as nw
import polars as pl

_OPS = {
    "<": lambda e, t: e < t,
    "<=": lambda e, t: e <= t,
    ">": lambda e, t: e > t,
    ">=": lambda e, t: e >= t,
}


def compare(expr: Any, op: str, threshold: float) -> Any:
    """``expr OP threshold`` for one of < <= > >=: a narwhals expression for an expression, a bool for a
    number (protocol rules evaluate single values with the same table)."""
    try:
        return _OPS[op](expr, threshold)
    except KeyError:
        raise ValueError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}") from None


def band_points(
    expr: nw.Expr, bands: Sequence[Mapping[str, Any]], extra: Mapping[str, nw.Expr] | None = None
) -> nw.Expr:
    """Points of the most severe matching band; 0 when none matches; null when ``expr`` is null.

    A band may carry ``requires: COLUMN`` (points only when that 0/1 column is 1); ``extra`` maps
    such names to expressions.
    """
    ordered = sorted(bands, key=lambda b: b["points"], reverse=True)
    result: nw.Expr = nw.lit(0)
    for band in reversed(ordered):
        condition = compare(expr, band["op"], band["threshold"])
        if band.get("requires"):
            required = (extra or {}).get(band["requires"], nw.col(band["requires"]))
            condition = condition & (required.fill_null(0) >= 1)
        result = nw.when(condition).then(nw.lit(band["points"])).otherwise(result)
    return nw.when(expr.is_null()).then(nw.lit(None, dtype=nw.Int64())).otherwise(result).cast(nw.Int64())


def as_narwhals(frame: Any) -> Any:
    """Wrap a native frame (polars, DuckDB, Ibis, PySpark) for narwhals expressions."""
    return nw.from_native(frame)


def ensure_columns(frame: Any, names: Iterable[str]) -> Any:
    """Add absent input columns as nulls so that they count as missing, not as an error."""
    present = set(frame.collect_schema().names())
    absent = [n for n in dict.fromkeys(names) if n not in present]
    if not absent:
        return frame
    return frame.with_columns(*[nw.lit(None, dtype=nw.Float64()).alias(n) for n in absent])


def missing_report(prefix: str, missing: Mapping[str, nw.Expr]) -> list[nw.Expr]:
    """``<prefix>_missing`` (count) and ``<prefix>_missing_components`` (comma-separated names)."""
    count = nw.sum_horizontal(*[m.cast(nw.Int64()) for m in missing.values()]).cast(nw.Int64())
    names = nw.concat_str(
        [
            nw.when(m).then(nw.lit(name)).otherwise(nw.lit(None, dtype=nw.String()))
            for name, m in missing.items()
        ],
        separator=",",
        ignore_nulls=True,
    )
    return [count.alias(f"{prefix}_missing"), names.alias(f"{prefix}_missing_components")]


_POLARS_EXPRESSIONS: dict[Hashable, list[pl.Expr]] = {}


def with_score_columns(frame: Any, key: Hashable, build: Callable[[], Sequence[nw.Expr]]) -> Any:
    """``frame.with_columns(*build())`` as the native frame. ``key`` names what ``build`` returns
    (the score and its options): the expressions depend on the definition alone, never on the data.

    For polars frames (the bedside, a form save, a screening: often one row) narwhals' translation
    of the expressions into polars costs ~10x the scoring itself, so the translated polars
    expressions are kept per ``key``; they are made once by narwhals itself (the first call runs the
    narwhals path, which also validates them). Other engines take the narwhals path every time."""
    native = frame.to_native()
    if isinstance(native, pl.DataFrame | pl.LazyFrame):
        cached = _POLARS_EXPRESSIONS.get(key)
        if cached is not None:
            return native.with_columns(cached)
        exprs = list(build())
        out = frame.with_columns(*exprs).to_native()
        namespace = frame.__narwhals_namespace__()
        # narwhals' own translation (the polars backend keeps the native expression on `.native`)
        _POLARS_EXPRESSIONS[key] = [e._to_compliant_expr(namespace).native for e in exprs]  # type: ignore[attr-defined]
        return out
    return frame.with_columns(*build()).to_native()
