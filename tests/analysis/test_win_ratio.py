"""Win ratio against a second implementation in base R (``scripts/r_reference/win_ratio_reference.R``
-> ``fixtures/r_win_ratio.json``; no Debian package computes it), on the synthetic ImmunoSep
hierarchy death by day 28 -> day-9 SOFA response -> day-15 infection status, and on a small data set
with censoring and missing values; plus a hand-counted example."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from immunostrat.analysis import win_ratio as wr
from immunostrat.analysis.stats import NotEstimable

FIX = Path(__file__).parent / "fixtures"
REF: dict[str, Any] = json.loads((FIX / "r_win_ratio.json").read_text())
HIERARCHY = [
    wr.Outcome("death by day 28", "time", "time", "event"),
    wr.Outcome("SOFA response day 9", "binary", "responder"),
    wr.Outcome("infection status day 15", "ordinal", "infection_rank"),
]


def close(ours: float | None, ref: float, rel: float = 1e-9) -> bool:
    return ours is not None and math.isclose(ours, ref, rel_tol=rel, abs_tol=1e-12)


def frame(case: str) -> pd.DataFrame:
    if case == "immunosep":
        return pd.read_csv(FIX / "win_ratio" / "immunosep.csv")
    return pd.DataFrame(REF[case]["data"])


@pytest.mark.parametrize("case", ["immunosep", "censored_missing"])
def test_win_ratio_matches_the_r_implementation(case: str) -> None:
    r = REF[case]
    est = wr.win_ratio(frame(case), HIERARCHY)
    d = est.details
    assert d["n"] == r["n"] and d["wins"] == r["wins"] and d["losses"] == r["losses"]
    assert close(est.estimate, r["win_ratio"]) and close(d["se_log_win_ratio"], r["se_log"])
    assert close(est.ci_low, r["ci"][0]) and close(est.ci_high, r["ci"][1])
    assert close(est.p_value, r["p_value"])
    assert close(d["net_benefit"], r["net_benefit"])
    fs = d["finkelstein_schoenfeld"]
    assert close(fs["statistic"], r["fs_statistic"]) and close(fs["variance"], r["fs_variance"])
    assert close(fs["p_value"], r["fs_p_value"])
    assert [x["treated_wins"] for x in d["by_level"]] == r["treated_wins_by_level"]
    assert [x["control_wins"] for x in d["by_level"]] == r["control_wins_by_level"]


def test_hand_counted_pairs() -> None:
    """Treated A died day 5; B alive, responder; C alive, non-responder, rank 0.
    Control X died day 10; Y alive, non-responder, rank 1; Z censored day 3 (alive), missing rest."""
    d = pd.DataFrame(
        {
            "treated": [1, 1, 1, 0, 0, 0],
            "time": [5, 28, 28, 10, 28, 3],
            "event": [1, 0, 0, 1, 0, 0],
            "responder": [0, 1, 0, 0, 0, None],
            "infection_rank": [2, 1, 0, 1, 1, None],
        }
    )
    res, level = wr.pairwise(d[d.treated == 1], d[d.treated == 0], HIERARCHY)
    # A: loses to X (died first) and to Y; vs Z: Z censored day 3 before A's death -> undecided on
    # death, responder 0 vs missing, rank 2 vs missing -> tie
    # B: beats X (X died); beats Y on response; vs Z: B alive, Z censored -> response 1 vs missing -> tie
    # C: beats X; vs Y: response tie, rank 0 beats 1; vs Z: tie
    assert res.tolist() == [[-1, -1, 0], [1, 1, 0], [1, 1, 0]]
    assert level.tolist() == [[0, 0, -1], [0, 1, -1], [0, 2, -1]]
    est = wr.win_ratio(d, HIERARCHY)
    assert est.details["wins"] == 4 and est.details["losses"] == 2 and est.estimate == 2.0


def test_no_losses_is_not_estimable() -> None:
    d = pd.DataFrame({"treated": [1, 1, 0, 0], "time": [28] * 4, "event": [0, 0, 1, 1]})
    d["time"] = [28, 28, 5, 6]
    with pytest.raises(NotEstimable, match="no wins or no losses"):
        wr.win_ratio(d, HIERARCHY[:1])
