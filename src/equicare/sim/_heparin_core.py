"""Vectorised physiology of the heparin simulator (private; see :mod:`equicare.sim.heparin`).

Every function works on a whole cohort at once (arrays of shape ``(n_patients,)``); the gymnasium
environment is the special case ``n_patients = 1``. All random numbers that do not depend on the
policy (patients, lab noise, event uniforms) are drawn up front from one generator, so two policies
simulated with the same seed see the same patients and the same noise (common random numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = [
    "STATE_FEATURES",
    "OBS_LOW",
    "OBS_HIGH",
    "HeparinConfig",
    "Cohort",
    "sample_cohort",
    "observe",
    "advance",
    "range_reward",
    "nomogram_probs",
    "true_aptt",
]

#: The 16 observed features, in column order of the observation vector and of the dataset.
STATE_FEATURES: tuple[str, ...] = (
    "aptt",            # measured aPTT now (s)
    "aptt_prev",       # measured aPTT 6 h earlier (s); = aptt at the first step
    "aptt_baseline",   # pre-treatment aPTT (s)
    "pt",              # prothrombin time (s)
    "inr",             # international normalised ratio
    "platelets",       # 10^9 / L
    "hemoglobin",      # g / dL
    "creatinine",      # serum creatinine, mg / dL
    "weight",          # kg
    "age",             # years
    "female",          # 0 / 1
    "heart_rate",      # beats / min
    "sbp",             # systolic blood pressure, mmHg
    "temperature",     # deg C
    "hours",           # hours on therapy at this decision
    "rate_prev",       # infusion rate of the previous 6 h (U/kg/h); 0 at the first step
)

#: Lower and upper bounds of the observed features (observations are clipped into them).
OBS_LOW: tuple[float, ...] = (15.0, 15.0, 15.0, 5.0, 0.3, 10.0, 5.0, 0.3, 40.0, 18.0, 0.0, 20.0,
                              40.0, 33.0, 0.0, 0.0)
OBS_HIGH: tuple[float, ...] = (200.0, 200.0, 200.0, 40.0, 5.0, 800.0, 18.0, 8.0, 180.0, 95.0, 1.0,
                               220.0, 260.0, 42.0, 1000.0, 1000.0)

# ---------------------------------------------------------------- pharmacology constants
#: Volume of distribution per kg (mL/kg).
V_PER_KG = 70.0
#: Typical clearance of an 80 kg patient with creatinine clearance 90 mL/min (mL/h).
CL_TYPICAL = 36.0 * 80.0
#: Between-patient SD of log clearance and of log EC50.
ETA_CL_SD = 0.35
ETA_EC50_SD = 0.50
#: Emax model of the aPTT response: maximal prolongation (s), typical EC50 (U/mL), Hill exponent.
EMAX = 140.0
EC50_TYPICAL = 0.70
HILL = 1.3
#: Within-patient drift of log EC50: AR(1) coefficient and innovation SD per 6 h step.
DRIFT_AR = 0.95
DRIFT_SD = 0.08
#: Heparin resistance developing on therapy: mean and SD of the patient slope of log EC50 per day.
RESIST_MEAN = 0.08
RESIST_SD = 0.06
#: Hazard slopes of the adverse events (per second of aPTT beyond the thresholds).
BLEED_SLOPE = 0.05
CLOT_SLOPE = 0.07
#: aPTT above which bleeding risk rises and below which clot risk rises (s).
BLEED_FROM = 100.0
CLOT_BELOW = 60.0


@dataclass(frozen=True, kw_only=True)
class HeparinConfig:
    """Settings of the heparin dosing simulator.

    Parameters
    ----------
    horizon : int
        Maximum number of 6-hourly decisions per patient (20 = 5 days).
    dt_hours : float
        Hours between decisions (and between aPTT measurements).
    rate_bins : tuple of float
        Infusion rate of each discrete action in U/kg/h (action ``i`` infuses ``rate_bins[i]``).
    aptt_low, aptt_high : float
        Therapeutic aPTT range in seconds.
    groups : tuple of str
        Race/ethnicity group labels.
    group_probs : tuple of float
        Share of each group in the population (sums to 1).
    adherence : tuple of float
        Per group: probability that the clinician follows the nomogram at a step (otherwise the
        previous rate is kept; at the first step a cautious 12 U/kg/h start). The default encodes a
        documented adherence gap: 0.80 for ``white``/``asian`` patients, 0.55 for ``black`` and
        0.65 for ``hispanic`` patients.
    clinician_noise : float
        Probability that the chosen rate is replaced by an adjacent bin (up or down with equal
        probability, reflected at the ends).
    aptt_cv : float
        Coefficient of variation of the aPTT assay (log-normal measurement noise).
    event_penalty : float
        Reward penalty of an adverse event (major bleed or thrombosis); the episode ends.
    bleed_base, clot_base : float
        Baseline hazards per 6 h step of a major bleed and of a thrombotic event.
    loading_bolus, rebolus : float
        Protocol boluses in U/kg: the loading bolus at the first step and a re-bolus whenever the
        measured aPTT is below ``rebolus_below`` (each only if the infusion is not held).
    rebolus_below : float
        aPTT threshold (s) of the re-bolus.
    """

    horizon: int = 20
    dt_hours: float = 6.0
    rate_bins: tuple[float, ...] = (0.0, 6.0, 12.0, 18.0, 24.0, 30.0)
    aptt_low: float = 60.0
    aptt_high: float = 100.0
    groups: tuple[str, ...] = ("white", "black", "hispanic", "asian")
    group_probs: tuple[float, ...] = (0.60, 0.18, 0.14, 0.08)
    adherence: tuple[float, ...] = (0.80, 0.55, 0.65, 0.80)
    clinician_noise: float = 0.20
    aptt_cv: float = 0.10
    event_penalty: float = 3.0
    bleed_base: float = 0.0006
    clot_base: float = 0.0006
    loading_bolus: float = 80.0
    rebolus: float = 40.0
    rebolus_below: float = 45.0

    def __post_init__(self) -> None:
        own = "HeparinConfig"

        def bad(name: str, expected: str) -> InvalidParameterError:
            return InvalidParameterError(PARAM_MESSAGE.format(
                name=name, owner=own, expected=expected, got=getattr(self, name)))

        def number(name: str, ok: Callable[[float], bool], expected: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not ok(float(v)):
                raise bad(name, expected)

        def numbers(name: str, expected: str) -> tuple[float, ...]:
            v = getattr(self, name)
            try:
                if isinstance(v, (str, bytes)) or any(isinstance(x, (bool, str, bytes))
                                                      for x in v):
                    raise TypeError
                return tuple(float(x) for x in v)
            except (TypeError, ValueError):
                raise bad(name, expected) from None

        if isinstance(self.horizon, bool) or not isinstance(self.horizon, (int, np.integer)) \
                or self.horizon < 1:
            raise bad("horizon", "an int >= 1")
        number("dt_hours", lambda v: v > 0, "a number in (0, inf)")
        rates = "an increasing tuple of >= 2 non-negative rates"
        rb = numbers("rate_bins", rates)
        if len(rb) < 2 or any(r < 0 for r in rb) or any(np.diff(rb) <= 0):
            raise bad("rate_bins", rates)
        object.__setattr__(self, "rate_bins", rb)
        number("aptt_low", lambda v: v > 0, "a number in (0, inf)")
        number("aptt_high", lambda v: v > float(self.aptt_low),
               f"a number greater than aptt_low={self.aptt_low}")
        if isinstance(self.groups, (str, bytes)):
            raise bad("groups", "a tuple of distinct labels")
        try:
            object.__setattr__(self, "groups", tuple(self.groups))
        except TypeError:
            raise bad("groups", "a tuple of distinct labels") from None
        if len(self.groups) < 1 or len(set(self.groups)) != len(self.groups):
            raise bad("groups", "a tuple of distinct labels")
        shares = "one non-negative share per group, summing to 1"
        gp = np.asarray(numbers("group_probs", shares))
        if gp.shape != (len(self.groups),) or (gp < 0).any() or abs(gp.sum() - 1) > 1e-9:
            raise bad("group_probs", shares)
        object.__setattr__(self, "group_probs", tuple(gp.tolist()))
        adh = "one probability in [0, 1] per group"
        ad = np.asarray(numbers("adherence", adh))
        if ad.shape != (len(self.groups),) or not ((ad >= 0) & (ad <= 1)).all():
            raise bad("adherence", adh)
        object.__setattr__(self, "adherence", tuple(ad.tolist()))
        number("clinician_noise", lambda v: 0 <= v <= 1, "a number in [0, 1]")
        for name in ("aptt_cv", "event_penalty", "bleed_base", "clot_base", "loading_bolus",
                     "rebolus", "rebolus_below"):
            number(name, lambda v: v >= 0, "a number in [0, inf)")

    @property
    def n_actions(self) -> int:
        """Number of infusion-rate bins."""
        return len(self.rate_bins)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly dictionary (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> HeparinConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: (tuple(v) if isinstance(v, list) else v)  # type: ignore[arg-type]
                      for k, v in d.items()})


@dataclass
class Cohort:
    """Hidden and observed state of ``n`` patients (all arrays of shape ``(n,)`` unless stated).

    The per-step noise arrays have shape ``(n, horizon + 1)`` and are indexed by the step.
    """

    group: NDArray[np.int64]
    weight: NDArray[np.float64]
    age: NDArray[np.float64]
    female: NDArray[np.float64]
    creat_base: NDArray[np.float64]
    aptt0: NDArray[np.float64]
    volume: NDArray[np.float64]        # mL
    cl_base: NDArray[np.float64]       # mL/h at baseline creatinine
    ec50_base: NDArray[np.float64]     # U/mL
    resist: NDArray[np.float64]        # slope of log EC50 per day on therapy
    dt_hours: float
    # dynamic
    t: int
    conc: NDArray[np.float64]          # U/mL
    drift: NDArray[np.float64]         # log EC50 drift
    creat: NDArray[np.float64]
    hb: NDArray[np.float64]
    platelets: NDArray[np.float64]
    aptt_meas: NDArray[np.float64]
    aptt_prev: NDArray[np.float64]
    rate_prev: NDArray[np.float64]
    pt: NDArray[np.float64]
    vitals: NDArray[np.float64]        # (n, 3): heart rate, sbp, temperature
    alive: NDArray[np.bool_]           # still on therapy (no event, horizon not reached)
    # common random numbers
    z_meas: NDArray[np.float64]
    z_drift: NDArray[np.float64]
    z_lab: NDArray[np.float64]         # (n, horizon + 1, 7): pt, creat, hb, plt, hr, sbp, temp
    u_event: NDArray[np.float64]
    u_type: NDArray[np.float64]

    @property
    def n(self) -> int:
        """Number of patients."""
        return int(self.weight.shape[0])

    def ec50(self) -> NDArray[np.float64]:
        """Return the current EC50 (U/mL), drift and resistance included."""
        return self.ec50_base * np.exp(self.drift + self.resist * self.t * self.dt_hours / 24.0)

    def clearance(self) -> NDArray[np.float64]:
        """Return the clearance (mL/h): allometric in weight, rising with creatinine clearance."""
        return self.cl_base * (self.creat_base / self.creat) ** 0.4

    def crcl(self) -> NDArray[np.float64]:
        """Cockcroft-Gault creatinine clearance (mL/min) at the current creatinine."""
        return _crcl(self.age, self.weight, self.creat, self.female)


def _crcl(age: NDArray[np.float64], weight: NDArray[np.float64], creat: NDArray[np.float64],
          female: NDArray[np.float64]) -> NDArray[np.float64]:
    out = (140.0 - age) * weight / (72.0 * creat) * np.where(female > 0, 0.85, 1.0)
    return np.asarray(np.clip(out, 5.0, 200.0))


def true_aptt(conc: NDArray[np.float64], aptt0: NDArray[np.float64],
              ec50: NDArray[np.float64]) -> NDArray[np.float64]:
    """Emax response ``aPTT = aPTT0 + Emax * C^h / (EC50^h + C^h)`` (seconds)."""
    ch = np.power(np.maximum(conc, 0.0), HILL)
    return np.asarray(aptt0 + EMAX * ch / (np.power(ec50, HILL) + ch))


def sample_cohort(n: int, cfg: HeparinConfig, rng: np.random.Generator) -> Cohort:
    """Draw ``n`` patients and all of their policy-independent noise.

    Covariates: weight log-normal (median 82 kg men, 70 kg women), age N(64, 14) clipped to
    [18, 95], creatinine log-normal (median 1.0 / 0.85 mg/dL, SD log 0.35), baseline aPTT N(30, 3),
    platelets log-normal (median 230), haemoglobin N(13.2 / 12.2, 1.3). Race/ethnicity groups are
    drawn with ``cfg.group_probs`` and do not change physiology.
    """
    h = cfg.horizon + 1
    group = rng.choice(len(cfg.groups), size=n, p=np.asarray(cfg.group_probs))
    female = (rng.random(n) < 0.45).astype(np.float64)
    weight = np.clip(np.exp(np.log(np.where(female > 0, 70.0, 82.0))
                            + 0.2 * rng.standard_normal(n)), 40.0, 180.0)
    age = np.clip(64.0 + 14.0 * rng.standard_normal(n), 18.0, 95.0)
    creat = np.clip(np.exp(np.log(np.where(female > 0, 0.85, 1.0)) + 0.35 * rng.standard_normal(n)),
                    0.4, 6.0)
    aptt0 = np.clip(30.0 + 3.0 * rng.standard_normal(n), 22.0, 42.0)
    platelets = np.clip(np.exp(np.log(230.0) + 0.3 * rng.standard_normal(n)), 40.0, 600.0)
    hb = np.clip(np.where(female > 0, 12.2, 13.2) + 1.3 * rng.standard_normal(n), 7.0, 18.0)
    crcl = _crcl(age, weight, creat, female)
    cl = CL_TYPICAL * (weight / 80.0) ** 0.75 * (crcl / 90.0) ** 0.4 * np.exp(
        ETA_CL_SD * rng.standard_normal(n))
    ec50 = EC50_TYPICAL * np.exp(ETA_EC50_SD * rng.standard_normal(n)) * np.clip(
        1.0 - 0.006 * (age - 60.0), 0.6, 1.3) * np.where(female > 0, 0.9, 1.0)
    ec50 = ec50 * np.clip(platelets / 230.0, 0.5, 2.0) ** 0.2
    resist = RESIST_MEAN + RESIST_SD * rng.standard_normal(n)
    z_meas = rng.standard_normal((n, h))
    z_drift = rng.standard_normal((n, h))
    z_lab = rng.standard_normal((n, h, 7))
    u_event = rng.random((n, h))
    u_type = rng.random((n, h))
    pt = 12.0 + 0.6 * z_lab[:, 0, 0]
    c = Cohort(
        group=group.astype(np.int64), weight=weight, age=age, female=female, creat_base=creat,
        aptt0=aptt0, volume=V_PER_KG * weight, cl_base=cl, ec50_base=ec50,
        resist=resist, dt_hours=float(cfg.dt_hours),
        t=0, conc=np.zeros(n), drift=np.zeros(n), creat=creat.copy(), hb=hb,
        platelets=platelets, aptt_meas=np.zeros(n), aptt_prev=np.zeros(n), rate_prev=np.zeros(n),
        pt=pt, vitals=np.zeros((n, 3)), alive=np.ones(n, dtype=bool),
        z_meas=z_meas, z_drift=z_drift, z_lab=z_lab, u_event=u_event, u_type=u_type,
    )
    c.aptt_meas = _measure(aptt0, z_meas[:, 0], cfg)
    c.aptt_prev = c.aptt_meas.copy()
    c.vitals = _vitals(c, 0)
    return c


def _measure(aptt: NDArray[np.float64], z: NDArray[np.float64], cfg: HeparinConfig
             ) -> NDArray[np.float64]:
    return np.asarray(np.clip(aptt * np.exp(cfg.aptt_cv * z - 0.5 * cfg.aptt_cv**2), 15.0, 200.0))


def _vitals(c: Cohort, t: int) -> NDArray[np.float64]:
    z = c.z_lab[:, t]
    hr = 80.0 + 3.0 * (12.5 - c.hb) + 6.0 * z[:, 4]
    sbp = 125.0 - 4.0 * (12.5 - c.hb) + 10.0 * z[:, 5] - 3.0 * z[:, 4]
    temp = 37.0 + 0.3 * z[:, 6] + 0.1 * (12.5 - c.hb)
    return np.stack([hr, sbp, temp], axis=1)


def observe(c: Cohort, cfg: HeparinConfig) -> NDArray[np.float32]:
    """Observation matrix of shape ``(n, 16)`` in :data:`STATE_FEATURES` order."""
    inr = (c.pt / 12.0) ** 1.1
    obs = np.stack([
        c.aptt_meas, c.aptt_prev, c.aptt0, c.pt, inr, c.platelets, c.hb, c.creat, c.weight,
        c.age, c.female, c.vitals[:, 0], c.vitals[:, 1], c.vitals[:, 2],
        np.full(c.n, c.t * cfg.dt_hours), c.rate_prev,
    ], axis=1)
    out: NDArray[np.float32] = np.clip(obs, OBS_LOW, OBS_HIGH).astype(np.float32)
    return out


def range_reward(aptt: NDArray[np.float64], cfg: HeparinConfig) -> NDArray[np.float64]:
    r"""APTT part of the clinical reward :math:`r_p`.

    .. math::
        r(x) = \begin{cases} 1 & 60 \le x \le 100 \\ -\min(1, (60 - x)/30) & x < 60 \\
        -\min(1.5, (x - 100)/40) & x > 100 \end{cases}

    (bounds from ``cfg.aptt_low`` / ``cfg.aptt_high``; supratherapeutic values are penalised up to
    1.5 because they drive bleeding).
    """
    x = np.asarray(aptt, dtype=np.float64)
    lo, hi = cfg.aptt_low, cfg.aptt_high
    return np.where(x < lo, -np.minimum(1.0, (lo - x) / 30.0),
                    np.where(x > hi, -np.minimum(1.5, (x - hi) / 40.0), 1.0))


def advance(c: Cohort, actions: NDArray[np.int64], cfg: HeparinConfig
            ) -> dict[str, NDArray[np.float64]]:
    r"""Apply one 6-hour step to the patients still on therapy (in place).

    Pharmacokinetics (one compartment, exact solution over the step of length :math:`\Delta`):
    bolus :math:`B` (U) at the start, infusion :math:`R` (U/h) throughout,

    .. math::
        C^+ = C_t + B/V,\quad C_{ss} = R / CL,\quad k = CL/V,\\
        C_{t+1} = C_{ss} + (C^+ - C_{ss}) e^{-k\Delta},\quad
        \bar C = C_{ss} + (C^+ - C_{ss}) \frac{1 - e^{-k\Delta}}{k\Delta}.

    Pharmacodynamics: Emax aPTT response (:func:`true_aptt`) at :math:`C_{t+1}` (the measured
    value, with log-normal assay noise) and at :math:`\bar C` (the exposure that drives adverse
    events). Hazards per step: bleed :math:`h_b = b_0 e^{0.05 (\bar a - 100)^+} (1 + [plt < 100])
    (1 + 0.02 (age - 65)^+)`, clot :math:`h_c = c_0 e^{0.07 (60 - \bar a)^+} (1 + 2 e^{-t/4})`;
    an event happens with probability :math:`1 - e^{-(h_b + h_c)}` and ends therapy.

    Returns
    -------
    dict of arrays of shape (n,)
        ``reward``, ``range_reward``, ``event`` (0 none, 1 bleed, 2 clot), ``aptt_true`` (true
        aPTT at the end of the step), ``aptt_exposure``, ``terminated``, ``bolus`` (U/kg).
        Entries of patients not on therapy are 0 / NaN.
    """
    n = c.n
    t = c.t
    act = np.asarray(actions, dtype=np.int64)
    rate = np.asarray(cfg.rate_bins)[act]                        # U/kg/h
    on = rate > 0
    rebolus = on & (t > 0) & (c.aptt_meas < cfg.rebolus_below)
    bolus_kg = np.where(on & (t == 0), cfg.loading_bolus, np.where(rebolus, cfg.rebolus, 0.0))
    cl = c.clearance()
    k = cl / c.volume
    dt = cfg.dt_hours
    c_plus = c.conc + bolus_kg * c.weight / c.volume
    c_ss = rate * c.weight / cl
    e = np.exp(-k * dt)
    c_next = c_ss + (c_plus - c_ss) * e
    c_avg = c_ss + (c_plus - c_ss) * (1.0 - e) / (k * dt)
    ec50 = c.ec50()
    a_avg = true_aptt(c_avg, c.aptt0, ec50)
    # adverse events
    hb_f = 1.0 + (c.platelets < 100.0)
    age_f = 1.0 + 0.02 * np.maximum(c.age - 65.0, 0.0)
    h_b = cfg.bleed_base * np.exp(BLEED_SLOPE * np.maximum(a_avg - BLEED_FROM, 0.0)) * hb_f * age_f
    h_c = cfg.clot_base * np.exp(CLOT_SLOPE * np.maximum(CLOT_BELOW - a_avg, 0.0)) * (
        1.0 + 2.0 * np.exp(-t / 4.0))
    p_event = 1.0 - np.exp(-(h_b + h_c))
    ev = c.u_event[:, t] < p_event
    bleed = ev & (c.u_type[:, t] < h_b / (h_b + h_c))
    event = np.where(ev, np.where(bleed, 1, 2), 0)
    # drift of sensitivity, then the new aPTT
    t1 = t + 1
    c.drift = DRIFT_AR * c.drift + DRIFT_SD * c.z_drift[:, t1]
    a_true = true_aptt(c_next, c.aptt0, c.ec50())
    a_meas = _measure(a_true, c.z_meas[:, t1], cfg)
    # labs and vitals
    z = c.z_lab[:, t1]
    c.creat = np.clip(np.exp(0.8 * np.log(c.creat) + 0.2 * np.log(c.creat_base) + 0.05 * z[:, 1]),
                      0.3, 8.0)
    c.hb = np.clip(c.hb - 0.05 - 0.004 * np.maximum(a_avg - 80.0, 0.0) + 0.2 * z[:, 2]
                   - 2.0 * bleed, 5.0, 18.0)
    c.platelets = np.clip(c.platelets * np.exp(-0.01 + 0.04 * z[:, 3]), 10.0, 800.0)
    c.pt = 12.0 + 0.6 * z[:, 0] + 0.02 * (a_true - c.aptt0)
    rr = range_reward(a_meas, cfg)
    reward = rr - cfg.event_penalty * ev
    live = c.alive.copy()
    c.conc = np.where(live, c_next, c.conc)
    c.aptt_prev = np.where(live, c.aptt_meas, c.aptt_prev)
    c.aptt_meas = np.where(live, a_meas, c.aptt_meas)
    c.rate_prev = np.where(live, rate, c.rate_prev)
    c.t = t1
    c.vitals = _vitals(c, t1)
    terminated = live & (ev | (t1 >= cfg.horizon))
    c.alive = live & ~terminated
    nan = np.full(n, np.nan)
    return {
        "reward": np.where(live, reward, 0.0),
        "range_reward": np.where(live, rr, 0.0),
        "event": np.where(live, event, 0).astype(np.float64),
        "aptt_true": np.where(live, a_true, nan),
        "aptt_meas": np.where(live, a_meas, nan),
        "aptt_exposure": np.where(live, a_avg, nan),
        "terminated": terminated.astype(np.float64),
        "bolus": np.where(live, bolus_kg, 0.0),
    }


def nomogram_probs(obs: NDArray[np.float32], groups: NDArray[np.int64], step: int,
                   cfg: HeparinConfig) -> NDArray[np.float64]:
    """Return the behaviour policy's action probabilities (clinical nomogram with noise).

    Nomogram (weight-based, adjusted by the last measured aPTT, in rate bins of 6 U/kg/h):
    first step 18 U/kg/h (bin 3) after an 80 U/kg loading bolus; later: aPTT < 60 s -> one bin up
    (with a 40 U/kg re-bolus below 45 s), 60-100 s -> unchanged, 100-130 s -> one bin down,
    > 130 s -> two bins down. With probability ``adherence[group]`` the clinician follows it;
    otherwise the previous rate is kept (clinical inertia; at the first step a cautious 12 U/kg/h).
    The chosen bin is then replaced by an adjacent one with probability ``clinician_noise``.

    Returns
    -------
    ndarray of shape (n, n_actions)
    """
    n = obs.shape[0]
    k = cfg.n_actions
    bins = np.asarray(cfg.rate_bins)
    aptt = obs[:, 0].astype(np.float64)
    prev_bin = np.abs(obs[:, 15, None].astype(np.float64) - bins[None, :]).argmin(axis=1)
    if step == 0:
        follow = np.full(n, min(3, k - 1))
        deviate = np.full(n, min(2, k - 1))
    else:
        delta = np.select([aptt < cfg.aptt_low, aptt <= cfg.aptt_high, aptt <= 130.0],
                          [1, 0, -1], default=-2)
        follow = np.clip(prev_bin + delta, 0, k - 1)
        deviate = prev_bin
    adh = np.asarray(cfg.adherence)[groups]
    base = np.zeros((n, k))
    rows = np.arange(n)
    base[rows, follow] += adh
    base[rows, deviate] += 1.0 - adh
    # adjacent-bin noise, reflected at the ends
    eps = cfg.clinician_noise
    up = np.zeros_like(base)
    up[:, 1:] = base[:, :-1]
    up[:, k - 2] += base[:, k - 1]
    down = np.zeros_like(base)
    down[:, :-1] = base[:, 1:]
    down[:, 1] += base[:, 0]
    return (1.0 - eps) * base + 0.5 * eps * (up + down)
