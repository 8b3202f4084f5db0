"""Randomization methods as pure functions (no database): permuted blocks and Pocock-Simon minimization.

* :func:`permuted_block_list` turns a secret seed into the concealed list of one stratum: permuted
  blocks whose size varies at random among multiples of the ratio's sum (1:1 with multipliers
  1, 2, 3 gives blocks of 2, 4 and 6), each block holding the arms in the exact ratio.
* :func:`pocock_simon` chooses the arm that minimises the imbalance over the prognostic factors
  (Pocock SJ, Simon R. Biometrics 1975;31:103-15), with a biased coin.

The generator is HMAC-SHA256 in counter mode keyed by the seed, so the list is reproducible from the
seed (which the set-up hands out once and stores only as a SHA-256 commitment) and unpredictable
without it.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from immunostrat.errors import InputError


class SeededRandom(random.Random):
    """A ``random.Random`` whose bits come from HMAC-SHA256(seed, label || counter)."""

    def __init__(self, seed: bytes, label: str) -> None:
        self._key = hmac.new(seed, label.encode(), hashlib.sha256).digest()
        self._counter = 0
        self._pool = b""
        super().__init__(0)

    def seed(self, *_args: object, **_kwargs: object) -> None:  # the key is the seed
        return None

    def _bytes(self, n: int) -> bytes:
        while len(self._pool) < n:
            self._pool += hmac.new(self._key, self._counter.to_bytes(8, "big"), hashlib.sha256).digest()
            self._counter += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out

    def getrandbits(self, k: int) -> int:
        if k <= 0:
            return 0
        value = int.from_bytes(self._bytes((k + 7) // 8), "big")
        return value >> ((k + 7) // 8 * 8 - k)

    def random(self) -> float:
        return self.getrandbits(53) / float(1 << 53)


def commitment(seed: bytes) -> str:
    """What is stored instead of the seed: proves later which seed generated the list."""
    return hashlib.sha256(b"immunostrat-seed\n" + seed).hexdigest()


def check_ratio(ratio: Mapping[str, int], arms: Sequence[str], field: str = "ratio") -> dict[str, int]:
    out: dict[str, int] = {}
    for arm in arms:
        weight = ratio.get(arm)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise InputError(
                "each arm needs a positive whole weight", field=field, value=weight, expected=arm
            )
        out[arm] = weight
    extra = sorted(set(ratio) - set(arms))
    if extra:
        raise InputError("ratio names an unknown arm", field=field, value=extra[0], expected=", ".join(arms))
    return out


def block_sizes(ratio: Mapping[str, int], multipliers: Sequence[int]) -> list[int]:
    unit = sum(ratio.values())
    return [unit * m for m in multipliers]


@dataclass(frozen=True)
class Slot:
    """One position of a stratum's concealed list."""

    seq: int
    block_no: int
    block_size: int
    arm: str


def permuted_block_list(
    seed: bytes,
    stratum_key: str,
    ratio: Mapping[str, int],
    multipliers: Sequence[int],
    n_slots: int,
) -> list[Slot]:
    """At least ``n_slots`` slots (whole blocks) for one stratum, deterministic in (seed, stratum_key)."""
    if not multipliers or any(m < 1 for m in multipliers):
        raise InputError(
            "block multipliers must be positive", field="block_multipliers", value=list(multipliers)
        )
    if n_slots < 1:
        raise InputError("a stratum needs at least one slot", field="slots_per_stratum", value=n_slots)
    rng = SeededRandom(seed, f"blocks/{stratum_key}")
    slots: list[Slot] = []
    block_no = 0
    while len(slots) < n_slots:
        block_no += 1
        m = rng.choice(list(multipliers))
        block = [arm for arm, weight in ratio.items() for _ in range(weight * m)]
        rng.shuffle(block)
        size = len(block)
        for arm in block:
            slots.append(Slot(len(slots) + 1, block_no, size, arm))
    return slots


def kit_numbers(seed: bytes, label: str, count: int, digits: int = 6) -> list[str]:
    """``count`` distinct random kit numbers (they carry no information about the arm)."""
    low, high = 10 ** (digits - 1), 10**digits
    if count > (high - low) // 2:
        digits += 1
        low, high = 10 ** (digits - 1), 10**digits
    rng = SeededRandom(seed, f"kits/{label}")
    return [str(n) for n in rng.sample(range(low, high), count)]


@dataclass(frozen=True)
class MinimizationResult:
    arm: str
    imbalance: dict[str, float]
    """Total weighted imbalance if the participant went to each arm."""
    best: list[str]
    followed_best: bool


def pocock_simon(
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    levels: Mapping[str, str],
    ratio: Mapping[str, int],
    rng: random.Random,
    *,
    weights: Mapping[str, float] | None = None,
    p_best: float = 0.8,
) -> MinimizationResult:
    """Pocock-Simon minimization with the range as imbalance measure.

    ``counts[factor][level][arm]`` are the participants already allocated; ``levels[factor]`` is the
    new participant's level of each factor. Counts are divided by the arm's ratio weight so that an
    unequal ratio is targeted. The arm with the least total imbalance is chosen with probability
    ``p_best`` (ties broken at random), otherwise one of the other arms at random.
    """
    if not 0.5 <= p_best <= 1.0:
        raise InputError("p_best must be between 0.5 and 1", field="p_best", value=p_best)
    arms = list(ratio)
    imbalance: dict[str, float] = {}
    for candidate in arms:
        total = 0.0
        for factor, level in levels.items():
            cell = counts.get(factor, {}).get(level, {})
            scaled = [(cell.get(arm, 0) + (1 if arm == candidate else 0)) / ratio[arm] for arm in arms]
            total += (weights or {}).get(factor, 1.0) * (max(scaled) - min(scaled))
        imbalance[candidate] = total
    low = min(imbalance.values())
    best = [a for a in arms if abs(imbalance[a] - low) < 1e-12]
    if len(best) == len(arms):
        # all equal: allocate at random in the target ratio
        pool = [a for a in arms for _ in range(ratio[a])]
        return MinimizationResult(rng.choice(pool), imbalance, best, True)
    if rng.random() < p_best:
        return MinimizationResult(rng.choice(best), imbalance, best, True)
    others = [a for a in arms if a not in best]
    return MinimizationResult(rng.choice(others), imbalance, best, False)
