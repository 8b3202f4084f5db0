"""Write the data sets that ``mmrm_reference.R`` fits in R (and the MMRM tests refit in Python).

The frames are exactly what the analysis runner gives the mixed model for two plan endpoints:
- ``sofa.csv``: ImmunoSep plan, endpoint ``sofa_trajectory`` (total SOFA days 2-9, day-1 SOFA as
  baseline), on the synthetic ImmunoSep export of ``write_synthetic_trial`` (276 randomized, seed 0);
- ``sle.csv``: SLE secretome plan, endpoint ``mex_sledai_change_day43`` (change at days 22 and 43,
  day-0 MEX-SLEDAI as baseline), on ``synthetic_sle_trial(n=30, seed=3)``;
- ``sle_small.csv``: the first three secretome and the first placebo participant of ``sle.csv``
  (the 3-vs-1 edge case).
Run from the repository root: ``python scripts/r_reference/mmrm_data.py`` then
``Rscript scripts/r_reference/mmrm_reference.R``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from immunostrat.analysis import runner
from immunostrat.analysis.plan import load_plan
from immunostrat.analysis.synthetic import synthetic_sle_trial, synthetic_trial

OUT = Path("tests/analysis/fixtures/mmrm")


def _frame(export: object, plan_id: str, endpoint_id: str) -> pd.DataFrame:
    plan = load_plan(plan_id)
    endpoint = next(e for e in plan.endpoints if e.id == endpoint_id)
    return runner.mmrm_frame(export, plan, endpoint)  # type: ignore[arg-type]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sofa_export = synthetic_trial(n=276, seed=0, effect=0.20, withdrawn_with_removal=4)
    sofa = _frame(sofa_export, "immunosep-2025", "sofa_trajectory")
    sofa[["participant_id", "stratum", "treated", "day", "baseline", "value"]].to_csv(
        OUT / "sofa.csv", index=False
    )
    sle = _frame(synthetic_sle_trial(n=30, seed=3), "sle-secretome-2025", "mex_sledai_change_day43")
    sle = sle[["participant_id", "treated", "day", "baseline", "change"]]
    sle.to_csv(OUT / "sle.csv", index=False)
    ids = sle.drop_duplicates("participant_id").sort_values("participant_id")
    keep = list(ids.loc[ids["treated"] == 1, "participant_id"][:3]) + list(
        ids.loc[ids["treated"] == 0, "participant_id"][:1]
    )
    sle[sle["participant_id"].isin(keep)].to_csv(OUT / "sle_small.csv", index=False)


if __name__ == "__main__":
    main()
