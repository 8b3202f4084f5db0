"""Trial set-up: service settings, trials and their sites, the concealed lists made from the
trial's seed, database lock, and the views of a trial and its audit rows as each role may read them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial import audit, eligibility, randomization
from immunostrat.trial.audit import Actor
from immunostrat.trial.errors import Conflict, Forbidden, NotFound
from immunostrat.trial.models import (
    AuditRow,
    Kit,
    ServiceSetting,
    Site,
    Stratum,
    Trial,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import (
    SiteSpec,
    TrialSpec,
)

# --------------------------------------------------------------------------------------------
# service settings


def get_or_create_setting(session: Session, key: str, make: Any) -> str:
    """A per-installation value generated once (e.g. the token signing key) and stored."""
    row = session.get(ServiceSetting, key)
    if row is None:
        row = ServiceSetting(key=key, value=str(make()))
        session.add(row)
        session.flush()
        audit.append(session, audit.SYSTEM, "create", "service_setting", key, new={"key": key})
    return row.value


# --------------------------------------------------------------------------------------------
# trials and sites


@dataclass(frozen=True)
class TrialSetup:
    trial_id: int
    code: str
    seed_hex: str
    """Handed out once: keep it in escrow; the database stores only its SHA-256 commitment."""
    n_kits: int


def trial_by_id(session: Session, trial_id: int) -> Trial:
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise NotFound(f"trial {trial_id} not found", field="trial_id")
    return trial


def trial_by_code(session: Session, code: str) -> Trial:
    trial = session.scalars(select(Trial).where(Trial.code == code)).one_or_none()
    if trial is None:
        raise NotFound(f"trial {code!r} not found", field="trial")
    return trial


def _protocol_version(protocol_id: str, given: str | None) -> str:
    version = eligibility.load(protocol_id).version
    if given and given != version:
        raise InputError(
            "protocol version differs from the shipped protocol",
            field="protocol_version",
            value=given,
            expected=version,
        )
    return version


def setup_trial(session: Session, actor: Actor, spec: TrialSpec, seed: bytes | None = None) -> TrialSetup:
    """Create a trial with its sites; generate the concealed list from a fresh secret seed."""
    if session.scalars(select(Trial.id).where(Trial.code == spec.code)).first() is not None:
        raise Conflict(f"trial {spec.code!r} exists", field="code")
    seed = seed if seed is not None else secrets.token_bytes(32)
    config = {
        "randomized_endotypes": spec.randomized_endotypes,
        "ratios": {e: spec.ratio_for(e) for e in spec.randomized_endotypes},
        "block_multipliers": spec.block_multipliers,
        "slots_per_stratum": spec.slots_per_stratum,
        "minimization_factors": list(spec.minimization_factors),
        "p_best": spec.p_best,
        "kits_per_arm": spec.kits_per_arm,
        "require_sepsis3": spec.sepsis3_required,
        "strata_from": spec.strata_from,
        "eligibility": spec.eligibility.model_dump(mode="json"),
        "adverse_events": spec.adverse_events.model_dump(mode="json"),
    }
    if spec.forms:
        # the trial file as set up, less what would make allocations predictable (kept above)
        config["definition"] = spec.model_dump(mode="json", exclude=set(CONCEALED_CONFIG) | {"sites"})
    trial = Trial(
        code=spec.code,
        title=spec.title,
        protocol_id=spec.protocol_id or "",
        protocol_version=_protocol_version(spec.protocol_id, spec.protocol_version)
        if spec.protocol_id
        else "",
        method=spec.method,
        arms=list(spec.arms),
        control_arm=spec.control_arm,
        config=config,
        seed_commitment=randomization.commitment(seed),
        status="open",
        created_by=actor.username,
        created_at=utcnow(),
    )
    session.add(trial)
    session.flush()
    public = {k: v for k, v in _trial_dict(trial).items() if k != "id"}
    audit.append(session, actor, "create", "trial", trial.id, new=public)
    n_kits = 0
    if trial.method == "minimization":
        n_kits += _make_kit_pool(session, trial, seed)
    for site_spec in spec.sites:
        _, made = _add_site(session, actor, trial, site_spec, seed)
        n_kits += made
    return TrialSetup(trial.id, trial.code, seed.hex(), n_kits)


def _check_seed(trial: Trial, seed: bytes) -> None:
    if randomization.commitment(seed) != trial.seed_commitment:
        raise Forbidden("the seed does not match this trial's commitment", field="seed")


def add_site(session: Session, actor: Actor, trial_id: int, spec: SiteSpec, seed_hex: str) -> Site:
    """Add a site after set-up: its lists come from the trial's seed (checked against the commitment)."""
    trial = trial_by_id(session, trial_id)
    try:
        seed = bytes.fromhex(seed_hex)
    except ValueError:
        raise InputError("seed must be hexadecimal", field="seed") from None
    _check_seed(trial, seed)
    site, _ = _add_site(session, actor, trial, spec, seed)
    return site


def _add_site(session: Session, actor: Actor, trial: Trial, spec: SiteSpec, seed: bytes) -> tuple[Site, int]:
    exists = session.scalars(select(Site.id).where(Site.trial_id == trial.id, Site.code == spec.code)).first()
    if exists is not None:
        raise Conflict(f"site {spec.code!r} exists in this trial", field="code")
    site = Site(trial_id=trial.id, code=spec.code, name=spec.name)
    session.add(site)
    session.flush()
    audit.append(session, actor, "create", "site", site.id, new={"trial": trial.code, "code": site.code})
    made = 0
    cfg = trial.config
    for endotype in cfg["randomized_endotypes"]:
        ratio = {a: int(w) for a, w in cfg["ratios"][endotype].items()}
        stratum = Stratum(
            trial_id=trial.id,
            site_id=site.id,
            endotype=endotype,
            ratio=ratio,
            next_seq=1,
            n_slots=0,
        )
        session.add(stratum)
        session.flush()
        if trial.method == "block":
            key = f"{trial.code}/{site.code}/{endotype}"
            slots = randomization.permuted_block_list(
                seed, key, ratio, cfg["block_multipliers"], int(cfg["slots_per_stratum"])
            )
            numbers = _fresh_kit_numbers(session, trial, seed, key, len(slots))
            session.add_all(
                Kit(
                    trial_id=trial.id,
                    kit_number=numbers[i],
                    arm=s.arm,
                    stratum_id=stratum.id,
                    seq=s.seq,
                    block_no=s.block_no,
                    block_size=s.block_size,
                    used=False,
                )
                for i, s in enumerate(slots)
            )
            stratum.n_slots = len(slots)
            made += len(slots)
        audit.append(
            session,
            actor,
            "create",
            "stratum",
            stratum.id,
            new={"site": site.code, "endotype": endotype, "ratio": ratio, "n_slots": stratum.n_slots},
        )
    session.flush()
    return site, made


def _fresh_kit_numbers(session: Session, trial: Trial, seed: bytes, label: str, count: int) -> list[str]:
    """Kit numbers unique within the trial (a rare clash with an earlier stratum is drawn again)."""
    taken = set(session.scalars(select(Kit.kit_number).where(Kit.trial_id == trial.id)))
    out: list[str] = []
    attempt = 0
    while len(out) < count:
        numbers = randomization.kit_numbers(seed, f"{label}#{attempt}", count * 2)
        for n in numbers:
            if n not in taken:
                taken.add(n)
                out.append(n)
                if len(out) == count:
                    break
        attempt += 1
    return out


def _make_kit_pool(session: Session, trial: Trial, seed: bytes) -> int:
    per_arm = int(trial.config["kits_per_arm"])
    total = per_arm * len(trial.arms)
    numbers = _fresh_kit_numbers(session, trial, seed, f"{trial.code}/pool", total)
    session.add_all(
        Kit(trial_id=trial.id, kit_number=numbers[i * per_arm + j], arm=arm, stratum_id=None, seq=j + 1)
        for i, arm in enumerate(trial.arms)
        for j in range(per_arm)
    )
    session.flush()
    audit.append(session, audit.SYSTEM, "create", "kit_pool", trial.id, new={"kits": total})
    return total


def site_by_code(session: Session, trial: Trial, code: str) -> Site:
    site = session.scalars(select(Site).where(Site.trial_id == trial.id, Site.code == code)).one_or_none()
    if site is None:
        raise InputError("unknown site", field="site", value=code, expected="a site code of this trial")
    return site


def lock_trial(session: Session, actor: Actor, trial_id: int) -> Trial:
    """Database lock: no more data entry; unblinded export becomes possible."""
    trial = trial_by_id(session, trial_id)
    old = trial.status
    trial.status = "locked"
    audit.append(session, actor, "update", "trial", trial.id, old={"status": old}, new={"status": "locked"})
    return trial


def _trial_dict(trial: Trial) -> dict[str, Any]:
    return {
        "id": trial.id,
        "code": trial.code,
        "title": trial.title,
        "protocol_id": trial.protocol_id,
        "protocol_version": trial.protocol_version,
        "method": trial.method,
        "arms": trial.arms,
        "control_arm": trial.control_arm,
        "config": trial.config,
        "status": trial.status,
        "seed_commitment": trial.seed_commitment,
    }


CONCEALED_CONFIG = ("block_multipliers", "slots_per_stratum", "kits_per_arm")
"""Settings that would make allocations predictable: shown to the set-up and unblinded roles only."""


def trial_view(session: Session, trial: Trial, actor: Actor | None = None) -> dict[str, Any]:
    out = _trial_dict(trial)
    if actor is not None and actor.role != "admin":
        out["config"] = {k: v for k, v in trial.config.items() if k not in CONCEALED_CONFIG}
    out["sites"] = [{"id": s.id, "code": s.code, "name": s.name} for s in trial.sites]
    out["created_at"] = as_utc(trial.created_at)
    return out


# what each audited entity's set-up rows carry that would make allocations predictable
CONCEALED_AUDIT_KEYS = {"stratum": ("n_slots",), "kit_pool": ("kits",)}


def audit_row_view(row: AuditRow, actor: Actor) -> dict[str, Any]:
    """One audit row as ``actor`` may read it: the concealed set-up (block multipliers, slots per
    stratum, kits per arm) only for the roles that see it in :func:`trial_view`. The stored row, and
    so its hash, stays whole; ``audit verify`` checks it on the server."""
    old, new = row.old, row.new
    if actor.role != "admin":
        old, new = (_conceal(row.entity, payload) for payload in (old, new))
    return {
        "seq": row.seq,
        "at": row.at,
        "actor": row.actor,
        "role": row.role,
        "action": row.action,
        "entity": row.entity,
        "entity_id": row.entity_id,
        "old": old,
        "new": new,
        "hash": row.hash,
    }


def _conceal(entity: str, payload: str | None) -> str | None:
    """The row's canonical JSON without the concealed keys (rows of other entities untouched)."""
    if payload is None or (entity not in CONCEALED_AUDIT_KEYS and entity != "trial"):
        return payload
    data = json.loads(payload)
    if not isinstance(data, dict):
        return payload
    out = {k: v for k, v in data.items() if k not in CONCEALED_AUDIT_KEYS.get(entity, ())}
    if entity == "trial" and isinstance(out.get("config"), dict):
        out["config"] = {k: v for k, v in out["config"].items() if k not in CONCEALED_CONFIG}
    return audit.canonical(out)
