"""Clinical observables of a virtual patient, emitted in the project's long observation format.

Every mapping below is a design choice ([design] in insilico.md section 3), not a published model; each
function's docstring says what it assumes and how it is calibrated. The outputs are what the clinic
measures in PROVIDE/ImmunoSep (domain.md A1/A2), so the same protocol, score and analysis code runs on
virtual and real patients:

* ``sofa_total`` (points): organ dysfunction from tissue damage D. The Reynolds model has one lumped
  damage variable, not six organs, so the per-organ SOFA inputs (PaO2/FiO2, platelets, ...) are not
  emitted: inventing six organ values from one number would only look more precise.
* ``ferritin`` (ng/mL): the MALS marker, from the IL-1-mediated feedback activation.
* ``mhla_dr`` (AB/C, antibodies bound per monocyte): the immunoparalysis marker, from filtered CA; with the
  monocyte-deactivation extension (``model.DeactivationParameters``) it is H_max times the model state H.
* ``infection_resolved`` (binary 0/1): pathogen below the classification tolerance.

Observations are daily: day ``k`` is hour ``24 k`` after infection onset, anchored to a fixed epoch
(:data:`EPOCH`) as design.md section 2 allows; the anchor is recorded in ``source``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import polars as pl

from .model import Effects, FloatArray, PatientParameters, Trajectory

#: Fixed time anchor of virtual patients (hour 0 = infection onset), recorded in ``source``.
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)

#: Healthy CA level s_c/mu_c of Reynolds 2006 Table 1 (the calibration point of the mHLA-DR map).
HEALTHY_CA = 0.125

#: SOFA maximum (6 organs x 4 points; Vincent 1996, domain.md B1).
SOFA_MAX = 24

OBSERVATION_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "time",
    "concept",
    "value",
    "unit",
    "source",
    "source_row",
)


@dataclass(frozen=True)
class ObservableCalibration:
    """Parameters of the state-to-observable maps (all [design]; see each function for calibration).

    SOFA: ``sofa = round(24 D^h / (D50^h + D^h)) + chronic``; with D50 = 8 and h = 2 the death attractors
    (D ~ 17.4, insilico.md 1.1) give SOFA 20 (>= 15 as insilico.md 3 requires) and D = 0 gives 0.

    Ferritin: ``F`` is the first-order low-pass (time constant ``tau_ferritin_h`` = 24 h, within the 1-2 days
    of insilico.md 3) of ``u = L^n/(K^n + L^n)`` where ``L = (1 - il1)(k_nn N* + k_nd D)/(1 + (CA/C_inf)^2)``
    is the IL-1-mediated part of the phagocyte activation signal R (the terms anakinra blocks, so anakinra
    lowers ferritin as it does in MAS); ``ferritin = F0 exp(beta F)`` ng/mL. ``F0`` (per patient, default
    200 ng/mL) is a normal adult level; ``beta`` = 4.6 caps ferritin at about 100 x F0 (~20,000 ng/mL,
    the range of MAS). ``K`` = 0.04 and ``n`` = 4 put the 4,420 ng/mL MALS cut-off (F = 0.67) on
    trajectories with L above ~0.048, i.e. sterile feedback-dominated inflammation (aseptic-death-like).

    mHLA-DR: ``H_max / (1 + (CA_f / C_H)^2)`` AB/C with CA_f the 12 h low-pass of CA and C_H the patient's
    effective C_inf (insilico.md 3: C_H = C_inf = 0.28, H_max = 24,000 gives ~20,000 AB/C at baseline CA
    0.125 and ~5,400 at the death attractors' CA 0.523). IFN-gamma raises C_inf and so mHLA-DR.
    """

    sofa_d50: float = 8.0
    sofa_hill: float = 2.0
    ferritin_k: float = 0.04
    ferritin_hill: float = 4.0
    ferritin_beta: float = 4.6
    tau_ferritin_h: float = 24.0
    hla_max: float = 24_000.0
    tau_hla_h: float = 12.0
    infection_tol: float = 1e-3  # = classify's p_tol (insilico.md / reynolds_check.py)
    #: structural alternative (issue 18; 0 = off): SOFA points from the infection itself, not from tissue
    #: damage, ``round(sofa_pathogen_points P / (sofa_pathogen_p50 + P))`` added to the damage score
    sofa_pathogen_points: float = 0.0
    sofa_pathogen_p50: float = 1.0


DEFAULT_CALIBRATION = ObservableCalibration()


def sofa_from_damage(
    d: npt.ArrayLike, chronic: npt.ArrayLike = 0.0, cal: ObservableCalibration = DEFAULT_CALIBRATION
) -> npt.NDArray[np.int64]:
    """SOFA-like total (0-24) from damage D plus a chronic baseline (see :class:`ObservableCalibration`).

    Monotone in D by construction (a Hill function), and bounded by the SOFA maximum of 24.
    """
    dd = np.maximum(np.asarray(d, dtype=np.float64), 0.0)
    h = cal.sofa_hill
    frac = dd**h / (cal.sofa_d50**h + dd**h)
    acute = np.rint(SOFA_MAX * frac)
    return np.minimum(acute + np.rint(np.asarray(chronic, dtype=np.float64)), SOFA_MAX).astype(np.int64)


def ferritin_from_filter(
    f: npt.ArrayLike, f0: npt.ArrayLike = 200.0, cal: ObservableCalibration = DEFAULT_CALIBRATION
) -> FloatArray:
    """Ferritin (ng/mL) = F0 exp(beta F) from the filtered drive F in [0, 1]."""
    return np.asarray(f0, dtype=np.float64) * np.exp(cal.ferritin_beta * np.asarray(f, dtype=np.float64))


def hla_dr_from_ca(
    ca_f: npt.ArrayLike,
    c_h: npt.ArrayLike = 0.28,
    h_max: npt.ArrayLike = DEFAULT_CALIBRATION.hla_max,
) -> FloatArray:
    """mHLA-DR (AB/C) = H_max / (1 + (CA_f/C_H)^2) (insilico.md 3)."""
    x = np.asarray(ca_f, dtype=np.float64) / np.asarray(c_h, dtype=np.float64)
    return np.asarray(h_max, dtype=np.float64) / (1.0 + x * x)


@dataclass(frozen=True)
class BiomarkerObserver:
    """Integrates the two biomarker filters along the model (the integrator's ``Observer`` protocol).

    Auxiliary states: ``ferritin_drive`` F (dimensionless, 0..1) and ``ca_filtered`` CA_f (CA-units). Both are
    advanced with the exact exponential update for a first-order filter whose input is held at the
    step-end value (error O(dt/tau) = 0.5/12 of one step's input change); they do not feed back.
    The effective C_inf (times 1 + cinf_gain under IFN-gamma) is tracked as a third state for mHLA-DR.
    """

    cal: ObservableCalibration = field(default_factory=ObservableCalibration)
    names: tuple[str, ...] = ("ferritin_drive", "ca_filtered", "c_inf_effective")

    def _drive(self, y: FloatArray, p: PatientParameters, e: Effects | None) -> tuple[FloatArray, FloatArray]:
        n_star, d, ca = y[:, 1], y[:, 2], y[:, 3]
        il1 = np.asarray(e.il1) if e is not None else 0.0
        cinf = p.c_inf * (1.0 + np.asarray(e.cinf_gain)) if e is not None else p.c_inf
        loop = (1.0 - il1) * (p.k_nn * n_star + p.k_nd * d) / (1.0 + (ca / cinf) ** 2)
        hn = self.cal.ferritin_hill
        u = loop**hn / (self.cal.ferritin_k**hn + loop**hn)
        return np.asarray(u, dtype=np.float64), np.broadcast_to(cinf, ca.shape).astype(np.float64)

    def initial(self, y: FloatArray, params: PatientParameters) -> FloatArray:
        u, cinf = self._drive(y, params, None)
        return np.stack([u, y[:, 3], cinf], axis=1)

    def update(
        self, aux: FloatArray, y: FloatArray, dt: float, params: PatientParameters, effects: Effects | None
    ) -> FloatArray:
        u, cinf = self._drive(y, params, effects)
        a_f = math.exp(-dt / self.cal.tau_ferritin_h)
        a_h = math.exp(-dt / self.cal.tau_hla_h)
        out = np.empty_like(aux)
        out[:, 0] = aux[:, 0] * a_f + (1.0 - a_f) * u
        out[:, 1] = aux[:, 1] * a_h + (1.0 - a_h) * y[:, 3]
        out[:, 2] = aux[:, 2] * a_h + (1.0 - a_h) * cinf
        return out


@dataclass(frozen=True)
class PatientTraits:
    """Per-patient observable traits that are not model states: chronic SOFA, ferritin baseline F0, H_max."""

    chronic_sofa: FloatArray
    ferritin0: FloatArray
    hla_max: FloatArray

    @classmethod
    def default(cls, n: int, cal: ObservableCalibration = DEFAULT_CALIBRATION) -> PatientTraits:
        return cls(np.zeros(n), np.full(n, 200.0), np.full(n, cal.hla_max))

    def take(self, index: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> PatientTraits:
        return PatientTraits(self.chronic_sofa[index], self.ferritin0[index], self.hla_max[index])


@dataclass(frozen=True)
class DailyObservables:
    """Daily observables, arrays of shape ``(n, days + 1)``; ``alive`` is False from the day of death on."""

    days: npt.NDArray[np.int64]
    sofa: npt.NDArray[np.int64]
    ferritin: FloatArray
    mhla_dr: FloatArray
    infection_resolved: npt.NDArray[np.bool_]
    alive: npt.NDArray[np.bool_]


def daily_observables(
    traj: Trajectory, traits: PatientTraits, cal: ObservableCalibration = DEFAULT_CALIBRATION
) -> DailyObservables:
    """Observables at the trajectory's record times (which must be whole days) from states and filters."""
    rec_h = float(traj.times[1] - traj.times[0]) if traj.times.size > 1 else 24.0
    if not math.isclose(rec_h, 24.0):
        raise ValueError(f"daily observables need 24 h records, got {rec_h} h")
    if traj.aux.shape[2] < 3:
        raise ValueError("trajectory was integrated without BiomarkerObserver")
    days = np.rint(traj.times / 24.0).astype(np.int64)
    other = traits.chronic_sofa[:, None]
    if cal.sofa_pathogen_points > 0:  # organ dysfunction that is not tissue damage (a structural alternative)
        p = np.maximum(traj.states[:, :, 0], 0.0)
        other = other + np.rint(cal.sofa_pathogen_points * p / (cal.sofa_pathogen_p50 + p))
    sofa = sofa_from_damage(traj.states[:, :, 2], other, cal)
    ferritin = ferritin_from_filter(traj.aux[:, :, 0], traits.ferritin0[:, None], cal)
    if traj.states.shape[2] >= 5:
        # deactivation extension (model.DeactivationParameters): mHLA-DR is the healthy level of the static
        # map (H_max / (1 + (0.125/0.28)^2), ~20,000 AB/C) times H / H_0, H_0 carried in the H column's
        # first record (every patient starts at H_0)
        healthy = traits.hla_max / (1.0 + (HEALTHY_CA / 0.28) ** 2)
        hla = healthy[:, None] * traj.states[:, :, 4] / traj.states[:, :1, 4]
    else:
        hla = hla_dr_from_ca(traj.aux[:, :, 1], traj.aux[:, :, 2], traits.hla_max[:, None])
    resolved = traj.states[:, :, 0] <= cal.infection_tol
    death = np.nan_to_num(traj.death_time, nan=np.inf)
    alive = traj.times[None, :] < death[:, None]
    return DailyObservables(days, sofa, ferritin, hla, resolved, alive)


def observations_frame(
    obs: DailyObservables,
    patient_ids: list[str] | None = None,
    *,
    source: str = "immunostrat.simulation (Reynolds 2006; time anchored at 2025-01-01T00:00Z = onset)",
    first_day: int = 0,
) -> pl.DataFrame:
    """The long observation table of design.md section 2 for living patient-days from ``first_day`` on.

    Columns: patient_id, time (UTC datetime), concept, value (float64, canonical unit), unit, source,
    source_row (0-based index over patient x day x concept, so each value is traceable).
    """
    n, k = obs.sofa.shape
    ids = patient_ids if patient_ids is not None else [f"vp{i:06d}" for i in range(n)]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} patient ids for {n} patients")
    concepts = (
        ("sofa_total", "points", obs.sofa.astype(np.float64)),
        ("ferritin", "ng/mL", obs.ferritin),
        ("mhla_dr", "AB/C", obs.mhla_dr),
        ("infection_resolved", "1", obs.infection_resolved.astype(np.float64)),
    )
    pi, di = np.nonzero(obs.alive & (obs.days[None, :] >= first_day))
    m = pi.size
    times = np.array([np.datetime64(EPOCH.replace(tzinfo=None), "us")]) + (
        obs.days[di].astype("timedelta64[D]").astype("timedelta64[us]")
    )
    frames = []
    for c_i, (concept, unit, values) in enumerate(concepts):
        frames.append(
            pl.DataFrame(
                {
                    "patient_id": np.asarray(ids, dtype=object)[pi].astype(str),
                    "time": times,
                    "concept": np.full(m, concept),
                    "value": values[pi, di].astype(np.float64),
                    "unit": np.full(m, unit),
                    "source": np.full(m, source),
                    "source_row": (pi * k + di) * len(concepts) + c_i,
                }
            )
        )
    out = pl.concat(frames).with_columns(
        pl.col("time").dt.replace_time_zone("UTC"), pl.col("source_row").cast(pl.Int64)
    )
    return out.sort(["patient_id", "time", "concept"]).select(OBSERVATION_COLUMNS)
