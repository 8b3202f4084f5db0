"""The credibility plan (``credibility.yaml``) as typed, checked data: context of use, acceptance criterion,
free mechanisms with their calibration grids, regimens and the comparator trials (training or held out)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from immunostrat.analysis.stats import Estimate, risk_difference
from immunostrat.errors import InputError

from ..population import ENDOTYPE_NAMES, IMMUNOPARALYSIS, INTERMEDIATE, MALS
from ..therapies import HOOKS, Effect, Therapy

ROLES = ("training", "held_out", "design")
ENDPOINTS = ("mortality", "sofa_response", "immune_reversal_d15")
SUBGROUPS: dict[str, tuple[int, ...]] = {
    "all": (MALS, IMMUNOPARALYSIS, INTERMEDIATE),
    "MALS": (MALS,),
    "immunoparalysis": (IMMUNOPARALYSIS,),
    "MALS+immunoparalysis": (MALS, IMMUNOPARALYSIS),
}
_CODE = {name: i for i, name in enumerate(ENDOTYPE_NAMES)}


@dataclass(frozen=True)
class Mechanism:
    """A free therapy strength: a multiplier of its regimens' design strengths, with its calibration grid."""

    id: str
    hook: str
    grid: tuple[float, ...]


@dataclass(frozen=True)
class Regimen:
    """One unit (multiplier 1) of a mechanism with a trial's schedule (hours from randomization)."""

    id: str
    mechanism: str
    source: str
    effects: tuple[Effect, ...]

    def therapy(self, multiplier: float) -> Therapy:
        """The regimen with every strength times ``multiplier`` (an ``il1`` block is capped at 1 later)."""
        return Therapy(
            f"{self.id}x{multiplier:g}",
            f"{self.id} x{multiplier:g}",
            tuple(
                Effect(e.hook, e.strength * multiplier, e.start_h, e.duration_h, e.half_life_h)
                for e in self.effects
            ),
            self.source,
        )


@dataclass(frozen=True)
class Comparator:
    """A published trial result the model is compared with (see credibility.yaml for the fields)."""

    id: str
    trial: str
    source: str
    role: str
    mechanism: str
    design: str
    subgroup: tuple[int, ...]
    control_rate: float | None  # None: the VPop as it is (designs)
    strata: Mapping[int, float] | None
    regimen_by_stratum: Mapping[int, str]
    only_stratum: int | None
    endpoint: str
    horizon_days: int
    counts: tuple[int, int, int, int]  # treatment events, n, control events, n
    stratum: bool

    @property
    def published(self) -> Estimate:
        """The published risk difference (treatment - control) with its Newcombe 95% interval."""
        return risk_difference(*self.counts, with_p=False)

    @property
    def published_points(self) -> tuple[float, float, float]:
        est = self.published
        assert est.estimate is not None and est.ci_low is not None and est.ci_high is not None
        return 100.0 * est.estimate, 100.0 * est.ci_low, 100.0 * est.ci_high

    @property
    def arm_sizes(self) -> tuple[int, int]:
        return self.counts[1], self.counts[3]

    @property
    def regimens(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.regimen_by_stratum.values()))


@dataclass(frozen=True)
class CredibilityPlan:
    context_of_use: str
    interval: float
    sign_for_strata: bool
    min_share_held_out: float
    mechanisms: Mapping[str, Mechanism]
    regimens: Mapping[str, Regimen]
    comparators: tuple[Comparator, ...]
    #: designs compared by the calibrated model (role "design", no published result): a finding only
    designs: tuple[Comparator, ...] = ()

    def training(self) -> tuple[Comparator, ...]:
        return tuple(c for c in self.comparators if c.role == "training")

    def held_out(self) -> tuple[Comparator, ...]:
        return tuple(c for c in self.comparators if c.role == "held_out")

    def comparator(self, cid: str) -> Comparator:
        for c in self.comparators:
            if c.id == cid:
                return c
        raise KeyError(cid)


def _need(item: Mapping[str, Any], key: str, file: str, row: int) -> Any:
    if key not in item:
        raise InputError(f"missing field {key!r}", file=file, row=row, field=key)
    return item[key]


def _effects(items: Any, file: str, row: int) -> tuple[Effect, ...]:
    out = []
    for e in items or []:
        if str(e.get("hook")) not in HOOKS:
            raise InputError("unknown hook", file=file, row=row, field="hook", value=e.get("hook"))
        half = e.get("half_life_h")
        out.append(
            Effect(
                str(e["hook"]),
                float(e["strength"]),
                float(e.get("start_h", 0.0)),
                float(e.get("duration_h", math.inf)),
                None if half is None else float(half),
            )
        )
    return tuple(out)


def parse_plan(data: Mapping[str, Any], file: str = "credibility.yaml") -> CredibilityPlan:
    """The plan from its YAML structure; every reference (mechanism, regimen, stratum) is checked."""
    acc = _need(data, "acceptance", file, 0)
    mechs: dict[str, Mechanism] = {}
    for i, m in enumerate(_need(data, "mechanisms", file, 0), start=1):
        grid = tuple(float(v) for v in _need(m, "grid", file, i))
        if not grid or any(v < 0 for v in grid):
            raise InputError("grid must be non-empty and >= 0", file=file, row=i, field="grid")
        mechs[str(m["id"])] = Mechanism(str(m["id"]), str(m.get("hook", "")), grid)
    regs: dict[str, Regimen] = {}
    for i, r in enumerate(_need(data, "regimens", file, 0), start=1):
        mech = str(_need(r, "mechanism", file, i))
        if mech not in mechs:
            raise InputError("unknown mechanism", file=file, row=i, field="mechanism", value=mech)
        regs[str(r["id"])] = Regimen(
            str(r["id"]), mech, str(r.get("source", "")), _effects(r.get("effects"), file, i)
        )
    comps: list[Comparator] = []
    for i, c in enumerate(_need(data, "comparators", file, 0), start=1):
        role = str(_need(c, "role", file, i))
        if role not in ROLES:
            raise InputError(
                "bad role", file=file, row=i, field="role", value=role, expected=", ".join(ROLES)
            )
        endpoint = str(_need(c, "endpoint", file, i))
        if endpoint not in ENDPOINTS:
            raise InputError("bad endpoint", file=file, row=i, field="endpoint", value=endpoint)
        pop = _need(c, "population", file, i)
        sub = str(pop.get("subgroup", "all"))
        if sub not in SUBGROUPS:
            raise InputError("bad subgroup", file=file, row=i, field="subgroup", value=sub)
        strata = {_CODE[k]: float(v) for k, v in pop["strata"].items()} if pop.get("strata") else None
        if "regimen_by_stratum" in c:
            by = {_CODE[k]: str(v) for k, v in c["regimen_by_stratum"].items()}
        else:
            by = dict.fromkeys(SUBGROUPS[sub], str(_need(c, "regimen", file, i)))
        for reg in by.values():
            if reg not in regs:
                raise InputError("unknown regimen", file=file, row=i, field="regimen", value=reg)
        counts = c["counts"]
        x1, n1 = (int(v) for v in counts["treatment"])
        x0, n0 = (int(v) for v in counts["control"])
        only = c.get("only_stratum")
        comps.append(
            Comparator(
                id=str(c["id"]),
                trial=str(c.get("trial", c["id"])),
                source=str(_need(c, "source", file, i)),
                role=role,
                mechanism=str(c.get("mechanism", "")),
                design=str(c.get("design", "")),
                subgroup=SUBGROUPS[sub],
                control_rate=float(_need(pop, "control_rate", file, i)),
                strata=strata,
                regimen_by_stratum=by,
                only_stratum=None if only is None else _CODE[str(only)],
                endpoint=endpoint,
                horizon_days=int(c.get("horizon_days", 28)),
                counts=(x1, n1, x0, n0),
                stratum=bool(c.get("stratum", False)),
            )
        )
    designs: list[Comparator] = []
    spec = data.get("designs") or {}
    half = int(spec.get("n_per_arm", 138))
    for i, d in enumerate(spec.get("arms") or [], start=1):
        sub = str(d.get("subgroup", "all"))
        if sub not in SUBGROUPS:
            raise InputError("bad subgroup", file=file, row=i, field="subgroup", value=sub)
        if "regimen_by_stratum" in d:
            by = {_CODE[k]: str(v) for k, v in d["regimen_by_stratum"].items()}
        else:
            by = dict.fromkeys(SUBGROUPS[sub], str(_need(d, "regimen", file, i)))
        for reg in by.values():
            if reg not in regs:
                raise InputError("unknown regimen", file=file, row=i, field="regimen", value=reg)
        for endpoint in spec.get("endpoints", ["sofa_response"]):
            if endpoint not in ENDPOINTS:
                raise InputError("bad endpoint", file=file, row=i, field="endpoints", value=endpoint)
            designs.append(
                Comparator(
                    id=f"{d['id']} ({endpoint})",
                    trial=str(d["id"]),
                    source="design",
                    role="design",
                    mechanism="",
                    design=str(d["id"]),
                    subgroup=SUBGROUPS[sub],
                    control_rate=None,
                    strata=None,
                    regimen_by_stratum=by,
                    only_stratum=None,
                    endpoint=str(endpoint),
                    horizon_days=28,
                    counts=(0, half, 0, half),
                    stratum=False,
                )
            )
    ids = [c.id for c in comps]
    if len(set(ids)) != len(ids):
        raise InputError("duplicate comparator ids", file=file, field="id")
    return CredibilityPlan(
        context_of_use=str(data.get("context_of_use", "")).strip(),
        interval=float(acc["interval"]),
        sign_for_strata=bool(acc.get("sign_for_strata", True)),
        min_share_held_out=float(acc["min_share_held_out"]),
        mechanisms=mechs,
        regimens=regs,
        comparators=tuple(comps),
        designs=tuple(designs),
    )


def load_plan(path: str | Path | None = None) -> CredibilityPlan:
    """The shipped plan, or the one at ``path``."""
    if path is None:
        text = (
            resources.files("immunostrat.simulation.validation")
            .joinpath("credibility.yaml")
            .read_text("utf-8")
        )
        return parse_plan(yaml.safe_load(text))
    p = Path(path)
    return parse_plan(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))
