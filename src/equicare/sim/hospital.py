"""Hospital patient-flow simulator: admission control over group- and severity-specific queues.

Every hour patients arrive (Poisson, with day, evening and night rates), each with a demographic
group and a severity. They wait in one queue per (group, severity) until a bed, enough staff and
the equipment their severity needs are free. Each hour the agent picks one queue: its patients are
admitted first-in-first-out while resources allow, then (by default) any capacity left is filled
first-come-first-served from all queues. Action 0 holds all admissions for the hour. Because the
agent decides who goes first under scarce capacity, it can trade one group's waiting against
another's. The reward is operational only (weighted waiting time, diversions, bed occupancy): it has
no fairness term, so any difference between groups comes from the optimiser.

Two classes share one NumPy core:

* :class:`HospitalEnv` - a single :class:`gymnasium.Env` (passes ``check_env``);
* :class:`HospitalVectorEnv` - a natively vectorised :class:`gymnasium.vector.VectorEnv` that
  steps ``num_envs`` hospitals as arrays (same-step autoreset; all copies share the horizon, so
  they end and reset together).

Per-episode, per-group metrics (mean and 90th-percentile wait, treatment rate, critical waits)
arrive in ``info["episode_metrics"]`` on the step that ends the episode.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, check_param, check_random_state

__all__ = [
    "HospitalConfig",
    "HospitalEnv",
    "HospitalVectorEnv",
    "SCENARIOS",
    "hospital_scenario",
    "offered_load",
    "sample_length_of_stay",
    "arrival_rates",
    "GROUP_METRICS",
]

#: Names of the scenario presets accepted by :func:`hospital_scenario`.
SCENARIOS: tuple[str, ...] = ("urban", "rural", "paediatric", "surge")

#: Per-group metrics reported at the end of every episode (arrays of shape (n_envs, n_groups)).
GROUP_METRICS: tuple[str, ...] = (
    "mean_wait", "p90_wait", "treatment_rate", "critical_waits",
    "arrived", "admitted", "diverted",
)

_OWNER = "HospitalConfig"


@dataclass(frozen=True, kw_only=True)
class HospitalConfig:
    """Parameters of one hospital (a scenario).

    Times are in hours. Rates are patients per hour. All tuple fields indexed by group follow
    ``group_names``; those indexed by severity follow ``severity_names``.

    Parameters
    ----------
    name : str
        Scenario label (free text, stored with results).
    horizon : int
        Episode length in hourly steps (default one week, 168).
    day_rate, evening_rate, night_rate : float
        Poisson arrival rates during the day (``day_hours``), at night (``night_hours``) and
        otherwise.
    day_hours, night_hours : tuple of (int, int)
        Half-open clock intervals ``[start, end)``; an interval with ``start > end`` wraps
        midnight. Defaults: day 08-18, night 22-06.
    surge_start, surge_hours, surge_factor : int, int, float
        During episode hours ``[surge_start, surge_start + surge_hours)`` all rates are multiplied
        by ``surge_factor`` (emergency surge). ``surge_hours = 0`` disables it.
    group_names, group_probs : tuple
        Demographic groups and their arrival mix.
    severity_names, severity_probs : tuple
        Severity levels (least to most severe) and their arrival mix (independent of group).
    los_mean : tuple of float, one per severity
        Mean length of stay (hours) of an adult patient of that severity.
    los_cv : float
        Coefficient of variation of the (log-normal) length of stay.
    group_los_factor : tuple of float, one per group
        Multiplier of the mean length of stay for each group.
    beds, staff, equipment : int
        Capacities. Staff is counted in nursing points.
    staff_need, equipment_need : tuple of int, one per severity
        Staff points and equipment units a patient of that severity holds while in a bed.
    max_queue : int
        Waiting-room places per hospital; arrivals beyond it are diverted elsewhere.
    wait_weight : tuple of float, one per severity
        Cost per hour of waiting (critical waits weigh most).
    divert_penalty : float
        Cost per diverted patient.
    occupancy_weight : float
        Reward per hour for a fully occupied bed stock (scaled by the occupied fraction).
    reward_scale : float
        Multiplies the reward.
    initial_occupancy : float
        Fraction of beds occupied by patients (drawn from the arrival mix) at reset.
    backfill : bool
        After the chosen queue, fill free capacity first-come-first-served (else leave it idle).
    critical_wait_threshold : float
        A critical patient waiting longer than this (hours) counts as a "critical wait".
    """

    name: str = "urban"
    horizon: int = 168
    day_rate: float = 2.0
    evening_rate: float = 1.5
    night_rate: float = 1.0
    day_hours: tuple[int, int] = (8, 18)
    night_hours: tuple[int, int] = (22, 6)
    surge_start: int = 0
    surge_hours: int = 0
    surge_factor: float = 1.0
    group_names: tuple[str, ...] = ("paediatric", "adult", "elderly")
    group_probs: tuple[float, ...] = (0.2, 0.5, 0.3)
    severity_names: tuple[str, ...] = ("standard", "urgent", "critical")
    severity_probs: tuple[float, ...] = (0.6, 0.3, 0.1)
    los_mean: tuple[float, ...] = (5.0, 14.0, 36.0)
    los_cv: float = 0.8
    group_los_factor: tuple[float, ...] = (0.7, 1.0, 1.5)
    beds: int = 20
    staff: int = 52
    equipment: int = 8
    staff_need: tuple[int, ...] = (1, 2, 4)
    equipment_need: tuple[int, ...] = (0, 0, 1)
    max_queue: int = 64
    wait_weight: tuple[float, ...] = (1.0, 3.0, 10.0)
    divert_penalty: float = 20.0
    occupancy_weight: float = 1.0
    reward_scale: float = 0.1
    initial_occupancy: float = 0.6
    backfill: bool = True
    critical_wait_threshold: float = 1.0

    def __post_init__(self) -> None:
        for name in ("name",):
            check_param(getattr(self, name), name, _OWNER, kind=str)
        check_param(self.horizon, "horizon", _OWNER, kind=int, low=1)
        for name in ("day_rate", "evening_rate", "night_rate"):
            check_param(getattr(self, name), name, _OWNER, kind=(int, float), low=0)
        for name in ("day_hours", "night_hours"):
            v = getattr(self, name)
            if not (isinstance(v, tuple | list) and len(v) == 2
                    and all(isinstance(h, int) and 0 <= h <= 24 for h in v)):
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name=name, owner=_OWNER, expected="a pair of clock hours in [0, 24]", got=v))
        check_param(self.surge_start, "surge_start", _OWNER, kind=int, low=0)
        check_param(self.surge_hours, "surge_hours", _OWNER, kind=int, low=0)
        check_param(self.surge_factor, "surge_factor", _OWNER, kind=(int, float), low=0)
        _check_names(self.group_names, "group_names")
        _check_names(self.severity_names, "severity_names")
        n_g, n_s = len(self.group_names), len(self.severity_names)
        _check_probs(self.group_probs, "group_probs", n_g)
        _check_probs(self.severity_probs, "severity_probs", n_s)
        _check_vector(self.los_mean, "los_mean", n_s, positive=True)
        _check_vector(self.group_los_factor, "group_los_factor", n_g, positive=True)
        _check_vector(self.wait_weight, "wait_weight", n_s, positive=False)
        _check_int_vector(self.staff_need, "staff_need", n_s)
        _check_int_vector(self.equipment_need, "equipment_need", n_s)
        check_param(self.los_cv, "los_cv", _OWNER, kind=(int, float), low=0, low_inclusive=False)
        check_param(self.beds, "beds", _OWNER, kind=int, low=1)
        check_param(self.staff, "staff", _OWNER, kind=int, low=0)
        check_param(self.equipment, "equipment", _OWNER, kind=int, low=0)
        check_param(self.max_queue, "max_queue", _OWNER, kind=int, low=1)
        check_param(self.divert_penalty, "divert_penalty", _OWNER, kind=(int, float), low=0)
        check_param(self.occupancy_weight, "occupancy_weight", _OWNER, kind=(int, float), low=0)
        check_param(self.reward_scale, "reward_scale", _OWNER, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.initial_occupancy, "initial_occupancy", _OWNER, kind=(int, float),
                    low=0, high=1)
        check_param(self.backfill, "backfill", _OWNER, kind=bool)
        check_param(self.critical_wait_threshold, "critical_wait_threshold", _OWNER,
                    kind=(int, float), low=0)
        if max(self.staff_need) > self.staff or max(self.equipment_need) > self.equipment:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="staff", owner=_OWNER,
                expected="large enough for the neediest severity (staff >= max(staff_need) and "
                         "equipment >= max(equipment_need))",
                got=(self.staff, self.equipment)))
        # store sequences as tuples so that the config stays hashable after from_dict
        for name in ("day_hours", "night_hours", "group_names", "group_probs", "severity_names",
                     "severity_probs", "los_mean", "group_los_factor", "staff_need",
                     "equipment_need", "wait_weight"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def n_groups(self) -> int:
        """Number of demographic groups."""
        return len(self.group_names)

    @property
    def n_severities(self) -> int:
        """Number of severity levels."""
        return len(self.severity_names)

    @property
    def n_actions(self) -> int:
        """``1 + n_groups * n_severities`` (hold, then one action per queue)."""
        return 1 + self.n_groups * self.n_severities

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of all fields."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HospitalConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys raise ``ValueError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameterError(f"Unknown HospitalConfig keys: {', '.join(unknown)}.")
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in data.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> HospitalConfig:
        """Copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def _check_names(v: Any, name: str) -> None:
    if not (isinstance(v, tuple | list) and len(v) >= 1 and all(isinstance(x, str) for x in v)
            and len(set(v)) == len(v)):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner=_OWNER, expected="a non-empty sequence of distinct strings", got=v))


def _check_probs(v: Any, name: str, n: int) -> None:
    ok = isinstance(v, tuple | list) and len(v) == n
    if ok:
        arr = np.asarray(v, dtype=float)
        ok = bool(np.all(arr >= 0) and abs(arr.sum() - 1.0) < 1e-6)
    if not ok:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner=_OWNER, expected=f"{n} probabilities summing to 1", got=v))


def _check_vector(v: Any, name: str, n: int, *, positive: bool) -> None:
    ok = isinstance(v, tuple | list) and len(v) == n and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        and (x > 0 if positive else x >= 0) for x in v)
    if not ok:
        sign = "positive" if positive else "non-negative"
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner=_OWNER, expected=f"{n} {sign} numbers", got=v))


def _check_int_vector(v: Any, name: str, n: int) -> None:
    ok = isinstance(v, tuple | list) and len(v) == n and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    if not ok:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner=_OWNER, expected=f"{n} non-negative integers", got=v))


_PRESETS: dict[str, dict[str, Any]] = {
    # High capacity: bed utilisation about 0.9 of the offered load, staff and equipment slack.
    "urban": {},
    # Scarce beds, half the arrivals, an older and sicker mix.
    "rural": {
        "day_rate": 1.0, "evening_rate": 0.75, "night_rate": 0.5,
        "group_probs": (0.15, 0.35, 0.5), "severity_probs": (0.55, 0.33, 0.12),
        "beds": 11, "staff": 30, "equipment": 5,
    },
    # Children's hospital: age bands as groups, shorter stays for school-age children.
    "paediatric": {
        "day_rate": 1.8, "evening_rate": 1.4, "night_rate": 0.8,
        "group_names": ("infant", "child", "adolescent"), "group_probs": (0.3, 0.45, 0.25),
        "group_los_factor": (1.3, 0.7, 1.0), "severity_probs": (0.65, 0.27, 0.08),
        "los_mean": (4.0, 12.0, 30.0), "beds": 14, "staff": 36, "equipment": 5,
    },
    # Urban capacity hit by a two-day surge at twice the arrival rate with sicker patients.
    "surge": {
        "surge_start": 48, "surge_hours": 48, "surge_factor": 2.0,
        "severity_probs": (0.5, 0.33, 0.17),
    },
}


def hospital_scenario(name: str = "urban", **overrides: Any) -> HospitalConfig:
    """Return the preset :class:`HospitalConfig` of a scenario, optionally with changed fields.

    Parameters
    ----------
    name : {'urban', 'rural', 'paediatric', 'surge'}
        ``urban``: high capacity; ``rural``: scarce beds, fewer and older, sicker patients;
        ``paediatric``: a children's hospital with age bands as groups; ``surge``: urban capacity
        with a 48-hour emergency surge (double arrivals, more critical patients) from hour 48.
    **overrides
        Any :class:`HospitalConfig` field.

    Returns
    -------
    HospitalConfig

    Examples
    --------
    >>> hospital_scenario("rural").beds
    11
    >>> hospital_scenario("urban", beds=25).beds
    25
    """
    check_param(name, "name", "hospital_scenario", choices=SCENARIOS)
    params: dict[str, Any] = {"name": name, **_PRESETS[name]}
    params.update(overrides)
    return HospitalConfig(**params)


def _in_window(hour: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    start, end = window
    if start <= end:
        return (hour >= start) & (hour < end)
    return (hour >= start) | (hour < end)


def arrival_rates(config: HospitalConfig) -> np.ndarray:
    """Poisson arrival rate of every episode hour.

    Parameters
    ----------
    config : HospitalConfig

    Returns
    -------
    ndarray of shape (horizon,)
        Rate (patients per hour) during hour ``t`` of an episode that starts at midnight.
    """
    t = np.arange(config.horizon)
    hour = t % 24
    rate = np.full(config.horizon, float(config.evening_rate))
    rate[_in_window(hour, config.day_hours)] = config.day_rate
    rate[_in_window(hour, config.night_hours)] = config.night_rate
    surge = (t >= config.surge_start) & (t < config.surge_start + config.surge_hours)
    rate[surge] *= config.surge_factor
    return rate


def _lognormal_params(mean: np.ndarray, cv: float) -> tuple[np.ndarray, float]:
    sigma2 = math.log1p(cv * cv)
    return np.log(mean) - 0.5 * sigma2, math.sqrt(sigma2)


def sample_length_of_stay(
    config: HospitalConfig,
    severity: np.ndarray,
    group: np.ndarray,
    random_state: int | np.random.Generator | None = None,
) -> np.ndarray:
    r"""Draw lengths of stay (hours) from the log-normal model of ``config``.

    .. math:: \mathrm{LOS} \sim \mathrm{LogNormal}(\mu, \sigma^2),\quad
              \sigma^2 = \log(1 + cv^2),\quad
              \mu = \log(m_s f_g) - \sigma^2 / 2

    so that the mean is ``los_mean[s] * group_los_factor[g]`` and the coefficient of variation
    is ``los_cv``.

    Parameters
    ----------
    config : HospitalConfig
    severity : ndarray of int, shape (n,)
    group : ndarray of int, shape (n,)
    random_state : int, Generator or None

    Returns
    -------
    ndarray of shape (n,)
    """
    rng = check_random_state(random_state)
    mean = (np.asarray(config.los_mean)[severity] * np.asarray(config.group_los_factor)[group])
    mu, sigma = _lognormal_params(mean, config.los_cv)
    return np.exp(mu + sigma * rng.standard_normal(np.shape(severity)))


def offered_load(config: HospitalConfig) -> dict[str, float]:
    """Average offered load (expected units in use if capacity were unlimited) per resource.

    Returns
    -------
    dict
        ``{"arrival_rate", "mean_los", "beds", "staff", "equipment"}`` and the utilisations
        ``{"rho_beds", "rho_staff", "rho_equipment"}`` (load / capacity) over the horizon.
    """
    rate = float(arrival_rates(config).mean())
    gp, sp = np.asarray(config.group_probs), np.asarray(config.severity_probs)
    los = np.outer(gp * np.asarray(config.group_los_factor), sp * np.asarray(config.los_mean))
    bed_load = rate * los.sum()
    staff_load = rate * (los.sum(0) * np.asarray(config.staff_need)).sum()
    equip_load = rate * (los.sum(0) * np.asarray(config.equipment_need)).sum()
    return {
        "arrival_rate": rate, "mean_los": float(los.sum()),
        "beds": float(bed_load), "staff": float(staff_load), "equipment": float(equip_load),
        "rho_beds": float(bed_load / config.beds),
        "rho_staff": float(staff_load / max(config.staff, 1)),
        "rho_equipment": float(equip_load / config.equipment) if config.equipment else 0.0,
    }


class _HospitalCore:
    """Array state of ``n`` synchronised hospitals and their hourly dynamics (no gym API)."""

    def __init__(self, config: HospitalConfig, n: int) -> None:
        c = config
        self.config = c
        self.n = n
        self.G, self.S = c.n_groups, c.n_severities
        self.GS = self.G * self.S
        self.Q, self.B = c.max_queue, c.beds
        self.rates = arrival_rates(c)
        self.group_cdf = np.cumsum(c.group_probs)
        self.group_cdf[-1] = 1.0 + 1e-12
        self.sev_cdf = np.cumsum(c.severity_probs)
        self.group_probs = np.maximum(np.asarray(c.group_probs, dtype=np.float64), 1e-12)
        self.sev_cdf[-1] = 1.0 + 1e-12
        self.staff_need = np.asarray(c.staff_need, dtype=np.int64)
        self.equip_need = np.asarray(c.equipment_need, dtype=np.int64)
        self.wait_weight = np.asarray(c.wait_weight, dtype=np.float64)
        self.los_mu, self.los_sigma = _lognormal_params(
            np.outer(np.asarray(c.group_los_factor), np.asarray(c.los_mean)), c.los_cv)
        total = float(self.rates.sum()) * (1.0 + 1e-9)
        self.L = int(total + 12.0 * math.sqrt(total + 1.0) + 32)  # ledger slots per episode
        self.rows = np.arange(n)
        self.obs_dim = 2 * self.GS + 9
        self.rng: np.random.Generator = np.random.default_rng(0)
        self._alloc()

    # ------------------------------------------------------------------ state
    def _alloc(self) -> None:
        n, Q, B, L, G = self.n, self.Q, self.B, self.L, self.G
        self.t = 0
        self.q_active = np.zeros((n, Q), dtype=bool)
        self.q_arr = np.zeros((n, Q))
        self.q_group = np.zeros((n, Q), dtype=np.int64)
        self.q_sev = np.zeros((n, Q), dtype=np.int64)
        self.q_qid = np.zeros((n, Q), dtype=np.int64)
        self.q_los = np.zeros((n, Q))
        self.b_occ = np.zeros((n, B), dtype=bool)
        self.b_rem = np.zeros((n, B))
        self.b_sev = np.zeros((n, B), dtype=np.int64)
        self.b_group = np.zeros((n, B), dtype=np.int64)
        self.beds_used = np.zeros(n, dtype=np.int64)
        self.staff_used = np.zeros(n, dtype=np.int64)
        self.equip_used = np.zeros(n, dtype=np.int64)
        # ledger of admissions in the current episode
        self.l_n = np.zeros(n, dtype=np.int64)
        self.l_wait = np.zeros((n, L))
        self.l_group = np.zeros((n, L), dtype=np.int64)
        self.l_sev = np.zeros((n, L), dtype=np.int64)
        self.l_los = np.zeros((n, L))
        self.arrived = np.zeros((n, G), dtype=np.int64)
        self.admitted = np.zeros((n, G), dtype=np.int64)
        self.diverted = np.zeros((n, G), dtype=np.int64)
        self.crit_waits = np.zeros((n, G), dtype=np.int64)
        self.ep_return = np.zeros(n)

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._alloc()
        c = self.config
        n_init = int(round(c.initial_occupancy * self.B))
        for _ in range(n_init):  # at most `beds` vectorised draws, only at reset
            g = np.searchsorted(self.group_cdf, rng.random(self.n), side="right")
            s = np.searchsorted(self.sev_cdf, rng.random(self.n), side="right")
            fits = self._fits()[self.rows, s]
            rows = np.flatnonzero(fits)
            if rows.size == 0:
                continue
            los = np.exp(self.los_mu[g[rows], s[rows]]
                         + self.los_sigma * rng.standard_normal(rows.size))
            remaining = np.maximum(los * rng.random(rows.size), 1e-9)
            self._occupy(rows, g[rows], s[rows], remaining)

    # ------------------------------------------------------------- mechanics
    def _fits(self) -> np.ndarray:
        """(n, S) bool: a patient of severity s can be admitted now."""
        c = self.config
        return ((self.beds_used < self.B)[:, None]
                & (self.staff_used[:, None] + self.staff_need[None, :] <= c.staff)
                & (self.equip_used[:, None] + self.equip_need[None, :] <= c.equipment))

    def _occupy(self, rows: np.ndarray, g: np.ndarray, s: np.ndarray, los: np.ndarray) -> None:
        bed = np.argmin(self.b_occ[rows], axis=1)  # first free bed (a free bed exists: checked)
        self.b_occ[rows, bed] = True
        self.b_rem[rows, bed] = los
        self.b_sev[rows, bed] = s
        self.b_group[rows, bed] = g
        self.beds_used[rows] += 1
        self.staff_used[rows] += self.staff_need[s]
        self.equip_used[rows] += self.equip_need[s]

    def _admit(self, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Admit queue slot ``slots[i]`` of hospital ``rows[i]`` (rows unique). Returns groups."""
        g = self.q_group[rows, slots]
        s = self.q_sev[rows, slots]
        wait = self.t - self.q_arr[rows, slots]
        los = self.q_los[rows, slots]
        self._occupy(rows, g, s, los)
        self.q_active[rows, slots] = False
        k = np.minimum(self.l_n[rows], self.L - 1)
        self.l_wait[rows, k] = wait
        self.l_group[rows, k] = g
        self.l_sev[rows, k] = s
        self.l_los[rows, k] = los
        self.l_n[rows] += 1
        self.admitted[rows, g] += 1
        critical = (s == self.S - 1) & (wait > self.config.critical_wait_threshold)
        self.crit_waits[rows, g] += critical
        return np.asarray(g, dtype=np.int64)

    def _admit_loop(self, cand_fn: Any, served: np.ndarray, n_adm: np.ndarray) -> None:
        while True:
            cand = cand_fn()
            key = np.where(cand, self.q_arr, np.inf)
            slot = np.argmin(key, axis=1)
            has = np.isfinite(key[self.rows, slot])
            if not has.any():
                return
            rows = np.flatnonzero(has)
            g = self._admit(rows, slot[rows])
            first = served[rows] < 0
            served[rows[first]] = g[first]
            n_adm[rows] += 1

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Advance every hospital by one hour. Returns rewards (n,) and step info."""
        c = self.config
        rng = self.rng
        n = self.n
        served = np.full(n, -1, dtype=np.int64)
        n_adm = np.zeros(n, dtype=np.int64)
        queue = actions.astype(np.int64) - 1
        acting = queue >= 0
        q_sev_chosen = np.where(acting, queue, 0) % self.S

        # 1. admissions: the chosen queue first (FIFO), while its severity fits
        if acting.any():
            def chosen() -> np.ndarray:
                ok = acting & self._fits()[self.rows, q_sev_chosen]
                out: np.ndarray = self.q_active & (self.q_qid == queue[:, None]) & ok[:, None]
                return out
            self._admit_loop(chosen, served, n_adm)
            # 2. backfill: any remaining capacity, first come first served (non-blocking)
            if c.backfill:
                def anyone() -> np.ndarray:
                    fits = np.take_along_axis(self._fits(), self.q_sev, axis=1)
                    out: np.ndarray = self.q_active & fits & acting[:, None]
                    return out
                self._admit_loop(anyone, served, n_adm)

        # 3. the hour passes: waiting cost of everyone still waiting, treatment progresses
        w = self.wait_weight[self.q_sev]
        wait_cost = (w * self.q_active).sum(axis=1)
        G = self.G
        gidx = (self.rows[:, None] * G + self.q_group)[self.q_active]
        group_cost = np.bincount(gidx, minlength=n * G).reshape(n, G).astype(np.float64)
        occupancy = self.beds_used / self.B
        t0 = self.t
        self.t += 1
        self.b_rem -= 1.0
        done = self.b_occ & (self.b_rem <= 0.0)
        if done.any():
            self.b_occ &= ~done
            self.beds_used -= done.sum(axis=1)
            self.staff_used -= (self.staff_need[self.b_sev] * done).sum(axis=1)
            self.equip_used -= (self.equip_need[self.b_sev] * done).sum(axis=1)

        # 4. arrivals during the hour (uniform times); a full waiting room diverts
        k = rng.poisson(self.rates[t0], size=n)
        n_div = np.zeros(n, dtype=np.int64)
        total = int(k.sum())
        if total:
            env = np.repeat(self.rows, k)
            g = np.searchsorted(self.group_cdf, rng.random(total), side="right")
            s = np.searchsorted(self.sev_cdf, rng.random(total), side="right")
            arr = t0 + rng.random(total)
            los = np.exp(self.los_mu[g, s] + self.los_sigma * rng.standard_normal(total))
            self.arrived += np.bincount(env * self.G + g, minlength=n * self.G).reshape(n, self.G)
            free = ~self.q_active
            rank = np.cumsum(free, axis=1)
            placed_n = np.minimum(k, free.sum(axis=1))
            target = free & (rank <= placed_n[:, None])
            start = np.cumsum(k) - k
            within = np.arange(total) - start[env]
            placed = within < placed_n[env]
            er, sl = np.nonzero(target)  # row-major: same order as the placed arrivals
            self.q_active[er, sl] = True
            self.q_group[er, sl] = g[placed]
            self.q_sev[er, sl] = s[placed]
            self.q_qid[er, sl] = g[placed] * self.S + s[placed]
            self.q_arr[er, sl] = arr[placed]
            self.q_los[er, sl] = los[placed]
            # waiting cost of the new arrivals for the part of the hour they waited
            partial = self.t - arr[placed]
            wait_cost += np.bincount(er, weights=self.wait_weight[s[placed]] * partial,
                                     minlength=n)
            group_cost += np.bincount(er * G + g[placed], weights=partial,
                                      minlength=n * G).reshape(n, G)
            if not placed.all():
                lost = ~placed
                n_div = np.bincount(env[lost], minlength=n)
                div_g = np.bincount(env[lost] * G + g[lost], minlength=n * G).reshape(n, G)
                self.diverted += div_g
                group_cost += c.divert_penalty * div_g

        reward = c.reward_scale * (-wait_cost - c.divert_penalty * n_div
                                   + c.occupancy_weight * occupancy)
        self.ep_return += reward
        # per-capita cost of each group: hours its patients waited this hour (unweighted by
        # severity) plus its diversions, divided by its arrival share so that groups of
        # different sizes are comparable
        group_reward = -c.reward_scale * group_cost / self.group_probs
        info = {"served_group": served, "n_admitted": n_adm, "n_arrived": k,
                "n_diverted": n_div, "waiting_cost": wait_cost, "group_reward": group_reward}
        return reward, info

    # ------------------------------------------------------------- readouts
    def observation(self) -> np.ndarray:
        """(n, obs_dim) float32 observation."""
        c = self.config
        n, GS = self.n, self.GS
        idx = (self.rows[:, None] * GS + self.q_qid)[self.q_active]
        counts = np.bincount(idx, minlength=n * GS).reshape(n, GS)
        waits = np.bincount(idx, weights=(self.t - self.q_arr)[self.q_active],
                            minlength=n * GS).reshape(n, GS)
        mean_wait = waits / np.maximum(counts, 1)
        hour = 2.0 * np.pi * (self.t % 24) / 24.0
        due = [(self.b_occ & (self.b_rem <= h)).sum(axis=1) / self.B for h in (1.0, 4.0, 12.0)]
        obs = np.empty((n, self.obs_dim), dtype=np.float32)
        obs[:, :GS] = counts / 10.0
        obs[:, GS:2 * GS] = np.minimum(mean_wait / 24.0, self._wait_cap)
        obs[:, 2 * GS] = self.beds_used / self.B
        obs[:, 2 * GS + 1] = self.staff_used / max(c.staff, 1)
        obs[:, 2 * GS + 2] = self.equip_used / max(c.equipment, 1)
        obs[:, 2 * GS + 3] = due[0]
        obs[:, 2 * GS + 4] = due[1]
        obs[:, 2 * GS + 5] = due[2]
        obs[:, 2 * GS + 6] = np.sin(hour)
        obs[:, 2 * GS + 7] = np.cos(hour)
        obs[:, 2 * GS + 8] = self.t / c.horizon
        return obs

    def action_mask(self) -> np.ndarray:
        """(n, n_actions) bool: hold, and every queue with a patient whose severity fits now."""
        n, GS = self.n, self.GS
        fits = np.take_along_axis(self._fits(), self.q_sev, axis=1)
        idx = (self.rows[:, None] * GS + self.q_qid)[self.q_active & fits]
        mask = np.ones((n, 1 + GS), dtype=bool)
        mask[:, 1:] = np.bincount(idx, minlength=n * GS).reshape(n, GS) > 0
        return mask

    @property
    def _wait_cap(self) -> float:
        return (self.config.horizon + 1.0) / 24.0

    def obs_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        GS = self.GS
        low = np.zeros(self.obs_dim, dtype=np.float32)
        high = np.ones(self.obs_dim, dtype=np.float32)
        high[:GS] = self.Q / 10.0
        high[GS:2 * GS] = self._wait_cap
        low[2 * GS + 6:2 * GS + 8] = -1.0
        return low, high

    def fcfs_actions(self) -> np.ndarray:
        """(n,) action of first-come-first-served: the queue of the longest-waiting patient."""
        key = np.where(self.q_active, self.q_arr, np.inf)
        slot = np.argmin(key, axis=1)
        has = np.isfinite(key[self.rows, slot])
        return np.where(has, 1 + self.q_qid[self.rows, slot], 1).astype(np.int64)

    def severity_first_actions(self) -> np.ndarray:
        """(n,) action of a severity-first rule (FCFS if no waiting patient fits).

        Picks the longest-waiting patient of the most severe non-empty queue whose severity
        fits the free resources.
        """
        fits = np.take_along_axis(self._fits(), self.q_sev, axis=1)
        ok = self.q_active & fits
        key = np.where(ok, -self.q_sev * 1e6 + self.q_arr, np.inf)
        slot = np.argmin(key, axis=1)
        has = np.isfinite(key[self.rows, slot])
        return np.where(has, 1 + self.q_qid[self.rows, slot], self.fcfs_actions()).astype(np.int64)

    def episode_metrics(self) -> dict[str, np.ndarray]:
        """Per-group metrics of the episode so far; arrays of shape (n, n_groups) (or (n,)).

        Waits count admitted patients and, censored at the current hour, those still waiting.
        """
        n, G, L = self.n, self.G, self.L
        ledger = np.arange(L)[None, :] < np.minimum(self.l_n, L)[:, None]
        waits = np.concatenate([self.l_wait, self.t - self.q_arr], axis=1)
        groups = np.concatenate([self.l_group, self.q_group], axis=1)
        valid = np.concatenate([ledger, self.q_active], axis=1)
        mean = np.full((n, G), np.nan)
        p90 = np.full((n, G), np.nan)
        for g in range(G):  # loop over the (few) groups only
            m = valid & (groups == g)
            cnt = m.sum(axis=1)
            tot = np.where(m, waits, 0.0).sum(axis=1)
            has = cnt > 0
            mean[has, g] = tot[has] / cnt[has]
            srt = np.sort(np.where(m, waits, np.inf), axis=1)
            pos = 0.9 * np.maximum(cnt - 1, 0)
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, np.maximum(cnt - 1, 0))
            frac = pos - lo
            a = srt[self.rows, lo]
            b = srt[self.rows, hi]
            val = a + frac * np.where(frac > 0, b - a, 0.0)
            p90[has, g] = val[has]
        all_cnt = valid.sum(axis=1)
        all_mean = np.where(valid, waits, 0.0).sum(axis=1) / np.maximum(all_cnt, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(self.arrived > 0, self.admitted / np.maximum(self.arrived, 1), np.nan)
        return {
            "mean_wait": mean, "p90_wait": p90, "treatment_rate": rate,
            "critical_waits": self.crit_waits.astype(np.float64),
            "arrived": self.arrived.astype(np.float64),
            "admitted": self.admitted.astype(np.float64),
            "diverted": self.diverted.astype(np.float64),
            "overall_mean_wait": np.where(all_cnt > 0, all_mean, np.nan),
            "return": self.ep_return.copy(),
            "length": np.full(n, float(self.t)),
        }


def _as_config(config: HospitalConfig | str | None) -> HospitalConfig:
    if config is None:
        return hospital_scenario("urban")
    if isinstance(config, str):
        return hospital_scenario(config)
    if not isinstance(config, HospitalConfig):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="config", owner="HospitalEnv",
            expected="a HospitalConfig, a scenario name or None", got=config))
    return config


class HospitalEnv(gym.Env[np.ndarray, np.int64]):
    """Single hospital as a :class:`gymnasium.Env`.

    Parameters
    ----------
    config : HospitalConfig, str or None
        A config, or a scenario name (see :func:`hospital_scenario`); default ``"urban"``.

    Notes
    -----
    *Action* (``Discrete(1 + G * S)``): 0 holds admissions for the hour; ``1 + g * S + s`` admits
    from the queue of group ``g`` and severity ``s`` first (FIFO while resources allow), then
    back-fills any free capacity first-come-first-served when ``config.backfill``.

    *Observation* (``Box`` of shape ``(2 G S + 9,)``): queue lengths / 10 and mean waits / 24 h
    for every (group, severity) queue (group-major), bed, staff and equipment occupancy, the
    fractions of beds due to free within 1, 4 and 12 hours, sin and cos of the clock hour, and
    the fraction of the episode elapsed.

    *Reward*: ``reward_scale * (-sum_waiting wait_weight[s] * hours waited this hour
    - divert_penalty * diverted + occupancy_weight * occupied_beds / beds)``.

    *Info*: ``served_group`` (group of the first patient admitted this step, -1 if none),
    ``n_admitted``, ``n_arrived``, ``n_diverted``, ``waiting_cost``, ``group_reward``
    (``(n_groups,)``: minus ``reward_scale`` times the hours each group's patients waited this
    hour (not weighted by severity) plus ``divert_penalty`` per diverted patient, divided by the
    group's arrival share) and ``action_mask`` (bool,
    ``(n_actions,)``: hold, and the queues whose head could be admitted now; also returned by
    ``reset`` and :meth:`action_masks`); at the end of the episode ``episode_metrics`` with
    per-group arrays of shape ``(n_groups,)``.

    Episodes are truncated (never terminated) after ``config.horizon`` hours.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, config: HospitalConfig | str | None = None) -> None:
        self.config = _as_config(config)
        self._core = _HospitalCore(self.config, 1)
        low, high = self._core.obs_bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.config.n_actions)
        self._needs_reset = True

    @property
    def n_groups(self) -> int:
        """Number of demographic groups."""
        return self.config.n_groups

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode (hour 0 = midnight), beds partly occupied, queues empty."""
        super().reset(seed=seed)
        self._core.reset(self.np_random)
        self._needs_reset = False
        return self._core.observation()[0], {"action_mask": self._core.action_mask()[0]}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one hour with ``action`` (see class notes)."""
        if self._needs_reset:
            raise RuntimeError("Call reset before step (the episode has ended or not started).")
        if not self.action_space.contains(action):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="action", owner="HospitalEnv",
                expected=f"an int in [0, {self.config.n_actions - 1}]", got=action))
        reward, raw = self._core.step(np.asarray([action], dtype=np.int64))
        truncated = self._core.t >= self.config.horizon
        info: dict[str, Any] = {k: (v[0].copy() if v.ndim > 1 else v[0].item())
                                for k, v in raw.items()}
        info["action_mask"] = self._core.action_mask()[0]
        if truncated:
            m = self._core.episode_metrics()
            info["episode_metrics"] = {k: v[0].copy() for k, v in m.items()}
            self._needs_reset = True
        return self._core.observation()[0], float(reward[0]), False, bool(truncated), info

    def action_masks(self) -> np.ndarray:
        """Return the valid actions now, bool of shape (n_actions,) (hold is always valid)."""
        return np.asarray(self._core.action_mask()[0])

    def fcfs_action(self) -> int:
        """Return the first-come-first-served baseline's action in the current state."""
        return int(self._core.fcfs_actions()[0])

    def severity_first_action(self) -> int:
        """Return the severity-first baseline's action in the current state."""
        return int(self._core.severity_first_actions()[0])


class HospitalVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """``num_envs`` hospitals stepped together as NumPy arrays (same-step autoreset).

    Parameters
    ----------
    config : HospitalConfig, str or None
        As for :class:`HospitalEnv`.
    num_envs : int
        Number of independent copies (they share the horizon, so all end together).

    Notes
    -----
    ``step`` returns observations of shape ``(num_envs, obs_dim)`` and rewards, terminations and
    truncations of shape ``(num_envs,)``. ``info`` maps ``served_group``, ``n_admitted``,
    ``n_arrived``, ``n_diverted`` and ``waiting_cost`` to arrays of shape ``(num_envs,)``,
    ``group_reward`` to ``(num_envs, n_groups)`` and ``action_mask`` to a bool array
    ``(num_envs, n_actions)``. On the step that ends
    the episodes the observations are already those of the next episode (same-step autoreset);
    ``info["final_obs"]`` (``(num_envs, obs_dim)``, mask ``info["_final_obs"]``) holds the last
    observations and ``info["episode_metrics"]`` the per-group metrics, arrays of shape
    ``(num_envs, n_groups)`` (``overall_mean_wait``, ``return`` and ``length``: ``(num_envs,)``).
    Seeding ``reset(seed=s)`` makes the whole batch reproducible; later episodes continue the
    same random stream.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012
        "autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, config: HospitalConfig | str | None = None, *, num_envs: int = 1) -> None:
        self.config = _as_config(config)
        check_param(num_envs, "num_envs", "HospitalVectorEnv", kind=int, low=1)
        self.num_envs = num_envs
        self._core = _HospitalCore(self.config, num_envs)
        low, high = self._core.obs_bounds()
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(self.config.n_actions)
        self.observation_space = spaces.Box(
            np.tile(low, (num_envs, 1)), np.tile(high, (num_envs, 1)), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, self.config.n_actions))
        self._rng: np.random.Generator | None = None

    @property
    def n_groups(self) -> int:
        """Number of demographic groups."""
        return self.config.n_groups

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all copies; ``seed`` seeds the batch's single random stream."""
        if seed is not None or self._rng is None:
            self._rng = check_random_state(seed)
        self._core.reset(self._rng)
        return self._core.observation(), {"action_mask": self._core.action_mask()}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every copy one hour; ``actions`` has shape (num_envs,)."""
        if self._rng is None:
            raise RuntimeError("Call reset before step.")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer) or (
                a.size and (a.min() < 0 or a.max() >= self.config.n_actions)):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="actions", owner="HospitalVectorEnv",
                expected=f"an int array of shape ({self.num_envs},) with values in "
                         f"[0, {self.config.n_actions - 1}]", got=actions))
        reward, info = self._core.step(a)
        n = self.num_envs
        terminated = np.zeros(n, dtype=bool)
        if self._core.t >= self.config.horizon:
            truncated = np.ones(n, dtype=bool)
            info["final_obs"] = self._core.observation()
            info["_final_obs"] = truncated.copy()
            info["episode_metrics"] = self._core.episode_metrics()
            self._core.reset(self._rng)
        else:
            truncated = np.zeros(n, dtype=bool)
        info["action_mask"] = self._core.action_mask()
        return self._core.observation(), reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """Return the valid actions now, bool (num_envs, n_actions) (hold always valid)."""
        return self._core.action_mask()

    def fcfs_actions(self) -> np.ndarray:
        """(num_envs,) actions of the first-come-first-served baseline."""
        return self._core.fcfs_actions()

    def severity_first_actions(self) -> np.ndarray:
        """(num_envs,) actions of the severity-first baseline."""
        return self._core.severity_first_actions()

    def ledger(self) -> dict[str, np.ndarray]:
        """Admissions of the current episode: ``wait``, ``group``, ``severity``, ``los`` (flat).

        Useful for checking the simulator (length-of-stay and mix distributions).
        """
        core = self._core
        m = np.arange(core.L)[None, :] < np.minimum(core.l_n, core.L)[:, None]
        return {"wait": core.l_wait[m], "group": core.l_group[m], "severity": core.l_sev[m],
                "los": core.l_los[m]}

    def resource_usage(self) -> dict[str, np.ndarray]:
        """Return ``beds``, ``staff`` and ``equipment`` in use now, arrays (num_envs,).

        The ``*_recount`` entries recount them from the occupied beds (for consistency checks).
        """
        core = self._core
        return {"beds": core.beds_used.copy(), "staff": core.staff_used.copy(),
                "equipment": core.equip_used.copy(),
                "beds_recount": core.b_occ.sum(axis=1),
                "staff_recount": (core.staff_need[core.b_sev] * core.b_occ).sum(axis=1),
                "equipment_recount": (core.equip_need[core.b_sev] * core.b_occ).sum(axis=1)}

