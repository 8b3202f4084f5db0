"""Write the win-ratio data set that ``win_ratio_reference.R`` analyses in R (and the tests reanalyse):
``tests/analysis/fixtures/win_ratio/immunosep.csv``, one row per participant of the synthetic ImmunoSep
export (276 randomized, seed 0) with death by day 28 (time, event), day-9 SOFA response and day-15
infection status rank (``analysis.runner.win_ratio_frame``). Run from the repository root."""

from __future__ import annotations

from pathlib import Path

from immunostrat.analysis import runner
from immunostrat.analysis.plan import load_plan
from immunostrat.analysis.synthetic import synthetic_trial

OUT = Path("tests/analysis/fixtures/win_ratio")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    export = synthetic_trial(n=276, seed=0, effect=0.20, withdrawn_with_removal=4)
    frame = runner.win_ratio_frame(export, load_plan("immunosep-2025"))
    cols = ["participant_id", "treated", "time", "event", "responder", "infection_rank"]
    frame[cols].to_csv(OUT / "immunosep.csv", index=False)


if __name__ == "__main__":
    main()
