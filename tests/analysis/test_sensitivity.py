"""Estimands in the plans and the missing-data sensitivity analyses (``analysis.sensitivity``):
Rubin's rules against R mice's ``pool.scalar`` (``scripts/r_reference/sensitivity_reference.R``);
the imputation itself by its properties (no missing data -> the ANCOVA; delta 0 -> MAR; the P value
grows with delta; reproducible with a seed)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from immunostrat.analysis import sensitivity, stats
from immunostrat.analysis.plan import load_plan

REF: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "r_sensitivity.json").read_text())


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


@pytest.mark.parametrize("i", range(3))
def test_rubin_rules_match_mice_pool_scalar(i: int) -> None:
    r = REF["pool_scalar"][i]
    out = sensitivity.rubin_combine(r["Q"], r["U"], r["n"] - r["k"])
    assert close(out["estimate"], r["qbar"]) and close(out["se"] ** 2, r["t"])
    assert close(out["between"], r["b"]) and close(out["within"], r["ubar"]) and close(out["df"], r["df"])


@pytest.mark.parametrize("plan_id", ["immunosep-2025", "sle-secretome-2025"])
def test_every_endpoint_names_its_intercurrent_event_strategy(plan_id: str) -> None:
    plan = load_plan(plan_id)
    for e in plan.endpoints:
        assert e.estimand is not None, e.id
        assert e.estimand.intercurrent_event and e.estimand.strategy
    named = {e.id for e in plan.endpoints if {"mi_mar", "tipping_point"} <= set(e.sensitivity_analyses)}
    assert named == ({"sofa_trajectory"} if plan_id == "immunosep-2025" else {"mex_sledai_change_day43"})


def frame(missing: int, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 40
    d = pd.DataFrame({"treated": np.repeat([1, 0], n // 2), "baseline": rng.normal(10, 2, n)})
    d["mid"] = -1.0 * d["treated"] + 0.3 * d["baseline"] + rng.normal(0, 1, n)
    d["last"] = -2.0 * d["treated"] + 0.5 * d["mid"] + rng.normal(0, 1, n)
    d.loc[rng.choice(n, missing, replace=False), "last"] = np.nan
    return d


def test_no_missing_data_gives_the_ancova() -> None:
    d = frame(0)
    out = sensitivity.multiple_imputation(d, "last", "baseline", ["mid"], m=5)
    ref = stats.ancova_change(d, "last", "baseline", "treated")
    assert out["n_imputed"] == 0 and close(out["mar"]["estimate"], ref.estimate or 0.0)
    assert close(out["mar"]["p_value"], ref.p_value or 0.0, 1e-6)


def test_tipping_point_starts_at_mar_and_moves_towards_the_null() -> None:
    d = frame(8)
    out = sensitivity.multiple_imputation(d, "last", "baseline", ["mid"], m=20, deltas=[0, 1, 2, 4, 8, 16])
    again = sensitivity.multiple_imputation(d, "last", "baseline", ["mid"], m=20, deltas=[0, 1, 2, 4, 8, 16])
    table = out["tipping_point"]["table"]
    assert out["n_imputed"] == 8 and out["mar"]["between"] > 0
    assert close(table[0]["estimate"], out["mar"]["estimate"]) and table == again["tipping_point"]["table"]
    ests = [row["estimate"] for row in table]
    assert all(b > a for a, b in itertools.pairwise(ests))  # harm added to the treated arm
    tip = out["tipping_point"]["delta_at_which_p_reaches_alpha"]
    assert tip is not None and table[0]["p_value"] < 0.05
    assert all(row["p_value"] < 0.05 for row in table if row["delta"] < tip)
