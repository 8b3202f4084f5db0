"""Re-run the in-silico trial results table of docs/simulation.md for one model variant.

``python scripts/simulation_results.py --model full|deactivation|reynolds2006 [--size 2000] [--trials 1000]``
prints the population fit, then per design: power on the SOFA response and on 28-day mortality, type I
error, the rates per arm, and per stratum the mean treatment-minus-placebo differences and the exact shares
rescued and harmed (potential outcomes).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from immunostrat.simulation.model import SECONDARY_INFECTION
from immunostrat.simulation.population import MODEL_VARIANTS, generate_population, model_variant
from immunostrat.simulation.trial import DESIGNS, OutcomeTable, simulate_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODEL_VARIANTS, default="full")
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2026, help="virtual population seed")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--n", type=int, default=276)
    ap.add_argument("--trial-seed", type=int, default=1)
    ap.add_argument("--hazard", type=float, default=None, help="sensitivity: secondary hazard_per_h")
    ap.add_argument(
        "--hazard-ratio", type=float, default=None, help="sensitivity: secondary hazard_ratio_low"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    options: dict[str, object] = dict(model_variant(args.model))
    if args.model == "full" and (args.hazard is not None or args.hazard_ratio is not None):
        options["secondary"] = replace(
            SECONDARY_INFECTION,
            hazard_per_h=args.hazard if args.hazard is not None else SECONDARY_INFECTION.hazard_per_h,
            hazard_ratio_low=args.hazard_ratio
            if args.hazard_ratio is not None
            else SECONDARY_INFECTION.hazard_ratio_low,
        )
    vpop = generate_population(args.size, args.seed, **options)  # type: ignore[arg-type]
    print(vpop.fit.table())
    table = OutcomeTable(vpop)
    for design in DESIGNS.values():
        sofa = simulate_trials(design, args.n, args.trials, args.trial_seed, population=vpop, outcomes=table)
        mort = simulate_trials(
            replace(design, primary_endpoint="mortality_28d"),
            args.n,
            args.trials,
            args.trial_seed,
            population=vpop,
            outcomes=table,
        )
        print(
            f"\n== {design.id}: power SOFA {sofa.power:.3f} (SE {sofa.power_mc_se:.3f}), mortality "
            f"{mort.power:.3f} (SE {mort.power_mc_se:.3f}); type I error {sofa.type1_error:.3f} / "
            f"{mort.type1_error:.3f} (SE {sofa.type1_mc_se:.3f} / {mort.type1_mc_se:.3f})"
        )
        print(sofa.summary())
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
