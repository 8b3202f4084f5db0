"""Permuted blocks and Pocock-Simon minimization as pure functions."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from immunostrat.errors import InputError
from immunostrat.trial.randomization import (
    SeededRandom,
    block_sizes,
    commitment,
    kit_numbers,
    permuted_block_list,
    pocock_simon,
)

SEED = bytes(range(32))


@settings(max_examples=60, deadline=None)
@given(
    w1=st.integers(1, 3),
    w2=st.integers(1, 3),
    multipliers=st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True),
    n=st.integers(1, 150),
    key=st.text(min_size=1, max_size=12),
)
def test_every_block_holds_the_ratio_exactly(
    w1: int, w2: int, multipliers: list[int], n: int, key: str
) -> None:
    ratio = {"active": w1, "placebo": w2}
    slots = permuted_block_list(SEED, key, ratio, multipliers, n)
    assert len(slots) >= n
    assert [s.seq for s in slots] == list(range(1, len(slots) + 1))
    allowed = set(block_sizes(ratio, multipliers))
    blocks: dict[int, list[str]] = {}
    for s in slots:
        blocks.setdefault(s.block_no, []).append(s.arm)
        assert s.block_size in allowed
    for block_no, arms in blocks.items():
        size = len(arms)
        assert size in allowed, block_no
        m = size // (w1 + w2)
        assert Counter(arms) == Counter({"active": w1 * m, "placebo": w2 * m})
    # the list ends on a whole block and needs no more than one block beyond n
    assert len(slots) - n < max(allowed)


def test_list_is_reproducible_from_the_seed_and_differs_between_strata_and_seeds() -> None:
    ratio = {"a": 1, "b": 1}
    one = permuted_block_list(SEED, "T/S1/mals", ratio, [1, 2, 3], 200)
    again = permuted_block_list(SEED, "T/S1/mals", ratio, [1, 2, 3], 200)
    other_stratum = permuted_block_list(SEED, "T/S2/mals", ratio, [1, 2, 3], 200)
    other_seed = permuted_block_list(bytes(32), "T/S1/mals", ratio, [1, 2, 3], 200)
    assert one == again
    assert [s.arm for s in one] != [s.arm for s in other_stratum]
    assert [s.arm for s in one] != [s.arm for s in other_seed]
    # block sizes really vary
    assert len({s.block_size for s in one}) == 3


def test_commitment_identifies_the_seed_without_revealing_it() -> None:
    assert commitment(SEED) == commitment(bytes(range(32)))
    assert commitment(SEED) != commitment(bytes(32))
    assert SEED.hex() not in commitment(SEED)


def test_kit_numbers_are_distinct() -> None:
    numbers = kit_numbers(SEED, "x", 5000)
    assert len(set(numbers)) == 5000
    assert all(n.isdigit() for n in numbers)


def test_seeded_random_is_uniform_enough() -> None:
    rng = SeededRandom(SEED, "u")
    draws = [rng.randrange(6) for _ in range(6000)]
    counts = Counter(draws)
    assert set(counts) == set(range(6))
    assert all(850 < c < 1150 for c in counts.values())
    assert 0.0 <= rng.random() < 1.0


def test_bad_configuration_is_an_input_error_naming_the_field() -> None:
    with pytest.raises(InputError) as err:
        permuted_block_list(SEED, "k", {"a": 1, "b": 1}, [0], 10)
    assert err.value.field == "block_multipliers"
    with pytest.raises(InputError) as err:
        pocock_simon({}, {"site": "A"}, {"a": 1, "b": 1}, random.Random(1), p_best=0.2)
    assert err.value.field == "p_best"


def test_pocock_simon_picks_the_arm_that_reduces_imbalance() -> None:
    counts = {"site": {"A": {"a": 3, "b": 1}}, "endotype": {"mals": {"a": 2, "b": 2}}}
    result = pocock_simon(
        counts, {"site": "A", "endotype": "mals"}, {"a": 1, "b": 1}, random.Random(0), p_best=1.0
    )
    assert result.arm == "b"
    assert result.best == ["b"]
    # a: site 4-1=3 + endotype 3-2=1; b: site 3-2=1 + endotype 3-2=1
    assert result.imbalance == {"a": 4.0, "b": 2.0}


def test_pocock_simon_keeps_marginal_balance_over_many_participants() -> None:
    rng = random.Random(7)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    totals: Counter[str] = Counter()
    for _ in range(400):
        levels = {"site": rng.choice("ABCD"), "endotype": rng.choice(["mals", "immunoparalysis"])}
        arm = pocock_simon(counts, levels, {"a": 1, "b": 1}, rng, p_best=0.8).arm
        totals[arm] += 1
        for factor, level in levels.items():
            cell = counts.setdefault(factor, {}).setdefault(level, {})
            cell[arm] = cell.get(arm, 0) + 1
    assert abs(totals["a"] - totals["b"]) <= 6
    for factor in counts.values():
        for cell in factor.values():
            assert abs(cell.get("a", 0) - cell.get("b", 0)) <= 6
