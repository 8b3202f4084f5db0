"""Arm names out of what blinded roles read: a trial's view, its definition and its audit rows.

Every role but the unblinded ones (:data:`~immunostrat.trial.schemas.UNBLINDED_ROLES`) reads arms
under neutral labels ("arm 1", "arm 2", in the order the trial file lists them) wherever the trial
names them as data: ``arms``, ``control_arm`` and the arm-keyed ``ratios`` of a trial's view, of its
configuration and of the trial file stored with it (``GET /trials/{id}/definition``), and the
``ratio`` of a stratum's set-up row in the audit trail. The shape stays the same, so a client that
counts arms or reads a ratio still works. Free text (the title, a description) is the trial team's
to write and is not rewritten.

One function per kind of answer, called by the API and by the pages alike; the stored rows (and so
the audit chain's hashes) stay whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from immunostrat.trial import audit
from immunostrat.trial.audit import Actor
from immunostrat.trial.models import Stratum, Trial
from immunostrat.trial.schemas import UNBLINDED_ROLES

ARM_KEYS = ("arms", "control_arm", "ratios")
"""Where a trial, its configuration and its file name arms."""


def is_blinded(actor: Actor | str) -> bool:
    """Whether ``actor`` (or a role) must not read arm names."""
    role = actor if isinstance(actor, str) else actor.role
    return role not in UNBLINDED_ROLES


def neutral_labels(arms: Iterable[str]) -> dict[str, str]:
    """Each arm's neutral label, by its place in the trial file: ``{"drug": "arm 1", ...}``."""
    return {arm: f"arm {i}" for i, arm in enumerate(arms, start=1)}


def _relabel_ratio(ratio: Any, labels: Mapping[str, str]) -> Any:
    if not isinstance(ratio, dict):
        return ratio
    return {labels.get(arm, _unknown(labels, arm)): weight for arm, weight in ratio.items()}


def _unknown(labels: Mapping[str, str], arm: str) -> str:
    """A name that is not one of the trial's arms (none should be) still must not pass."""
    return "another arm"


def _relabel(data: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """``data`` with its ``arms``, ``control_arm`` and ``ratios`` under neutral labels (a copy)."""
    out = dict(data)
    if isinstance(out.get("arms"), list):
        out["arms"] = [labels.get(a, _unknown(labels, a)) for a in out["arms"]]
    if isinstance(out.get("control_arm"), str):
        out["control_arm"] = labels.get(out["control_arm"], _unknown(labels, out["control_arm"]))
    if isinstance(out.get("ratios"), dict):
        out["ratios"] = {stratum: _relabel_ratio(r, labels) for stratum, r in out["ratios"].items()}
    return out


def _labels_of(data: Mapping[str, Any]) -> dict[str, str]:
    arms = data.get("arms")
    return neutral_labels(arms if isinstance(arms, list) else [])


def blind_trial_view(view: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """A trial's view (``trial_view``) as ``actor`` may read it: for blinded roles the arms, the
    control arm and the ratios, also inside ``config`` and the stored trial file, neutrally labelled."""
    return view if not is_blinded(actor) else _blind_trial(view)


def _blind_trial(view: dict[str, Any]) -> dict[str, Any]:
    labels = _labels_of(view)
    out = _relabel(view, labels)
    config = out.get("config")
    if isinstance(config, dict):
        config = _relabel(config, labels)
        if isinstance(config.get("definition"), dict):
            config["definition"] = _relabel(config["definition"], labels)
        out["config"] = config
    return out


def blind_definition(definition: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """A trial file (``GET /trials/{id}/definition``) as ``actor`` may read it."""
    if not is_blinded(actor):
        return definition
    return _relabel(definition, _labels_of(definition))


def blind_audit_rows(session: Session, rows: list[dict[str, Any]], actor: Actor) -> list[dict[str, Any]]:
    """Audit rows (``audit_row_view``) as ``actor`` may read them: a trial's creation row and its
    strata's set-up rows carry arm names; blinded roles read them neutrally labelled, with the labels
    of that trial (so "arm 1" is the same arm in both). Each row keeps its stored hash: ``audit
    verify`` checks the whole row on the server."""
    if not is_blinded(actor):
        return rows
    trial_arms: dict[int, dict[str, str]] = {}

    def labels_for_stratum(stratum_id: str) -> dict[str, str]:
        stratum = session.get(Stratum, int(stratum_id)) if stratum_id.isdigit() else None
        if stratum is None:
            return {}
        if stratum.trial_id not in trial_arms:
            trial = session.get(Trial, stratum.trial_id)
            trial_arms[stratum.trial_id] = neutral_labels(trial.arms if trial is not None else [])
        return trial_arms[stratum.trial_id]

    out = []
    for row in rows:
        if row["entity"] in ("trial", "stratum"):
            row = dict(row)
            for key in ("old", "new"):
                row[key] = _blind_payload(row["entity"], row["entity_id"], row[key], labels_for_stratum)
        out.append(row)
    return out


def _blind_payload(entity: str, entity_id: str, payload: str | None, stratum_labels: Any) -> str | None:
    if payload is None:
        return None
    data = json.loads(payload)
    if not isinstance(data, dict):
        return payload
    if entity == "trial":
        data = _blind_trial(data)
    elif "ratio" in data:
        data = {**data, "ratio": _relabel_ratio(data["ratio"], stratum_labels(entity_id))}
    return audit.canonical(data)
