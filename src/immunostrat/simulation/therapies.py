"""Therapies as time-limited effects on the Reynolds model (insilico.md section 4.1), read from data.

Each therapy in ``therapies.yaml`` is a list of effects, each acting through one model hook (see
:class:`immunostrat.simulation.model.Effects`) with a strength, a start time and a duration relative to the
start of treatment, and an optional exponential decay (half-life) for cell persistence. A
:class:`Schedule` assigns one therapy and one treatment start time to each patient of a batch; the
integrator asks it for the effects at each step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from immunostrat.errors import InputError

from .model import BoolArray, Effects, FloatArray, IntArray

HOOKS: tuple[str, ...] = ("il1", "kpn_gain", "cinf_gain", "ca_source", "kill", "hla_gain")


@dataclass(frozen=True)
class Effect:
    """One hook acting from ``start_h`` for ``duration_h`` hours after treatment start, with ``strength``
    decaying as 2^(-(t - start)/half_life_h) when a half-life is given."""

    hook: str
    strength: float
    start_h: float = 0.0
    duration_h: float = math.inf
    half_life_h: float | None = None

    def __post_init__(self) -> None:
        if self.hook not in HOOKS:
            raise InputError("unknown therapy hook", field="hook", value=self.hook, expected=", ".join(HOOKS))
        if self.duration_h < 0 or self.start_h < 0:
            raise InputError("negative effect time", field="duration_h", value=self.duration_h)


@dataclass(frozen=True)
class Therapy:
    id: str
    name: str
    effects: tuple[Effect, ...] = ()
    source: str = ""

    def scaled(self, factor: float) -> Therapy:
        """The same regimen with every strength times ``factor`` (dose-response sweeps)."""
        return Therapy(
            id=f"{self.id}x{factor:g}",
            name=f"{self.name} x{factor:g}",
            effects=tuple(
                Effect(e.hook, e.strength * factor, e.start_h, e.duration_h, e.half_life_h)
                for e in self.effects
            ),
            source=self.source,
        )

    @property
    def end_h(self) -> float:
        """Hours after treatment start when the last effect ends (0 for placebo)."""
        return max((e.start_h + e.duration_h for e in self.effects), default=0.0)


def parse_therapies(data: Mapping[str, Any], file: str = "therapies.yaml") -> dict[str, Therapy]:
    """Therapies from the YAML structure; bad entries raise :class:`InputError` naming the field."""
    out: dict[str, Therapy] = {}
    items = data.get("therapies")
    if not isinstance(items, list):
        raise InputError("missing 'therapies' list", file=file, field="therapies")
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or "id" not in item:
            raise InputError("therapy entry without id", file=file, row=i, field="id")
        effects = []
        for e in item.get("effects") or []:
            try:
                effects.append(
                    Effect(
                        hook=str(e["hook"]),
                        strength=float(e["strength"]),
                        start_h=float(e.get("start_h", 0.0)),
                        duration_h=float(e.get("duration_h", math.inf)),
                        half_life_h=None if e.get("half_life_h") is None else float(e["half_life_h"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"bad effect in therapy {item['id']}: {exc}", file=file, row=i) from exc
        tid = str(item["id"])
        out[tid] = Therapy(tid, str(item.get("name", tid)), tuple(effects), str(item.get("source", "")))
    return out


@lru_cache(maxsize=1)
def _load_default() -> dict[str, Therapy]:
    text = resources.files("immunostrat.simulation").joinpath("therapies.yaml").read_text(encoding="utf-8")
    return parse_therapies(yaml.safe_load(text))


def load_therapies() -> dict[str, Therapy]:
    """The shipped therapies by id (placebo, anakinra, interferon_gamma, msc, msc_secretome, ...)."""
    return dict(_load_default())


def get_therapy(therapy: str | Therapy) -> Therapy:
    if isinstance(therapy, Therapy):
        return therapy
    known = _load_default()
    if therapy not in known:
        raise InputError("unknown therapy", field="therapy", value=therapy, expected=", ".join(sorted(known)))
    return known[therapy]


@dataclass(frozen=True)
class _Component:
    hook: str
    strength: FloatArray  # (n,), 0 for patients not on this component
    start: FloatArray  # absolute hours
    end: FloatArray
    rate: FloatArray  # decay rate ln2/half-life (0 = none)


@dataclass(frozen=True)
class Schedule:
    """Per-patient therapy effects: patient i gets ``therapies[i]`` from ``start_h[i]`` (absolute hours).

    Implements the integrator's ``EffectSchedule`` protocol. Effects on the same hook add up; ``il1`` is
    capped at 1 (complete block).
    """

    components: tuple[_Component, ...]
    n: int
    first_start: float = field(default=math.inf)
    last_end: float = field(default=-math.inf)

    @classmethod
    def build(
        cls, therapies: Sequence[str | Therapy] | str | Therapy, start_h: npt.ArrayLike, n: int | None = None
    ) -> Schedule:
        starts = np.atleast_1d(np.asarray(start_h, dtype=np.float64))
        if isinstance(therapies, str | Therapy):
            size = n if n is not None else starts.size
            arms: list[Therapy] = [get_therapy(therapies)] * size
        else:
            arms = [get_therapy(t) for t in therapies]
            size = len(arms)
        starts = np.broadcast_to(starts, (size,))
        comps: list[_Component] = []
        by_id: dict[str, list[int]] = {}
        objs: dict[str, Therapy] = {}
        for i, th in enumerate(arms):
            by_id.setdefault(th.id, []).append(i)
            objs[th.id] = th
        for tid, rows_list in by_id.items():
            rows = np.asarray(rows_list)
            for e in objs[tid].effects:
                if e.strength == 0.0:
                    continue
                strength = np.zeros(size)
                strength[rows] = e.strength
                start = np.full(size, np.inf)
                start[rows] = starts[rows] + e.start_h
                end = np.full(size, -np.inf)
                end[rows] = starts[rows] + e.start_h + e.duration_h
                rate = np.zeros(size)
                if e.half_life_h:
                    rate[rows] = math.log(2.0) / e.half_life_h
                comps.append(_Component(e.hook, strength, start, end, rate))
        return cls._of(tuple(comps), size)

    @classmethod
    def _of(cls, comps: tuple[_Component, ...], n: int) -> Schedule:
        first = min((float(c.start.min()) for c in comps if c.start.size), default=math.inf)
        last = max((float(c.end.max()) for c in comps if c.end.size), default=-math.inf)
        return cls(comps, n, first, last)

    def effects_at(self, t: float) -> Effects | None:
        if not self.components or t < self.first_start or t >= self.last_end:
            return None
        totals: dict[str, FloatArray] = {}
        for c in self.components:
            on = (t >= c.start) & (t < c.end)
            if not on.any():
                continue
            value = np.where(on, c.strength, 0.0)
            if c.rate.any():
                value = value * np.exp(-c.rate * np.where(on, t - c.start, 0.0))
            totals[c.hook] = totals[c.hook] + value if c.hook in totals else value
        if not totals:
            return None
        if "il1" in totals:
            totals["il1"] = np.minimum(totals["il1"], 1.0)
        return Effects(**totals)

    def active_after(self, t: float) -> bool:
        return bool(self.components) and t < self.last_end

    def take(self, index: IntArray | BoolArray) -> Schedule:
        comps = tuple(
            _Component(c.hook, c.strength[index], c.start[index], c.end[index], c.rate[index])
            for c in self.components
        )
        size = int(np.count_nonzero(index)) if np.asarray(index).dtype == np.bool_ else len(index)
        return Schedule._of(comps, size)


def combine(*schedules: Schedule | None) -> Schedule | None:
    """One schedule with the effects of all given schedules (for the same patients) added up."""
    parts = [s for s in schedules if s is not None]
    if not parts:
        return None
    sizes = {s.n for s in parts}
    if len(sizes) != 1:
        raise ValueError(f"schedules for different numbers of patients: {sorted(sizes)}")
    return Schedule._of(tuple(c for s in parts for c in s.components), parts[0].n)
