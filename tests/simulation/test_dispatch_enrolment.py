"""The trial loop's block enrolment (one protocol call per block of trials) draws exactly what the
trial-by-trial loop draws: the same patients, measured endotypes and allocation seeds, in the same order."""

from __future__ import annotations

import numpy as np
import pytest

from immunostrat.simulation.population import IMMUNOPARALYSIS, INTERMEDIATE, MALS, stratify
from immunostrat.simulation.trial import _enrolments


def _enrol(
    rng: np.random.Generator,
    ferritin: np.ndarray,
    mhla_dr: np.ndarray,
    sigma: float,
    eligible: tuple[int, ...],
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw patients (with replacement) until ``n`` are eligible by their noisy measured endotype (the
    trial-by-trial definition that :func:`_enrolments` must reproduce)."""
    picked: list[np.ndarray] = []
    strata: list[np.ndarray] = []
    got = 0
    elig = np.asarray(eligible)
    while got < n:
        draw = rng.integers(0, ferritin.size, size=2 * n)
        fer = ferritin[draw] * np.exp(rng.normal(0.0, sigma, draw.size))
        hla = mhla_dr[draw] * np.exp(rng.normal(0.0, sigma, draw.size))
        endo = stratify(fer, hla)
        ok = np.isin(endo, elig)
        picked.append(draw[ok])
        strata.append(endo[ok])
        got += int(ok.sum())
    return np.concatenate(picked)[:n], np.concatenate(strata)[:n]


@pytest.mark.parametrize(
    ("eligible", "block"),
    [
        ((MALS, IMMUNOPARALYSIS, INTERMEDIATE), 64),  # every round completes its trial
        ((MALS, IMMUNOPARALYSIS), 64),  # some trials need a second round
        ((MALS,), 5),  # every trial needs several rounds; short blocks
    ],
)
def test_block_enrolment_is_the_trial_by_trial_stream(eligible: tuple[int, ...], block: int) -> None:
    rng = np.random.default_rng(11)
    size = 500
    # enrolment biomarkers spread over the three endotypes (ferritin around the 4,420 ng/mL MALS cut-off,
    # mHLA-DR around the 5,000 AB/C immunoparalysis one)
    ferritin = np.exp(rng.normal(np.log(2_500.0), 0.9, size))
    mhla_dr = np.exp(rng.normal(np.log(6_000.0), 0.6, size))
    n, trials, sigma = 40, 30, 0.15
    reference = np.random.default_rng(3)
    expected = []
    for _ in range(trials):
        idx, measured = _enrol(reference, ferritin, mhla_dr, sigma, eligible, n)
        expected.append((idx, measured, reference.bytes(32)))
    got = list(_enrolments(np.random.default_rng(3), ferritin, mhla_dr, sigma, eligible, n, trials, block))
    assert len(got) == trials
    for k, ((idx_a, m_a, seed_a), (idx_b, m_b, seed_b)) in enumerate(zip(expected, got, strict=True)):
        np.testing.assert_array_equal(idx_b, idx_a, err_msg=f"trial {k}")
        np.testing.assert_array_equal(m_b, m_a, err_msg=f"trial {k}")
        assert seed_b == seed_a, f"trial {k}"
        assert idx_a.size == n and np.isin(m_a, eligible).all()
    share = float(np.isin(stratify(ferritin, mhla_dr), eligible).mean())
    if eligible == (MALS,):
        assert share < 0.4  # a round of 2n draws gives under 0.8 n eligible: most trials need more rounds
    if len(eligible) == 3:
        assert share == 1.0
