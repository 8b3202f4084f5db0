"""Credibility plan, calibration and validation: the plan's data, the data flow (held-out trials never feed
calibration), reproducibility from a seed, each comparator's own population, and the command line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from immunostrat.cli import app
from immunostrat.simulation.population import MALS, VirtualPopulation
from immunostrat.simulation.validation import (
    CredibilityPlan,
    OutcomeStore,
    calibrate,
    load_plan,
    population_weights,
    validate,
)
from immunostrat.simulation.validation.plan import Mechanism

#: Small grids keep the tests fast: the multipliers 0 (placebo) and the design value 1 (msc fixed at 1).
SMALL = {"il1_block": (0.0, 1.0), "steroid": (0.0, 1.0), "ifn_gamma": (0.0, 1.0), "msc": (1.0,)}


def small_plan(plan: CredibilityPlan | None = None) -> CredibilityPlan:
    p = plan if plan is not None else load_plan()
    return replace(p, mechanisms={k: Mechanism(m.id, m.hook, SMALL[k]) for k, m in p.mechanisms.items()})


@pytest.fixture(scope="module")
def store(vpop: VirtualPopulation) -> OutcomeStore:
    return OutcomeStore(vpop, small_plan())


def test_plan_is_complete_and_cited() -> None:
    plan = load_plan()
    assert plan.context_of_use and 0 < plan.interval < 1 and plan.min_share_held_out == 0.8
    for c in plan.comparators:
        assert c.source and c.design and c.role in ("training", "held_out")
        x1, n1, x0, n0 = c.counts
        assert 0 <= x1 <= n1 and 0 <= x0 <= n0
    # one training comparator per calibrated mechanism; the MSC strengths are not calibrated (one grid value)
    trained = {c.mechanism for c in plan.training()}
    assert trained == {m for m, mech in plan.mechanisms.items() if len(mech.grid) > 1}
    assert plan.mechanisms["msc"].grid == (1.0,)
    assert plan.comparator("sepcell").role == "held_out"
    # the plan's counts reproduce the published ImmunoSep primary result: 17.2 points (6.8-27.2), domain.md A1
    est, lo, hi = plan.comparator("immunosep_primary").published_points
    assert (round(est, 1), round(lo, 1), round(hi, 1)) == (17.2, 6.8, 27.2)


def test_comparator_population_matches_the_trial(vpop: VirtualPopulation, store: OutcomeStore) -> None:
    placebo = store.get(None)
    for cid in ("opal1997", "adrenal", "immunosep_primary", "shakoory2016"):
        c = store.plan.comparator(cid)
        w = population_weights(vpop, placebo, c)
        assert w.sum() == pytest.approx(1.0)
        assert float(w @ placebo.died_by_day[c.horizon_days]) == pytest.approx(c.control_rate, abs=1e-8)
        assert (w[~np.isin(vpop.endotype, c.subgroup)] == 0).all()
        if c.strata:
            for code, share in c.strata.items():
                assert float(w[vpop.endotype == code].sum()) == pytest.approx(share, abs=1e-6)
    assert set(
        np.flatnonzero(population_weights(vpop, placebo, store.plan.comparator("shakoory2016")))
    ) == set(np.flatnonzero(vpop.endotype == MALS))


def test_held_out_trials_never_feed_calibration(store: OutcomeStore) -> None:
    plan = store.plan
    with pytest.raises(ValueError, match="only training"):
        calibrate(plan.training() + plan.held_out()[:1], store)
    post = calibrate(plan.training(), store)
    assert set(post.training) == {c.id for c in plan.training()}
    # every held-out published number changed (and held-out trials dropped): the posterior is the same
    changed = replace(
        plan,
        comparators=tuple(
            replace(c, counts=(c.counts[1], c.counts[1], 0, c.counts[3])) if c.role == "held_out" else c
            for c in plan.comparators
        ),
    )
    np.testing.assert_array_equal(calibrate(changed.training(), store).probability, post.probability)
    # a changed training result does change it: the test can see the data flow
    t0 = plan.training()[0]
    moved = (replace(t0, counts=(t0.counts[1], t0.counts[1], 0, t0.counts[3])), *plan.training()[1:])
    assert not np.array_equal(calibrate(moved, store).probability, post.probability)


def test_validation_is_reproducible_from_its_seed(store: OutcomeStore) -> None:
    plan = store.plan
    a = validate(store=store, trials=60, seed=5)
    b = validate(store=store, trials=60, seed=5)
    c = validate(store=store, trials=60, seed=6)
    np.testing.assert_array_equal(a.posterior.probability, b.posterior.probability)
    for ra, rb in zip(a.results, b.results, strict=True):
        np.testing.assert_array_equal(ra.effects, rb.effects)
        assert ra.passed == rb.passed
    assert any(
        not np.array_equal(ra.effects, rc.effects) for ra, rc in zip(a.results, c.results, strict=True)
    )
    # the table shows every comparator, training and held out, and the verdict follows the plan's criterion
    table = a.table()
    for r in a.results:
        assert r.comparator.id in table
    held = a.held_out
    assert a.accepted == (sum(r.passed for r in held) / len(held) >= plan.min_share_held_out)
    assert ("ACCEPTED" if a.accepted else "REJECTED") in a.summary_line()
    for r in a.results:
        inside = r.interval[0] <= r.published[0] <= r.interval[1]
        assert r.passed == (
            inside and not (r.comparator.stratum and np.sign(r.predicted) != np.sign(r.published[0]))
        )


def test_validate_command_prints_the_table_and_writes_rows(tmp_path: Path) -> None:
    from importlib import resources

    import yaml

    data = yaml.safe_load(
        resources.files("immunostrat.simulation.validation").joinpath("credibility.yaml").read_text("utf-8")
    )
    for m in data["mechanisms"]:
        m["grid"] = list(SMALL[m["id"]])
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "validation.csv"
    args = ["simulate", "validate", "--population-size", "200", "--trials", "40", "--plan", str(plan_file)]
    result = CliRunner().invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    plan = load_plan()
    for c in plan.comparators:
        assert c.id in result.output
    assert "held-out comparisons pass" in result.output
    frame = pl.read_csv(out)
    assert frame.height == len(plan.comparators) + len(plan.designs)
    assert set(frame["role"]) == {"training", "held_out", "design"}
    assert frame.filter(pl.col("role") == "design")["power"].is_between(0, 1).all()
    assert "biomarker-guided (sofa_response)" in result.output
    assert (frame["predicted_pi_low"] <= frame["predicted_pi_high"]).all()
    bad = CliRunner().invoke(app, ["simulate", "validate", "--model", "nope"])
    assert bad.exit_code == 2
