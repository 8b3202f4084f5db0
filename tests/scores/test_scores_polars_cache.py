"""The polars expressions kept per score definition give what narwhals' own evaluation gives, on
frames of other shapes, columns and values than the one they were first made for (they depend on
the definition alone), and each definition and option set keeps its own."""

from __future__ import annotations

import random

import narwhals.stable.v2 as nw
import polars as pl
import pytest

from immunostrat.scores.expressions import ensure_columns
from immunostrat.scores.simple import mex_sledai, sledai_2k
from immunostrat.scores.sofa import sofa, sofa_expressions, sofa_inputs

SOFA_RANGES = {
    "pao2": (40.0, 500.0),
    "fio2": (0.21, 1.0),
    "mechanical_ventilation": (0.0, 1.0),
    "platelets": (5.0, 400.0),
    "bilirubin": (0.1, 15.0),
    "map": (30.0, 110.0),
    "norepinephrine_rate": (0.0, 0.5),
    "dopamine_rate": (0.0, 20.0),
    "gcs": (3.0, 15.0),
    "creatinine": (0.4, 6.0),
    "urine_output_24h": (0.0, 3000.0),
}


def _frame(rng: random.Random, rows: int, columns: list[str]) -> pl.DataFrame:
    data = {
        name: [
            None if rng.random() < 0.2 else round(rng.uniform(*SOFA_RANGES.get(name, (0.0, 1.0))), 2)
            for _ in range(rows)
        ]
        for name in columns
    }
    return pl.DataFrame(data, schema=dict.fromkeys(columns, pl.Float64))


def _by_narwhals(frame: pl.DataFrame, variant: str, options: dict[str, str] | None = None) -> pl.DataFrame:
    nw_frame = ensure_columns(nw.from_native(frame), sofa_inputs(variant, options))
    return nw_frame.with_columns(*sofa_expressions(variant, options)).to_native()  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", ["sofa", "sofa-2"])
def test_kept_sofa_expressions_agree_with_narwhals_on_new_frames(variant: str) -> None:
    rng = random.Random(7)
    sofa(_frame(rng, 1, ["platelets"]), variant)  # the first call keeps the expressions
    for rows, k in ((1, 3), (50, 8), (300, len(SOFA_RANGES))):
        columns = rng.sample(sorted(SOFA_RANGES), k)
        frame = _frame(rng, rows, columns)
        kept = sofa(frame, variant)
        assert kept.equals(_by_narwhals(frame, variant)), (variant, rows, columns)
        assert sofa(frame.lazy(), variant).collect().equals(kept)
        assert kept["sofa_total"].drop_nulls().len() == rows


def test_each_variant_keeps_its_own_expressions() -> None:
    frame = pl.DataFrame({"platelets": [45.0], "creatinine": [2.5], "gcs": [9.0]})
    one = sofa(frame, "sofa")
    two = sofa(frame, "sofa-2")
    assert one["sofa_variant"].item() != two["sofa_variant"].item()
    assert one.equals(_by_narwhals(frame, "sofa")) and two.equals(_by_narwhals(frame, "sofa-2"))


def test_item_scores_keep_expressions_per_parameter_set() -> None:
    frame = pl.DataFrame(
        {"mex_arthritis": [1.0, 0.0], "c3": [60.0, 95.0], "sledai_low_complement": [None, None]}
    )
    assert mex_sledai(frame).equals(mex_sledai(frame))
    low = sledai_2k(frame, c3_lower_limit_mg_dl=90.0)
    high = sledai_2k(frame, c3_lower_limit_mg_dl=50.0)
    again = sledai_2k(frame, c3_lower_limit_mg_dl=90.0)
    assert low.equals(again)
    assert not low.equals(high), "the complement limit is part of what is kept"
