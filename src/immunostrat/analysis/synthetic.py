"""Synthetic trial exports in the :mod:`immunostrat.analysis.schema` (demos, tests, calibration).

``synthetic_trial`` builds an ImmunoSep-shaped sepsis trial whose primary-endpoint responder
status is planted exactly: each participant is a latent responder with probability
``p_control`` (control arm) or ``p_control + effect`` (treated arm), and the daily SOFA course is
built so that the ImmunoSep primary endpoint (domain.md A1: day-1 SOFA minus the mean of days 2-9
>= 1.4, death -> 24, LOCF) recovers that status, including after deaths and missing days. The
true risk difference is therefore ``effect`` and the analysis can be checked against it.

Default proportions follow ImmunoSep's design assumption (domain.md A1: 20% placebo vs 40%
immunotherapy responders) and its stratum mix (48 MALS of 276 analysed, 17%). The numbers
here are a generator's knobs, not clinical facts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from immunostrat.analysis import schema
from immunostrat.analysis.schema import INFECTION_STATUS_ORDER, SOFA_COMPONENTS, Manifest, TrialExport

# domain.md A1: ferritin > 4,420 ng/mL = MALS; HLA-DR < 5,000 AB/C (with ferritin <= 4,420) = immunoparalysis
MALS_FERRITIN_NG_ML = 4420.0
IMMUNOPARALYSIS_HLA_DR_ABC = 5000.0
# domain.md A1 (SAP): immunoparalysis reversal = HLA-DR > 8,000 with ferritin < 4,420 at day 15
REVERSAL_HLA_DR_ABC = 8000.0
# domain.md A1: 672 screened for 281 randomized
SCREENED_PER_RANDOMIZED = 672 / 281

_SITES = ["CAP", "HAP", "VAP", "bacteremia"]
TREATED = "immunotherapy"
CONTROL = "placebo"

_EXCLUSIONS = (
    # domain.md A1 exclusions (selected) and the stratification ("neither" -> not randomized)
    ("intermediate endotype (neither MALS nor immunoparalysis)", 0.45),
    ("infection site excluded (pyelonephritis, intra-abdominal, meningeal, skin)", 0.2),
    ("stage IV malignancy", 0.1),
    ("do-not-resuscitate decision", 0.1),
    ("neutropenia", 0.05),
    ("other exclusion criterion", 0.1),
)


def _allocate(rng: np.random.Generator, site: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    """1:1 permuted blocks of 4 within each site x stratum (ImmunoSep allocated within stratum
    per site, domain.md A1)."""
    treated = np.zeros(len(site), dtype=bool)
    keys = np.char.add(site.astype(str), stratum.astype(str))
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        n_blocks = -(-len(idx) // 4)
        blocks = np.tile([True, True, False, False], (n_blocks, 1))
        blocks = rng.permuted(blocks, axis=1).ravel()
        treated[idx] = blocks[: len(idx)]
    return treated


def synthetic_trial(
    n: int = 276,
    seed: int = 0,
    effect: float = 0.20,
    p_control: float = 0.20,
    mals_share: float = 48 / 276,
    sites: int = 6,
    days: int = 15,
    withdrawn_with_removal: int = 0,
    screening: bool = True,
) -> TrialExport:
    """An ImmunoSep-shaped synthetic export with a planted primary effect (risk difference ``effect``).

    Arms are "immunotherapy" and "placebo" (control), allocated 1:1 within each stratum and site by
    permuted blocks of 4. Every table has the full schema's columns (``schema.conform``);
    ``.write(folder)`` writes it as CSV or Parquet.

    SOFA courses (days 1..``days``): responders fall by min(d-1, 5) +- 1 points on day d, so even with
    two days carried forward the mean fall over days 2-9 is >= 2.375 > 1.4; non-responders move by
    -1..+2 points (mean fall <= 1 < 1.4) and may die from day 2 (scored 24 afterwards); responders do
    not die before day 10. Hence the derived primary endpoint equals the planted status exactly.
    """
    if not 0 <= p_control <= 1 or not 0 <= p_control + effect <= 1:
        raise ValueError("p_control and p_control + effect must be probabilities")
    rng = np.random.default_rng(seed)
    ids = np.array([f"P{i + 1:04d}" for i in range(n)])
    site = np.array([f"S{k:02d}" for k in rng.integers(1, sites + 1, size=n)])
    mals = rng.random(n) < mals_share
    stratum = np.where(mals, "MALS", "immunoparalysis")
    treated = _allocate(rng, site, stratum)
    arm = np.where(treated, TREATED, CONTROL)
    responder = rng.random(n) < np.where(treated, p_control + effect, p_control)

    # baseline biomarkers consistent with the stratum definitions (domain.md A1)
    ferritin = np.where(
        mals,
        np.round(MALS_FERRITIN_NG_ML * np.exp(rng.normal(0.6, 0.4, n)) + 1),
        np.round(np.minimum(MALS_FERRITIN_NG_ML, rng.lognormal(np.log(900), 0.7, n))),
    )
    hla = np.where(
        mals,
        np.round(rng.lognormal(np.log(6000), 0.5, n)),
        np.round(np.minimum(IMMUNOPARALYSIS_HLA_DR_ABC - 1, rng.lognormal(np.log(2500), 0.4, n))),
    )
    s1 = rng.integers(5, 15, size=n)

    # deaths (generator knobs, roughly ImmunoSep's 28-day ~45% and 90-day ~68%, domain.md A1):
    # non-responders die more often and may die from day 2; responders not before day 10
    p_die = np.where(responder, 0.5, 0.75) * np.where(mals, 1.15, 1.0)
    died = rng.random(n) < p_die
    t = np.clip(np.ceil(rng.exponential(20.0, size=n)).astype(int), 2, 90)
    t = np.where(responder & (t <= 9), rng.integers(10, 91, size=n), t)
    death_day = np.where(died, t, 0)
    lost = (rng.random(n) < 0.02) & ~died
    last_contact = np.where(died, t, np.where(lost, rng.integers(28, 90, size=n), 90))

    # SOFA matrix, days 1..days
    d = np.arange(1, days + 1)
    resp_fall = np.minimum(d - 1, 5)[None, :] + rng.integers(-1, 2, size=(n, days))
    non_fall = rng.integers(-2, 2, size=(n, days))
    fall = np.where(responder[:, None], resp_fall, non_fall)
    fall[:, 0] = 0
    sofa = np.clip(s1[:, None] - fall, 0, 24).astype(float)
    after_death = died[:, None] & (d[None, :] > death_day[:, None])
    sofa[after_death] = np.nan
    # up to two missing days among days 3.., each with probability 0.25 (LOCF in the analysis)
    keys = rng.random((n, days - 2)).argsort(axis=1)[:, :2] + 2
    drop = rng.random((n, 2)) < 0.25
    for j in range(2):
        rows = np.flatnonzero(drop[:, j])
        sofa[rows, keys[rows, j]] = np.nan

    pi, di = np.nonzero(~np.isnan(sofa))
    total = sofa[pi, di].astype(int)
    comps = (total // 6)[:, None] + (rng.random((len(total), 6)).argsort(axis=1) < (total % 6)[:, None])
    day_no = di + 1
    sample_day = np.isin(day_no, (1, 4, 8, 15))
    fer_fall = np.where(day_no > 1, np.where(responder[pi], 0.6, 0.95), 1.0)
    hla_rise = np.where(day_no > 1, 1.0 + 0.1 * (day_no - 1) * np.where(treated[pi], 1.8, 1.0), 1.0)
    m = len(pi)
    daily = pl.DataFrame(
        {
            "participant_id": ids[pi],
            "day": day_no,
            "sofa_total": total,
            **{c: comps[:, k] for k, c in enumerate(SOFA_COMPONENTS)},
            "ferritin_ng_ml": np.where(
                sample_day, np.round(ferritin[pi] * fer_fall * np.exp(rng.normal(0, 0.1, m))), np.nan
            ),
            "hla_dr_abc": np.where(
                sample_day, np.round(hla[pi] * hla_rise * np.exp(rng.normal(0, 0.1, m))), np.nan
            ),
            "crp_mg_l": np.where(
                sample_day, np.round(rng.lognormal(np.log(150), 0.5, m) * (1 - 0.04 * day_no), 1), np.nan
            ),
        }
    ).fill_nan(None)
    day0 = pl.DataFrame(
        {"participant_id": ids, "day": np.zeros(n, dtype=int), "ferritin_ng_ml": ferritin, "hla_dr_abc": hla}
    )
    daily = pl.concat([schema.conform(day0, "daily_assessments"), schema.conform(daily, "daily_assessments")])
    daily = daily.sort("participant_id", "day")

    # infection status at day 15: treated shifted to better categories (planted ordinal effect)
    probs_c = np.array([0.32, 0.06, 0.30, 0.32])
    probs_t = np.array([0.44, 0.08, 0.25, 0.23])
    u = rng.random(n)
    cat = np.where(treated, np.searchsorted(np.cumsum(probs_t), u), np.searchsorted(np.cumsum(probs_c), u))
    cat = np.minimum(cat, 3)
    alive15 = ~died | (death_day > 15)
    status = np.where(alive15, np.array(INFECTION_STATUS_ORDER)[cat], "failure")

    start = datetime(2021, 8, 1, tzinfo=UTC)
    randomized_at = [
        start + timedelta(days=int(i * 980 / max(n, 1)), hours=int(h))
        for i, h in enumerate(rng.integers(0, 24, n))
    ]
    participants = pl.DataFrame(
        {
            "participant_id": ids,
            "site": site,
            "stratum": stratum,
            "arm": arm,
            "randomized_at": randomized_at,
            "age": np.round(np.clip(rng.normal(68, 13, n), 18, 99)),
            "sex": np.where(rng.random(n) < 0.62, "M", "F"),
            "baseline_sofa": s1,
            "weight_kg": np.round(np.clip(rng.normal(78, 15, n), 40, 180), 1),
            "ferritin_ng_ml": ferritin,
            "hla_dr_abc": hla,
            "septic_shock": rng.random(n) < 0.35,
            "infection_site": rng.choice(_SITES, p=[0.5, 0.2, 0.2, 0.1], size=n),
            "itt": np.ones(n, dtype=bool),
            "per_protocol": rng.random(n) < 0.9,
            "safety": np.ones(n, dtype=bool),
        }
    )
    outcomes = pl.DataFrame(
        {
            "participant_id": ids,
            "death_day": pl.Series(np.where(died, death_day, 0)).replace(0, None),
            "last_contact_day": last_contact,
            "discharge_day": pl.Series(np.where(died, 0, rng.integers(10, 40, size=n))).replace(0, None),
            "infection_status_day15": status,
        }
    )
    # adverse events (generator knobs; ImmunoSep reported serious events in 88.8%, domain.md A1)
    n_ae = rng.poisson(3.0, size=n)
    ae_pid = np.repeat(ids, n_ae)
    ae_day = np.concatenate([rng.integers(1, 29, size=k) for k in n_ae]) if n_ae.sum() else np.array([], int)
    terms = np.array(
        ["anaemia", "thrombocytopenia", "acute kidney injury", "secondary infection", "haemorrhage"]
    )
    adverse_events = pl.DataFrame(
        {
            "participant_id": ae_pid,
            "day": ae_day,
            "term": terms[rng.integers(0, len(terms), size=len(ae_pid))],
            "serious": rng.random(len(ae_pid)) < 0.5,
        }
    )
    if len(ae_pid):
        end = dict(zip(ids.tolist(), last_contact.tolist(), strict=True))
        adverse_events = adverse_events.filter(
            pl.col("day") <= pl.col("participant_id").replace_strict(end, return_dtype=pl.Int64)
        )
    log = _screening_log(rng, participants, withdrawn_with_removal) if screening else None
    if log is not None and withdrawn_with_removal:
        removed = log.filter(pl.col("data_removed").fill_null(False))["participant_id"].implode()
        participants = participants.filter(~pl.col("participant_id").is_in(removed))
        daily = daily.filter(~pl.col("participant_id").is_in(removed))
        outcomes = outcomes.filter(~pl.col("participant_id").is_in(removed))
        adverse_events = adverse_events.filter(~pl.col("participant_id").is_in(removed))
    return TrialExport(
        participants=schema.conform(participants, "participants"),
        daily_assessments=daily,
        outcomes=schema.conform(outcomes, "outcomes"),
        screening=None if log is None else schema.conform(log, "screening"),
        adverse_events=schema.conform(adverse_events, "adverse_events"),
        manifest=Manifest(
            trial_id=f"synthetic-immunosep-seed{seed}",
            arms=[TREATED, CONTROL],
            control_arm=CONTROL,
            extra={"synthetic": True, "planted_risk_difference": effect, "p_control": p_control},
        ),
    )


def _screening_log(rng: np.random.Generator, participants: pl.DataFrame, removed: int) -> pl.DataFrame:
    n = participants.height
    n_screened = round(n * SCREENED_PER_RANDOMIZED)
    rows: list[dict[str, object]] = []
    reasons = [r for r, _ in _EXCLUSIONS]
    weights = np.array([w for _, w in _EXCLUSIONS])
    remove_idx = set(rng.choice(n, size=min(removed, n), replace=False).tolist()) if removed else set()
    for i, p in enumerate(participants.iter_rows(named=True)):
        rows.append(
            {
                "screening_id": f"SCR{i + 1:05d}",
                "site": p["site"],
                "eligible": True,
                "exclusion_reason": None,
                "randomized": True,
                "participant_id": p["participant_id"],
                "arm": p["arm"],
                "stratum": p["stratum"],
                "withdrawn": i in remove_idx,
                "withdrawal_reason": "consent withdrawn with data removal" if i in remove_idx else None,
                "data_removed": i in remove_idx,
            }
        )
    for j in range(n, n_screened):
        rows.append(
            {
                "screening_id": f"SCR{j + 1:05d}",
                "site": f"S{int(rng.integers(1, 7)):02d}",
                "eligible": False,
                "exclusion_reason": str(rng.choice(reasons, p=weights / weights.sum())),
                "randomized": False,
                "participant_id": None,
                "arm": None,
                "stratum": None,
                "withdrawn": None,
                "withdrawal_reason": None,
                "data_removed": None,
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


# --------------------------------------------------------------------------------------------
# SLE secretome-shaped trial (Nurudhin 2025, domain.md C): visits on days 0, 22 and 43

SLE_TREATED = "secretome"
SLE_CONTROL = "placebo"
SLE_DAYS = (0, 22, 43)


def synthetic_sle_trial(n: int = 30, seed: int = 0, effect: float = -3.0) -> TrialExport:
    """An SLE secretome-shaped export: MEX-SLEDAI (0-32) and C3, C4, IL-6, TNF-alpha, anti-dsDNA
    at days 0, 22 and 43; ``effect`` is the planted treated-minus-placebo MEX-SLEDAI change at day 43.
    """
    rng = np.random.default_rng(seed)
    start = datetime(2023, 1, 9, tzinfo=UTC)
    arms = [SLE_TREATED, SLE_CONTROL] * (n // 2 + 1)
    rng.shuffle(arms)
    parts, daily, outs = [], [], []
    for i in range(n):
        pid = f"L{i + 1:03d}"
        arm = arms[i]
        treated = arm == SLE_TREATED
        base = int(rng.integers(6, 13))  # moderately active SLE (generator knob)
        c3 = float(rng.normal(70, 15))
        parts.append(
            {
                "participant_id": pid,
                "site": "S01",
                "stratum": None,
                "arm": arm,
                "randomized_at": start + timedelta(days=7 * i),
                "age": float(np.round(np.clip(rng.normal(32, 8), 18, 60), 0)),
                "sex": "F",
                "itt": True,
                "per_protocol": True,
                "safety": True,
            }
        )
        subject = rng.normal(0, 1.0)
        for d in SLE_DAYS:
            frac = d / 43
            change = (
                (-1.5 + (effect if treated else 0.0)) * frac + subject * frac + rng.normal(0, 1.2) * (d > 0)
            )
            score = int(np.clip(round(base + change), 0, 32))
            if d == 43 and rng.random() < 0.05:
                continue  # a missed visit (handled by the mixed model)
            daily.append(
                {
                    "participant_id": pid,
                    "day": d,
                    "mex_sledai": score,
                    "c3_mg_dl": float(
                        np.round(max(5.0, c3 + (12 if treated else 2) * frac + rng.normal(0, 6)), 1)
                    ),
                    "c4_mg_dl": float(
                        np.round(max(1.0, rng.normal(14, 4) + (2 if treated else 0) * frac), 1)
                    ),
                    "il6_pg_ml": float(
                        np.round(rng.lognormal(np.log(12 * (1 - 0.2 * frac * treated)), 0.4), 2)
                    ),
                    "tnf_alpha_pg_ml": float(np.round(rng.lognormal(np.log(9), 0.4), 2)),
                    "anti_dsdna_iu_ml": float(np.round(rng.lognormal(np.log(120), 0.5), 1)),
                }
            )
        outs.append({"participant_id": pid, "death_day": None, "last_contact_day": 43})
    return TrialExport(
        participants=schema.conform(pl.DataFrame(parts), "participants"),
        daily_assessments=schema.conform(pl.DataFrame(daily), "daily_assessments"),
        outcomes=schema.conform(
            pl.DataFrame(
                outs, schema={"participant_id": pl.Utf8, "death_day": pl.Int64, "last_contact_day": pl.Int64}
            ),
            "outcomes",
        ),
        manifest=Manifest(
            trial_id=f"synthetic-sle-secretome-seed{seed}",
            arms=[SLE_TREATED, SLE_CONTROL],
            control_arm=SLE_CONTROL,
            extra={"synthetic": True, "planted_mex_sledai_difference_day43": effect},
        ),
    )


def write_synthetic_trial(folder: str | Path, n: int = 276, seed: int = 0, effect: float = 0.20) -> Path:
    """Write :func:`synthetic_trial` as CSV into ``folder`` (a demo export)."""
    return synthetic_trial(n=n, seed=seed, effect=effect, withdrawn_with_removal=max(1, n // 56)).write(
        folder
    )
