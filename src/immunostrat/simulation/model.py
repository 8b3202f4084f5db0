"""The Reynolds 2006 reduced model of the acute inflammatory response and its batch RK4 integrator.

Source: Reynolds A, Rubin J, Clermont G, Day J, Vodovotz Y, Ermentrout GB. A reduced mathematical model
of the acute inflammatory response: I. Derivation of model and analysis of anti-inflammation.
J Theor Biol 2006;242:220-236 (PMID 16584750; BioModels BIOMD0000000714). Equations, parameter values and
initial conditions exactly as restated in ``shared/specs/insilico.md`` section 1.1; time is in hours.

State ``y`` has shape ``(n_patients, 4)`` with columns ``P, N*, D, CA`` (pathogen, activated phagocytes,
tissue damage, slow anti-inflammatory mediators). Every parameter may differ per patient: the integrator
takes one array of shape ``(n_patients,)`` per parameter (:class:`PatientParameters`) and advances the whole
batch together with a fixed-step classical RK4 (insilico.md section 5).

Optional structural extension, **not in Reynolds 2006** (insilico.md section 6): a slow monocyte
deactivation state H (an HLA-DR-like competence, :class:`DeactivationParameters`), passed to
:func:`integrate` as ``deactivation=``. Without it (the default) the model is exactly the published one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .structures import MalsLoop, episode_columns, il1_signal, mals_loop_drive, next_episode

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Column order of the state arrays.
STATE_NAMES: tuple[str, ...] = ("P", "N_star", "D", "CA")

#: Step size in hours. insilico.md section 5 measured 0 outcome-class mismatches against a dt = 0.05 h
#: reference on 20,000 patients at dt = 0.5 h (and 1 flip at dt = 1.0 h); ``tests/simulation/test_model.py``
#: re-checks the choice against a tight scipy ``solve_ivp`` (LSODA, rtol 1e-10) reference.
DEFAULT_DT = 0.5

#: Horizon of the published outcome classes: 720 h = 30 days (insilico.md section 7).
OUTCOME_HORIZON_H = 720.0

#: 28 days in hours: the mortality horizon of PROVIDE and ImmunoSep (domain.md A1/A2).
DAY28_H = 28 * 24.0

# Outcome classes (insilico.md section 1.1 "Known outcomes" and reynolds_check.classify).
HEALTH = 0
ASEPTIC_DEATH = 1
SEPTIC_DEATH = 2
PERSISTENT_INFECTION = 3
OUTCOME_NAMES: tuple[str, ...] = ("health", "aseptic death", "septic death", "persistent infection")


@dataclass(frozen=True)
class ReynoldsParameters:
    """Reynolds 2006 Table 1, as encoded in BIOMD0000000714 and Kitware Pulse ``ImmuneModel.cpp``.

    All values and units are those of insilico.md section 1.1 (values [code], triple-checked; units
    [memory]). Time unit: hours.
    """

    k_pg: float = 0.3  # /h pathogen growth rate; 0.3 is the BioModels default, the main "virulence" knob
    p_inf: float = 20.0  # 10^6 cells/cc, pathogen carrying capacity
    k_pm: float = 0.6  # /M-units/h, killing of P by the non-specific local response
    k_mp: float = 0.01  # /P-units/h, exhaustion of the local response by P
    s_m: float = 0.005  # M-units/h, source of the local response
    mu_m: float = 0.002  # /h, decay of the local response
    k_pn: float = 1.8  # /N*-units/h, killing of P by activated phagocytes
    k_np: float = 0.1  # /P-units/h, activation of resting phagocytes by P
    k_nn: float = 0.01  # /N*-units/h, activation by activated phagocytes (cytokine feedback)
    k_nd: float = 0.02  # /D-units/h, activation by tissue damage (DAMP feedback)
    s_nr: float = 0.08  # N_R-units/h, source of resting phagocytes
    mu_nr: float = 0.12  # /h, decay of resting phagocytes
    mu_n: float = 0.05  # /h, decay of activated phagocytes
    k_dn: float = 0.35  # D-units/h, maximum rate of damage production by N*
    x_dn: float = 0.06  # N*-units, N* giving half-maximal damage (Hill exponent 6)
    mu_d: float = 0.02  # /h, damage repair rate
    c_inf: float = 0.28  # CA-units, strength of CA inhibition
    s_c: float = 0.0125  # CA-units/h, CA source
    k_cn: float = 0.04  # CA-units/h, maximum CA production driven by N*/D
    k_cnd: float = 48.0  # N*-units/D-units, weight of damage relative to N* in driving CA
    mu_c: float = 0.1  # /h, CA decay

    @property
    def ca_baseline(self) -> float:
        """Healthy CA level s_c/mu_c (= 0.125 with Table 1 values), the CA initial condition."""
        return self.s_c / self.mu_c


#: The published parameter set.
REYNOLDS_2006 = ReynoldsParameters()

PARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ReynoldsParameters))


@dataclass(frozen=True)
class DeactivationParameters:
    """Monocyte deactivation: a structural extension of Reynolds 2006 (insilico.md section 6), [design].

    A fifth state H in [0, 1], the HLA-DR-like competence of monocytes (mHLA-DR proportional to H), driven by
    the anti-inflammatory mediators CA and feeding back on phagocytic killing::

        dH/dt  = k_rec (1 - H) - k_rec (CA / C_H)^2 H,      k_rec = 1 / tau_rec_h
        C_H    = c_h_scale * C_inf * (1 + cinf_gain) * (1 + hla_gain)
        k_pn  -> k_pn (1 + kpn_gain) H / H_0,               H_0 = 1 / (1 + (s_c / (mu_c C_H))^2)

    * Quasi-steady state H = 1 / (1 + (CA/C_H)^2): the static mHLA-DR map of insilico.md 3. The marker is
      mHLA-DR = 20,000 AB/C x H / H_0 (``observables.daily_observables``), the map's healthy level.
    * Kinetics: deactivation is fast when CA is high (time constant tau_rec / (1 + (CA/C_H)^2): hours) and
      recovery slow once CA is back (about tau_rec / (1 + (0.125/C_H)^2)): the fall within a day and the
      recovery over days of Monneret's mHLA-DR monitoring (domain.md A3: Monneret 2006, ICM 32:1175,
      survivors recover between day 1-2 and day 3-4). ``tau_rec_h`` = 48 h [design within "days"].
    * Killing by activated phagocytes scales with H / H_0: deactivated monocytes kill less (the IIRABM's
      "immune-suppressed" monocytes, insilico.md 2). At health H = H_0, so the healthy state and its
      stability are those of Reynolds 2006.
    * ``c_h_scale`` = 0.46, calibrated to one independent target: 42.9% (PROVIDE's immunoparalysis share)
      of the plausible pool below 5,000 AB/C at enrolment (scan 0.44 / 0.46 / 0.48 -> 46.3 / 42.8 / 39.6%;
      with C_H = C_inf only 3.0%). Nothing was fitted to trial results.
    * IFN-gamma (``hla_gain``) raises C_H: :func:`ifn_hla_gain` (2.22) brings mHLA-DR at the death
      attractors' CA (0.523) back to 15,000 AB/C, the usual lower limit of immunocompetence (domain.md A3;
      Docke 1997: IFN-gamma restored monocyte HLA-DR).
    * Integration: dH/dt is stiff at high CA, so :func:`integrate` advances H with its exact exponential
      update for frozen CA; :func:`rhs_deactivation` is the scalar system for ``solve_ivp`` references.
    """

    tau_rec_h: float = 48.0
    c_h_scale: float = 0.46
    #: the IL-1-driven MALS loop (``structures.MalsLoop``), a structural alternative; None: none
    mals_loop: MalsLoop | None = None

    @property
    def k_rec(self) -> float:
        return 1.0 / self.tau_rec_h

    def c_h(self, params: PatientParameters) -> FloatArray:
        """Each patient's C_H without therapy (CA-units)."""
        return np.asarray(self.c_h_scale * params.c_inf, dtype=np.float64)

    def h_baseline(self, params: PatientParameters) -> FloatArray:
        """H_0: the healthy steady state of H (at CA = s_c / mu_c), also its initial condition."""
        x = (params.s_c / params.mu_c) / self.c_h(params)
        return np.asarray(1.0 / (1.0 + x * x), dtype=np.float64)


#: The extension's calibrated parameter set (see :class:`DeactivationParameters`).
MONOCYTE_DEACTIVATION = DeactivationParameters()


def ifn_hla_gain(
    deactivation: DeactivationParameters = MONOCYTE_DEACTIVATION,
    ca: float = 0.523,
    restored_fraction: float = 15_000 / 20_000,
    healthy_ca: float = 0.125,
    c_inf: float = 0.28,
) -> float:
    """The ``hla_gain`` at which the quasi-steady mHLA-DR at CA = ``ca`` (the death attractors' level) is
    ``restored_fraction`` of its healthy value (15,000 of 20,000 AB/C: the lower limit of immunocompetence,
    domain.md A3), for a Table 1 patient: H/H_0 = (1 + x_0^2) / (1 + x^2) with x = CA / C_H."""
    c_h = deactivation.c_h_scale * c_inf
    x0 = healthy_ca / c_h
    x = math.sqrt((1.0 + x0 * x0) / restored_fraction - 1.0)
    return ca / x / c_h - 1.0


@dataclass(frozen=True)
class SecondaryInfection:
    """ICU-acquired (secondary) infection: a second structural extension [design], on top of the monocyte
    deactivation one (its hazard reads H). Reynolds 2006 has one infection; the clinic's harm route for the
    immunoparalysed is a new infection while mHLA-DR stays low (domain.md A3: Monneret 2006; Ann Intensive
    Care 2022;12:39), so an anti-inflammatory drug can only harm them through it.

    * Hazard (/h) from ``at_risk_from_h`` (48 h after onset: an infection is ICU-acquired when it appears more
      than 48 h after admission, the ECDC/CDC convention) to ``at_risk_until_h`` (day 28) while alive and not
      yet re-infected: ``hazard_per_h`` x ``hazard_ratio_low`` when mHLA-DR is low, i.e. H / H_0 below
      ``low_fraction`` = 8,000 / 20,000 AB/C (< 8,000 AB/C persisting predicts ICU-acquired infection: Ann
      Intensive Care 2022;12:39), else ``hazard_per_h``. ``hazard_ratio_low`` = 2.52: the adjusted hazard
      ratio of low mHLA-DR at day 3-4 for nosocomial infection after septic shock (Landelle C, et al.
      Intensive Care Med 2010;36:1859-66; 2.18 at day 6-9).
    * Event: the cumulative hazard reaches the patient's exposure E ~ Exp(1) (:class:`SecondaryDraws`; one
      draw per patient, shared by every therapy, so arms differ only through the hazard they cause). The
      hazard is read at each step's start.
    * At the event the pathogen P rises by ``inoculum_scale`` x the patient's relative inoculum (log-normal,
      the primary inoculum's prior), with the patient's own growth rate k_pg [design: one pathogen growth
      parameter per patient], and standard-of-care antibiotics for it start ``abx_delay_h`` later at the
      background regimen (therapies.yaml ``standard_of_care``: ln 5 / 24 h for 7 days).
    * Calibration (:data:`SECONDARY_INFECTION`), to two independent targets, no treatment effect among them:
      ``hazard_per_h`` so that 31.7% of the ImmunoSep-eligible placebo patients have a secondary infection by
      day 15 (ImmunoSep placebo superinfection 46/145, domain.md A1), and ``inoculum_scale`` so that the
      attributable 28-day mortality of a secondary infection (potential outcomes with and without it) is
      13% (Melsen WG, et al. Lancet Infect Dis 2013;13:665-71, ventilator-associated pneumonia, individual
      data of 24 trials). See docs/simulation.md.
    """

    hazard_per_h: float
    inoculum_scale: float
    hazard_ratio_low: float = 2.52
    low_fraction: float = 8_000 / 20_000
    at_risk_from_h: float = 48.0
    at_risk_until_h: float = 28 * 24.0
    abx_delay_h: float = 12.0
    abx_kill_per_h: float = math.log(5.0) / 24.0
    abx_duration_h: float = 168.0
    #: episodes per patient (1: this model; more: ``structures.Recurrence``, each its own draws and course)
    max_episodes: int = 1


#: The calibrated secondary-infection extension (see :class:`SecondaryInfection`).
SECONDARY_INFECTION = SecondaryInfection(hazard_per_h=0.0025, inoculum_scale=12.0)


@dataclass(frozen=True)
class SecondaryDraws:
    """Per-patient random draws of :class:`SecondaryInfection`, shape ``(n,)`` each: ``exposure`` ~ Exp(1)
    (the cumulative hazard at which the infection happens) and ``relative_inoculum`` (log-normal)."""

    exposure: FloatArray
    relative_inoculum: FloatArray

    @classmethod
    def none(cls, n: int) -> SecondaryDraws:
        """Draws under which no secondary infection ever happens (infinite exposure)."""
        return cls(np.full(n, np.inf), np.zeros(n))

    def take(self, index: IntArray | BoolArray) -> SecondaryDraws:
        return SecondaryDraws(self.exposure[index], self.relative_inoculum[index])


@dataclass(frozen=True)
class PatientParameters:
    """One float64 array of shape ``(n_patients,)`` per Reynolds parameter (same names and units)."""

    k_pg: FloatArray
    p_inf: FloatArray
    k_pm: FloatArray
    k_mp: FloatArray
    s_m: FloatArray
    mu_m: FloatArray
    k_pn: FloatArray
    k_np: FloatArray
    k_nn: FloatArray
    k_nd: FloatArray
    s_nr: FloatArray
    mu_nr: FloatArray
    mu_n: FloatArray
    k_dn: FloatArray
    x_dn: FloatArray
    mu_d: FloatArray
    c_inf: FloatArray
    s_c: FloatArray
    k_cn: FloatArray
    k_cnd: FloatArray
    mu_c: FloatArray

    @property
    def size(self) -> int:
        return int(self.k_pg.shape[0])

    def take(self, index: IntArray | BoolArray) -> PatientParameters:
        """The parameters of a subset of patients (fancy or boolean index)."""
        return PatientParameters(**{name: getattr(self, name)[index] for name in PARAMETER_NAMES})

    def patient(self, i: int) -> ReynoldsParameters:
        """Patient ``i``'s parameters as a scalar :class:`ReynoldsParameters`."""
        return ReynoldsParameters(**{name: float(getattr(self, name)[i]) for name in PARAMETER_NAMES})

    def with_values(self, **values: FloatArray) -> PatientParameters:
        return replace(self, **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()})


def patient_parameters(
    n: int, base: ReynoldsParameters = REYNOLDS_2006, **overrides: float | npt.ArrayLike
) -> PatientParameters:
    """Broadcast ``base`` to ``n`` patients; ``overrides`` give per-patient values (scalar or ``(n,)``)."""
    unknown = set(overrides) - set(PARAMETER_NAMES)
    if unknown:
        raise ValueError(f"unknown Reynolds parameter(s): {sorted(unknown)}")
    arrays: dict[str, FloatArray] = {}
    for name in PARAMETER_NAMES:
        value = overrides.get(name, getattr(base, name))
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
        arrays[name] = arr
    return PatientParameters(**arrays)


def initial_state(p0: npt.ArrayLike, params: PatientParameters) -> FloatArray:
    """Initial conditions of insilico.md 1.1: P(0) = inoculum, N*(0) = D(0) = 0, CA(0) = s_c/mu_c."""
    n = params.size
    y0 = np.zeros((n, 4))
    y0[:, 0] = np.broadcast_to(np.asarray(p0, dtype=np.float64), (n,))
    y0[:, 3] = params.s_c / params.mu_c
    return y0


@dataclass(frozen=True)
class Effects:
    """Therapy hooks at one time point (insilico.md section 4.1); each a scalar or an ``(n,)`` array.

    ``il1``: fractional block of the N*->N* and D->N* activation terms (k_nn, k_nd times 1 - il1).
    ``kpn_gain``: phagocytic killing k_pn times (1 + kpn_gain).
    ``cinf_gain``: C_inf times (1 + cinf_gain): weaker CA deactivation of the pro-inflammatory drive.
    ``ca_source``: exogenous CA-units/h added to dCA/dt.
    ``kill``: extra first-order pathogen kill rate (/h) added to dP/dt.
    ``hla_gain``: deactivation extension only: the CA level that deactivates monocytes, C_H, times
    (1 + hla_gain) (IFN-gamma restores mHLA-DR); no effect on the pure Reynolds model.
    """

    il1: FloatArray | float = 0.0
    kpn_gain: FloatArray | float = 0.0
    cinf_gain: FloatArray | float = 0.0
    ca_source: FloatArray | float = 0.0
    kill: FloatArray | float = 0.0
    hla_gain: FloatArray | float = 0.0


class EffectSchedule(Protocol):
    """Per-patient therapy effects over time (implemented by :class:`therapies.Schedule`)."""

    def effects_at(self, t: float) -> Effects | None:
        """Effects acting at time ``t`` (hours), or None when no therapy acts on anyone."""
        ...

    def active_after(self, t: float) -> bool:
        """Whether any effect acts on any patient at or after ``t``."""
        ...

    def take(self, index: IntArray | BoolArray) -> EffectSchedule:
        """The schedule of a subset of the patients."""
        ...


class Observer(Protocol):
    """Auxiliary read-outs integrated along the model without feeding back (e.g. biomarker filters).

    ``initial`` returns the auxiliary state ``(n, n_aux)`` from the initial model state ``(n, 4)``;
    ``update`` advances it over one step of length ``dt`` ending in model state ``y`` (columns P, N*, D, CA).
    """

    @property
    def names(self) -> tuple[str, ...]: ...

    def initial(self, y: FloatArray, params: PatientParameters) -> FloatArray: ...

    def update(
        self, aux: FloatArray, y: FloatArray, dt: float, params: PatientParameters, effects: Effects | None
    ) -> FloatArray: ...


def rhs(t: float, y: npt.ArrayLike, params: ReynoldsParameters = REYNOLDS_2006) -> FloatArray:
    """dy/dt of one patient (``y`` = [P, N*, D, CA]) for ``solve_ivp``: the equations of insilico.md 1.1."""
    p = params
    P, N, D, C = (float(v) for v in np.asarray(y, dtype=np.float64))
    inhib = 1.0 + (C / p.c_inf) ** 2  # f(V) = V / (1 + (CA/C_inf)^2)
    f_n = N / inhib
    r = (p.k_nn * N + p.k_np * P + p.k_nd * D) / inhib
    d_p = p.k_pg * P * (1.0 - P / p.p_inf) - p.k_pm * p.s_m * P / (p.mu_m + p.k_mp * P) - p.k_pn * f_n * P
    d_n = p.s_nr * r / (p.mu_nr + r) - p.mu_n * N
    d_d = p.k_dn * f_n**6 / (p.x_dn**6 + f_n**6) - p.mu_d * D
    f_c = (N + p.k_cnd * D) / inhib
    d_c = p.s_c + p.k_cn * f_c / (1.0 + f_c) - p.mu_c * C
    return np.array([d_p, d_n, d_d, d_c])


def rhs_deactivation(
    t: float,
    y: npt.ArrayLike,
    params: ReynoldsParameters = REYNOLDS_2006,
    deactivation: DeactivationParameters | None = None,
) -> FloatArray:
    """dy/dt of one patient of the monocyte-deactivation extension (``y`` = [P, N*, D, CA, H]; no therapy),
    for ``solve_ivp`` references (see :class:`DeactivationParameters` for the equations)."""
    de = deactivation if deactivation is not None else MONOCYTE_DEACTIVATION
    p = params
    P, N, D, C, H = (float(v) for v in np.asarray(y, dtype=np.float64))
    c_h = de.c_h_scale * p.c_inf
    h0 = 1.0 / (1.0 + (p.ca_baseline / c_h) ** 2)
    inhib = 1.0 + (C / p.c_inf) ** 2
    f_n = N / inhib
    r = (p.k_nn * N + p.k_np * P + p.k_nd * D) / inhib
    if de.mals_loop is not None:
        r += float(
            mals_loop_drive(
                il1_signal(np.array(N), np.array(D), p.k_nn, p.k_nd, np.array(1.0 / inhib)), de.mals_loop
            )
        )
    kill_n = p.k_pn * f_n * H / h0
    d_p = p.k_pg * P * (1.0 - P / p.p_inf) - p.k_pm * p.s_m * P / (p.mu_m + p.k_mp * P) - kill_n * P
    d_n = p.s_nr * r / (p.mu_nr + r) - p.mu_n * N
    d_d = p.k_dn * f_n**6 / (p.x_dn**6 + f_n**6) - p.mu_d * D
    f_c = (N + p.k_cnd * D) / inhib
    d_c = p.s_c + p.k_cn * f_c / (1.0 + f_c) - p.mu_c * C
    d_h = de.k_rec * (1.0 - H - (C / c_h) ** 2 * H)
    return np.array([d_p, d_n, d_d, d_c, d_h])


class _Rhs:
    """The batch right-hand side with per-patient constants folded once (the hot loop of the integrator)."""

    def __init__(self, p: PatientParameters, deactivation: DeactivationParameters | None = None) -> None:
        self.p = p
        self.deact = deactivation
        self.loop = deactivation.mals_loop if deactivation is not None else None
        if deactivation is not None:
            self.k_rec = deactivation.k_rec
            self.c_h = deactivation.c_h(p)
            self.inv_h0 = 1.0 / deactivation.h_baseline(p)
        self.k_pg = p.k_pg
        self.k_pg_over_pinf = p.k_pg / p.p_inf
        self.kill_m = p.k_pm * p.s_m  # numerator of the local-response kill term
        self.mu_m = p.mu_m
        self.k_mp = p.k_mp
        self.k_np = p.k_np
        self.s_nr = p.s_nr
        self.mu_nr = p.mu_nr
        self.mu_n = p.mu_n
        self.k_dn = p.k_dn
        self.x_dn6 = p.x_dn**6
        self.mu_d = p.mu_d
        self.s_c = p.s_c
        self.k_cn = p.k_cn
        self.k_cnd = p.k_cnd
        self.mu_c = p.mu_c
        #: per-patient kill (/h) of the antibiotics for a secondary infection, set by the integrator per step
        self.own_kill: FloatArray | float = 0.0
        self.set_effects(None)

    def set_effects(self, e: Effects | None) -> None:
        p = self.p
        if e is None:
            self.k_nn = p.k_nn
            self.k_nd = p.k_nd
            self.k_pn = p.k_pn
            self.inv_cinf2 = 1.0 / (p.c_inf * p.c_inf)
            self.extra_c: FloatArray | float = 0.0
            self.extra_kill: FloatArray | float = 0.0
            if self.deact is not None:
                self.inv_ch2 = 1.0 / (self.c_h * self.c_h)
            return
        self.k_nn = p.k_nn * (1.0 - np.asarray(e.il1))
        self.k_nd = p.k_nd * (1.0 - np.asarray(e.il1))
        self.k_pn = p.k_pn * (1.0 + np.asarray(e.kpn_gain))
        cinf = p.c_inf * (1.0 + np.asarray(e.cinf_gain))
        self.inv_cinf2 = 1.0 / (cinf * cinf)
        self.extra_c = np.asarray(e.ca_source, dtype=np.float64)
        self.extra_kill = np.asarray(e.kill, dtype=np.float64)
        if self.deact is not None:
            c_h = self.c_h * (1.0 + np.asarray(e.cinf_gain)) * (1.0 + np.asarray(e.hla_gain))
            self.inv_ch2 = 1.0 / (c_h * c_h)

    def __call__(
        self,
        P: FloatArray,
        N: FloatArray,
        D: FloatArray,
        C: FloatArray,
        kill_scale: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """dP, dN*, dD, dCA. ``kill_scale`` multiplies phagocyte killing (the deactivation extension's
        H/H_0); None is the Reynolds 2006 system."""
        inhib = 1.0 + C * C * self.inv_cinf2
        inv = 1.0 / inhib
        f_n = N * inv
        r = (self.k_nn * N + self.k_np * P + self.k_nd * D) * inv
        if self.loop is not None:
            r = r + mals_loop_drive(il1_signal(N, D, self.k_nn, self.k_nd, inv), self.loop)
        phagocyte_kill = self.k_pn * f_n if kill_scale is None else self.k_pn * f_n * kill_scale
        d_p = P * (
            self.k_pg
            - self.k_pg_over_pinf * P
            - self.kill_m / (self.mu_m + self.k_mp * P)
            - phagocyte_kill
            - self.extra_kill
            - self.own_kill
        )
        d_n = self.s_nr * r / (self.mu_nr + r) - self.mu_n * N
        f2 = f_n * f_n
        f6 = f2 * f2 * f2
        d_d = self.k_dn * f6 / (self.x_dn6 + f6) - self.mu_d * D
        f_c = (N + self.k_cnd * D) * inv
        d_c = self.s_c + self.k_cn * f_c / (1.0 + f_c) - self.mu_c * C + self.extra_c
        return d_p, d_n, d_d, d_c

    def with_deactivation(
        self, P: FloatArray, N: FloatArray, D: FloatArray, C: FloatArray, H: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """dP, dN*, dD, dCA of the extended system (:class:`DeactivationParameters`): killing scaled by
        H/H_0. H itself is advanced by the integrator's exponential update (dH/dt is stiff at high CA)."""
        return self(P, N, D, C, kill_scale=H * self.inv_h0)


@dataclass(frozen=True)
class DeathRule:
    """Death = damage D at or above ``d_crit`` for at least ``hold_h`` hours (insilico.md section 3 proposal,
    after Barber 2021's damage-threshold death time); D_crit = 10 lies far from both D = 0 and D = 17.4.

    ``p_crit`` (structural alternative, not in Reynolds 2006 or insilico.md): death also when the pathogen P
    stays at or above ``p_crit`` for ``hold_h`` hours (uncontrolled infection), so a therapy that weakens
    pathogen control can kill without tissue damage. Infinite (the default): the damage rule alone. The
    numpy, numba and JAX engines run it (``simulation.engines``).
    """

    d_crit: float = 10.0
    hold_h: float = 6.0
    p_crit: float = math.inf


@dataclass(frozen=True)
class Trajectory:
    """What one batch integration returns.

    ``times``: record times in hours ``(k,)``; ``states``: ``(n, k, 4)``; ``aux``: observer states
    ``(n, k, n_aux)`` (``n_aux`` = 0 without observer); ``final``: state at ``t_end`` ``(n, 4)``;
    ``death_time``: hours at which the death rule was first met (NaN when never); ``outcome``: class code
    of the final state (:func:`classify`); ``secondary_time``: see :class:`SecondaryInfection`.
    """

    times: FloatArray
    states: FloatArray
    aux: FloatArray
    aux_names: tuple[str, ...]
    final: FloatArray
    death_time: FloatArray
    outcome: IntArray
    t_end: float
    dt: float
    #: hours at which a secondary infection began (NaN: none); None when integrated without them
    secondary_time: FloatArray | None = None
    #: ICU-acquired infection episodes per patient (``structures.Recurrence``); None without them
    secondary_count: npt.NDArray[np.int64] | None = None

    @property
    def size(self) -> int:
        return int(self.final.shape[0])

    def secondary_by(self, hours: float) -> BoolArray:
        """Whether a secondary infection began at or before ``hours`` (all False without the extension)."""
        if self.secondary_time is None:
            return np.zeros(self.size, dtype=np.bool_)
        return np.asarray(np.nan_to_num(self.secondary_time, nan=np.inf) <= hours)

    def died_by(self, hours: float) -> BoolArray:
        """Whether the death rule was met at or before ``hours``."""
        return np.asarray(np.nan_to_num(self.death_time, nan=np.inf) <= hours)


def classify(y: npt.ArrayLike, p_tol: float = 1e-3, d_death: float = 5.0) -> IntArray:
    """Outcome class of end states ``(n, 4)`` as in insilico.md / reynolds_check.py.

    Health: P <= p_tol and D <= d_death; aseptic death: P cleared but D high; septic death: P persists with
    high D; persistent infection: P persists with low D. The thresholds sit far from all attractors
    (P ~ 0 vs >= 4.9, D ~ 0 vs ~ 17.4), so the classes do not depend on their exact values.
    """
    arr = np.atleast_2d(np.asarray(y, dtype=np.float64))
    infected = arr[:, 0] > p_tol
    damaged = arr[:, 2] > d_death
    out = np.where(
        infected,
        np.where(damaged, SEPTIC_DEATH, PERSISTENT_INFECTION),
        np.where(damaged, ASEPTIC_DEATH, HEALTH),
    )
    return out.astype(np.int64)


def outcome_names(codes: npt.ArrayLike) -> list[str]:
    return [OUTCOME_NAMES[int(c)] for c in np.asarray(codes).ravel()]


def _healed(
    P: FloatArray,
    N: FloatArray,
    D: FloatArray,
    C: FloatArray,
    p: PatientParameters,
    H: FloatArray | None = None,
    deactivation: DeactivationParameters | None = None,
) -> BoolArray:
    """Patients certainly at the health attractor: P, N*, D and CA - s_c/mu_c negligible and the health state
    linearly stable (k_pg < k_pm s_m / mu_m, insilico.md 1.1; kept 10% inside that bound). From there the
    untreated state only relaxes towards (0, 0, 0, s_c/mu_c)."""
    stable = p.k_pg < 0.9 * p.k_pm * p.s_m / p.mu_m
    near = (P < 1e-9) & (N < 1e-4) & (D < 1e-3) & (np.abs(C - p.s_c / p.mu_c) < 5e-4)
    if H is not None and deactivation is not None:
        near &= np.abs(H - deactivation.h_baseline(p)) < 1e-3
    return np.asarray(near & stable)


def check_secondary_inputs(
    n: int, deactivation: DeactivationParameters | None, secondary_draws: SecondaryDraws | None
) -> SecondaryDraws:
    """The draws, once checked for what every engine needs to run secondary infections: the deactivation
    extension (their hazard reads H) and one set of draws per patient."""
    if deactivation is None:
        raise ValueError("secondary infections need the monocyte-deactivation extension (deactivation=)")
    if secondary_draws is None or secondary_draws.exposure.shape[:1] != (n,):
        raise ValueError(f"secondary infections need secondary_draws for {n} patients")
    return secondary_draws


def integrate(
    y0: npt.ArrayLike,
    params: PatientParameters,
    *,
    t_end: float = OUTCOME_HORIZON_H,
    dt: float = DEFAULT_DT,
    schedule: EffectSchedule | None = None,
    record_every: float = 24.0,
    observer: Observer | None = None,
    death_rule: DeathRule = DeathRule(),
    drop_healed: bool = True,
    drop_dead: bool = False,
    chunk_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    deactivation: DeactivationParameters | None = None,
    secondary: SecondaryInfection | None = None,
    secondary_draws: SecondaryDraws | None = None,
) -> Trajectory:
    """Integrate all patients of a batch together with fixed-step classical RK4.

    ``y0`` is ``(n, 4)``. Effects are evaluated once per step at its midpoint (constant within a step), so
    therapy windows act on whole steps: put their edges on the ``dt`` grid. Small negative P and N* from
    round-off are clipped to 0 after each step (insilico.md section 5). ``record_every`` (hours, a multiple
    of ``dt``) sets the sampling of ``states``/``aux``, starting at t = 0. Patients are processed in chunks
    of ``chunk_size`` so that the working arrays stay in cache.

    ``drop_healed``: at each record time, patients at the health attractor (:func:`_healed`) on whom no
    therapy acts any more are frozen: later records repeat their state (each state within 1e-3 of the
    attractor, so no class or observable band can change). ``drop_dead``: patients who met the death rule
    are frozen the same way at the next record (for 28-day trials, where nothing after death is used; the
    outcome class then describes the state at death). Pass both False for a full integration.
    ``progress(done, total)`` is called after each chunk with patient counts.

    ``deactivation``: integrate the monocyte-deactivation extension (:class:`DeactivationParameters`, not
    in Reynolds 2006): H starts at its healthy level H_0 and ``states``/``final`` get a fifth column, H.
    ``y0`` is still ``(n, 4)``. None (the default) is the published model.

    ``secondary`` with ``secondary_draws``: ICU-acquired infections (:class:`SecondaryInfection`; needs
    ``deactivation``). Healed patients are then frozen only once no infection can happen any more (their
    remaining hazard at H = H_0 cannot reach their exposure), so freezing still changes nothing.
    """
    y = np.array(y0, dtype=np.float64, copy=True)
    if y.ndim != 2 or y.shape[1] != 4:
        raise ValueError(f"y0 must have shape (n_patients, 4), got {y.shape}")
    n = y.shape[0]
    if params.size != n:
        raise ValueError(f"params are for {params.size} patients, y0 for {n}")
    n_steps = round(t_end / dt)
    if n_steps < 1 or not math.isclose(n_steps * dt, t_end):
        raise ValueError(f"t_end={t_end} is not a positive multiple of dt={dt}")
    rec_stride = round(record_every / dt)
    if rec_stride < 1 or not math.isclose(rec_stride * dt, record_every):
        raise ValueError(f"record_every={record_every} must be a positive multiple of dt={dt}")
    n_rec = n_steps // rec_stride + 1
    aux_names = observer.names if observer is not None else ()
    n_state = 4 if deactivation is None else 5
    if secondary is not None:
        check_secondary_inputs(n, deactivation, secondary_draws)
    sec_time = np.full(n, np.nan) if secondary is not None else None
    sec_count = np.zeros(n, dtype=np.int64) if secondary is not None else None
    if deactivation is not None:
        y = np.concatenate([y, deactivation.h_baseline(params)[:, None]], axis=1)
    states = np.empty((n, n_rec, n_state))
    aux_all = np.empty((n, n_rec, len(aux_names)))
    final = np.empty((n, n_state))
    death_time = np.full(n, np.nan)
    size = max(1, chunk_size)
    for start in range(0, n, size):
        sel = np.arange(start, min(n, start + size))
        _integrate_chunk(
            y[sel],
            params.take(sel),
            schedule.take(sel) if schedule is not None else None,
            observer,
            death_rule,
            n_steps=n_steps,
            dt=dt,
            rec_stride=rec_stride,
            drop_healed=drop_healed,
            drop_dead=drop_dead,
            out_states=states,
            out_aux=aux_all,
            out_final=final,
            out_death=death_time,
            offset=start,
            deactivation=deactivation,
            secondary=secondary,
            draws=secondary_draws.take(sel)
            if secondary is not None and secondary_draws is not None
            else None,
            out_secondary=sec_time,
            out_episodes=sec_count,
        )
        if progress is not None:
            progress(int(sel[-1]) + 1, n)
    return Trajectory(
        times=np.arange(n_rec, dtype=np.float64) * (rec_stride * dt),
        states=states,
        aux=aux_all,
        aux_names=aux_names,
        final=final,
        death_time=death_time,
        outcome=classify(final),
        t_end=n_steps * dt,
        dt=dt,
        secondary_time=sec_time,
        secondary_count=sec_count,
    )


def _integrate_chunk(
    y: FloatArray,
    p: PatientParameters,
    schedule: EffectSchedule | None,
    observer: Observer | None,
    death_rule: DeathRule,
    *,
    n_steps: int,
    dt: float,
    rec_stride: int,
    drop_healed: bool,
    drop_dead: bool,
    out_states: FloatArray,
    out_aux: FloatArray,
    out_final: FloatArray,
    out_death: FloatArray,
    offset: int,
    deactivation: DeactivationParameters | None = None,
    secondary: SecondaryInfection | None = None,
    draws: SecondaryDraws | None = None,
    out_secondary: FloatArray | None = None,
    out_episodes: npt.NDArray[np.int64] | None = None,
) -> None:
    m = y.shape[0]
    n_rec = out_states.shape[1]
    idx = np.arange(m) + offset  # global rows of the active patients
    P, N, D, C = (np.ascontiguousarray(y[:, j]) for j in range(4))
    ext = deactivation is not None
    H = np.ascontiguousarray(y[:, 4]) if ext else np.empty(0)
    aux = observer.initial(y, p) if observer is not None else np.empty((m, 0))
    above_since = np.full(m, np.inf)
    dead = np.zeros(m, dtype=np.bool_)
    f = _Rhs(p, deactivation)
    sec = secondary is not None and draws is not None and out_secondary is not None
    if sec:
        assert secondary is not None and draws is not None and out_secondary is not None
        episodes = secondary.max_episodes
        exposures = episode_columns(draws.exposure, episodes)
        inocula = secondary.inoculum_scale * episode_columns(draws.relative_inoculum, episodes)
        exposure, inoculum = exposures[:, 0].copy(), inocula[:, 0].copy()
        count = np.zeros(m, dtype=np.int64)  # episodes so far
        cum_hazard = np.zeros(m)
        t_sec = np.full(m, np.nan)  # the latest episode's onset (its antibiotic course)
    out_states[idx, 0, :] = y
    out_aux[idx, 0, :] = aux
    half = 0.5 * dt
    sixth = dt / 6.0
    d_crit = death_rule.d_crit
    p_crit = death_rule.p_crit
    pathogen_death = math.isfinite(p_crit)
    hold = death_rule.hold_h - 1e-9
    rec = 1
    for step in range(1, n_steps + 1):
        t0 = (step - 1) * dt
        effects = schedule.effects_at(t0 + half) if schedule is not None else None
        f.set_effects(effects)
        if sec:
            assert secondary is not None
            t_mid = t0 + half
            on = (t_mid >= t_sec + secondary.abx_delay_h) & (
                t_mid < t_sec + (secondary.abx_delay_h + secondary.abx_duration_h)
            )  # NaN t_sec compares False
            f.own_kill = np.where(on, secondary.abx_kill_per_h, 0.0)
            h_rel_start = H * f.inv_h0
        if ext:
            # H is linear in itself for given CA and stiff when CA >> C_H (rate k_rec (1 + (CA/C_H)^2)), so
            # it is advanced by its exact exponential update instead of RK4: within the step's stages it
            # follows that update with CA frozen at the step start, and the step's update uses the mean of
            # (CA/C_H)^2 at both ends (exact for constant CA).
            x2_0 = C * C * f.inv_ch2
            h_inf = 1.0 / (1.0 + x2_0)
            decay = np.exp(-f.k_rec * (1.0 + x2_0) * half)
            h_mid = h_inf + (H - h_inf) * decay
            h_end = h_inf + (H - h_inf) * decay * decay
            g = f.with_deactivation
            k1p, k1n, k1d, k1c = g(P, N, D, C, H)
            k2p, k2n, k2d, k2c = g(P + half * k1p, N + half * k1n, D + half * k1d, C + half * k1c, h_mid)
            k3p, k3n, k3d, k3c = g(P + half * k2p, N + half * k2n, D + half * k2d, C + half * k2c, h_mid)
            k4p, k4n, k4d, k4c = g(P + dt * k3p, N + dt * k3n, D + dt * k3d, C + dt * k3c, h_end)
            c_end = C + sixth * (k1c + 2.0 * (k2c + k3c) + k4c)
            x2 = 0.5 * (x2_0 + c_end * c_end * f.inv_ch2)
            h_inf = 1.0 / (1.0 + x2)
            H = h_inf + (H - h_inf) * np.exp(-f.k_rec * (1.0 + x2) * dt)
        else:
            k1p, k1n, k1d, k1c = f(P, N, D, C)
            k2p, k2n, k2d, k2c = f(P + half * k1p, N + half * k1n, D + half * k1d, C + half * k1c)
            k3p, k3n, k3d, k3c = f(P + half * k2p, N + half * k2n, D + half * k2d, C + half * k2c)
            k4p, k4n, k4d, k4c = f(P + dt * k3p, N + dt * k3n, D + dt * k3d, C + dt * k3c)
        P = P + sixth * (k1p + 2.0 * (k2p + k3p) + k4p)
        N = N + sixth * (k1n + 2.0 * (k2n + k3n) + k4n)
        D = D + sixth * (k1d + 2.0 * (k2d + k3d) + k4d)
        C = C + sixth * (k1c + 2.0 * (k2c + k3c) + k4c)
        np.maximum(P, 0.0, out=P)
        np.maximum(N, 0.0, out=N)
        t = step * dt
        # Death rule: D >= d_crit (or P >= p_crit when set) held for hold_h hours.
        critical = (d_crit <= D) | (p_crit <= P) if pathogen_death else d_crit <= D
        above_since = np.where(critical, np.minimum(above_since, t), np.inf)
        newly = (t - above_since >= hold) & ~dead
        if newly.any():
            dead |= newly
            out_death[idx[newly]] = t
        if sec:
            assert secondary is not None and out_secondary is not None
            if t0 >= secondary.at_risk_from_h - 1e-9 and t <= secondary.at_risk_until_h + 1e-9:
                at_risk = ~dead & (count < episodes)
                rate = secondary.hazard_per_h * np.where(
                    h_rel_start < secondary.low_fraction, secondary.hazard_ratio_low, 1.0
                )
                cum_hazard += np.where(at_risk, rate * dt, 0.0)
                hit = at_risk & (cum_hazard >= exposure)
                if hit.any():
                    P = P + np.where(hit, inoculum, 0.0)
                    out_secondary[idx[hit & (count == 0)]] = t  # the first episode's onset
                    if out_episodes is not None:
                        out_episodes[idx[hit]] += 1
                    t_sec[hit] = t
                    count, cum_hazard, exposure, inoculum = next_episode(
                        hit, count, cum_hazard, exposures, inocula
                    )
        if observer is not None:
            cols = [P, N, D, C, H] if ext else [P, N, D, C]
            aux = observer.update(aux, np.stack(cols, axis=1), dt, p, effects)
        if step % rec_stride == 0:
            out_states[idx, rec, 0] = P
            out_states[idx, rec, 1] = N
            out_states[idx, rec, 2] = D
            out_states[idx, rec, 3] = C
            if ext:
                out_states[idx, rec, 4] = H
            out_aux[idx, rec, :] = aux
            if (drop_healed or drop_dead) and rec < n_rec - 1:
                done = np.zeros(P.shape, dtype=np.bool_)
                if drop_healed and (schedule is None or not schedule.active_after(t)):
                    healed = _healed(P, N, D, C, p, H if ext else None, deactivation)
                    if sec:
                        assert secondary is not None
                        # at H = H_0 the hazard is the baseline one until the window closes
                        left = secondary.hazard_per_h * max(
                            0.0, secondary.at_risk_until_h - max(t, secondary.at_risk_from_h)
                        )
                        healed &= (count >= episodes) | (cum_hazard + left < exposure)
                    done |= healed
                if drop_dead:
                    done |= dead
                if done.any():
                    rows = idx[done]
                    out_states[rows, rec + 1 :, :] = out_states[rows, rec : rec + 1, :]
                    out_aux[rows, rec + 1 :, :] = out_aux[rows, rec : rec + 1, :]
                    out_final[rows] = out_states[rows, rec, :]
                    keep = ~done
                    idx = idx[keep]
                    P, N, D, C = P[keep], N[keep], D[keep], C[keep]
                    if ext:
                        H = H[keep]
                    aux = aux[keep]
                    above_since = above_since[keep]
                    dead = dead[keep]
                    if sec:
                        exposure, inoculum = exposure[keep], inoculum[keep]
                        exposures, inocula, count = exposures[keep], inocula[keep], count[keep]
                        cum_hazard, t_sec = cum_hazard[keep], t_sec[keep]
                    p = p.take(keep)
                    f = _Rhs(p, deactivation)
                    if schedule is not None:
                        schedule = schedule.take(keep)
            rec += 1
        if P.shape[0] == 0:
            return
    out_final[idx] = np.stack([P, N, D, C, H] if ext else [P, N, D, C], axis=1)


@dataclass(frozen=True)
class CourseGrid:
    """A checked batch and its fixed-step grid, for the compiled backends (full courses, records that
    divide the course): ``y`` ``(n, 4)`` float64, ``n_steps`` steps of ``dt``, a record every ``stride``
    steps, ``n_rec`` records including t = 0."""

    y: FloatArray
    n_steps: int
    stride: int
    n_rec: int

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def trajectory(self, states: FloatArray, death_time: FloatArray, dt: float) -> Trajectory:
        """The :class:`Trajectory` of a full integration on this grid (no observer, no freezing)."""
        final = states[:, -1, :].copy()
        return Trajectory(
            times=np.arange(self.n_rec, dtype=np.float64) * (self.stride * dt),
            states=states,
            aux=np.empty((self.n, self.n_rec, 0)),
            aux_names=(),
            final=final,
            death_time=death_time,
            outcome=classify(final),
            t_end=self.n_steps * dt,
            dt=dt,
        )


def course_grid(
    y0: npt.ArrayLike, params: PatientParameters, t_end: float, dt: float, record_every: float
) -> CourseGrid:
    """Check a batch for the compiled backends (clear errors for shapes, sizes and grids) and lay out its
    step and record grid."""
    y = np.ascontiguousarray(y0, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != 4:
        raise ValueError(f"y0 must have shape (n_patients, 4), got {y.shape}")
    n = y.shape[0]
    if params.size != n:
        raise ValueError(f"params are for {params.size} patients, y0 for {n}")
    n_steps = round(t_end / dt)
    stride = round(record_every / dt)
    if n_steps < 1 or not math.isclose(n_steps * dt, t_end):
        raise ValueError(f"t_end={t_end} is not a positive multiple of dt={dt}")
    if stride < 1 or not math.isclose(stride * dt, record_every) or n_steps % stride:
        raise ValueError(f"record_every={record_every} must divide t_end and be a multiple of dt")
    return CourseGrid(y, n_steps, stride, n_steps // stride + 1)


def simulate_outcomes(
    k_pg: npt.ArrayLike,
    p0: npt.ArrayLike,
    *,
    t_end: float = OUTCOME_HORIZON_H,
    dt: float = DEFAULT_DT,
    base: ReynoldsParameters = REYNOLDS_2006,
    schedule: EffectSchedule | None = None,
) -> Trajectory:
    """Convenience: published parameters except per-patient ``k_pg`` and ``p0`` (broadcast together)."""
    kk, pp = np.broadcast_arrays(np.atleast_1d(np.asarray(k_pg, float)), np.atleast_1d(np.asarray(p0, float)))
    params = patient_parameters(kk.size, base, k_pg=kk)
    return integrate(
        initial_state(pp, params), params, t_end=t_end, dt=dt, schedule=schedule, record_every=t_end
    )


def solve_ivp_final(
    params: ReynoldsParameters,
    p0: float,
    *,
    t_end: float = OUTCOME_HORIZON_H,
    method: str = "LSODA",
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> FloatArray:
    """Reference: one patient with scipy ``solve_ivp`` (no therapy); returns the state at ``t_end``."""
    from scipy.integrate import solve_ivp

    y0 = [p0, 0.0, 0.0, params.ca_baseline]
    sol = solve_ivp(lambda t, y: rhs(t, y, params), (0.0, t_end), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return np.asarray(sol.y[:, -1], dtype=np.float64)
