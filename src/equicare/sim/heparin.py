r"""Heparin (unfractionated, IV) dosing simulator with known pharmacology.

Patients receive a continuous heparin infusion for up to 5 days; every 6 hours the aPTT is measured
and the infusion rate is chosen from 6 bins (0, 6, 12, 18, 24, 30 U/kg/h). The goal is to keep the
aPTT in the therapeutic range 60-100 s. Because the dynamics are known, every learned policy can be
checked against the truth by Monte Carlo (:func:`evaluate_heparin_policy`), never against a learned
model.

Model (equations in :mod:`equicare.sim._heparin_core` and ``docs/dosing.md``):

* one-compartment pharmacokinetics with bolus + infusion, solved exactly over each 6 h step;
  clearance :math:`CL = 2880 (W/80)^{0.75} (CrCl/90)^{0.4} e^{\eta_{CL}}` mL/h, volume 70 mL/kg;
* Emax aPTT response :math:`aPTT = aPTT_0 + 140\,C^{1.3} / (EC_{50}^{1.3} + C^{1.3})` with a
  patient-specific, slowly drifting :math:`EC_{50}` (lower in older and female patients) and 10 %
  log-normal assay noise;
* adverse events: major bleeding hazard rising exponentially with supratherapeutic exposure,
  thrombosis hazard rising with subtherapeutic exposure (higher in the first day); an event ends
  therapy (terminal step) with reward penalty 3;
* clinical reward :math:`r_p = r_{range}(aPTT_{t+1}) - 3\,[\text{event}]` with
  :math:`r_{range}` = +1 in range, :math:`-\min(1, (60-x)/30)` below, :math:`-\min(1.5, (x-100)/40)`
  above;
* behaviour = weight-based nomogram with clinician noise and a documented group difference in
  adherence (see :class:`HeparinConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import Manifest, TrajectoryDataset, from_frame
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.sim._heparin_core import (
    OBS_HIGH,
    OBS_LOW,
    STATE_FEATURES,
    Cohort,
    HeparinConfig,
    advance,
    nomogram_probs,
    observe,
    range_reward,
    sample_cohort,
    true_aptt,
)
from equicare.spaces import FactoredActionSpace
from equicare.utils import PARAM_MESSAGE, RandomState, check_param, check_random_state

__all__ = [
    "STATE_FEATURES",
    "ACTION_LABELS",
    "HeparinConfig",
    "HeparinEnv",
    "HeparinEvaluation",
    "NomogramPolicy",
    "clinical_reward",
    "evaluate_heparin_policy",
    "generate_heparin_data",
    "heparin_dataset",
    "heparin_manifest",
    "true_aptt",
]

#: Labels of the 6 infusion-rate bins (U/kg/h), flat action ``i`` = ``ACTION_LABELS[i]``.
ACTION_LABELS: tuple[str, ...] = ("0U", "6U", "12U", "18U", "24U", "30U")
GROUP_COLUMN = "race_ethnicity"

PolicyLike = Any  # a Policy, the string "behavior", or a callable obs -> probs


def clinical_reward(aptt_next: NDArray[np.float64], event: NDArray[np.float64] | None = None,
                    config: HeparinConfig | None = None) -> NDArray[np.float64]:
    """Clinical reward :math:`r_p` of a step from the next measured aPTT (and adverse events).

    Parameters
    ----------
    aptt_next : ndarray of shape (n,)
        aPTT (s) measured at the end of the step.
    event : ndarray of shape (n,), optional
        1 (or any non-zero code) where an adverse event happened during the step.
    config : HeparinConfig, optional

    Returns
    -------
    ndarray of shape (n,)

    Examples
    --------
    >>> clinical_reward(np.array([45.0, 80.0, 120.0])).tolist()
    [-0.5, 1.0, -0.5]
    """
    cfg = config or HeparinConfig()
    r = range_reward(np.asarray(aptt_next, dtype=np.float64), cfg)
    if event is not None:
        r = r - cfg.event_penalty * (np.asarray(event) != 0)
    return np.asarray(r, dtype=np.float64)


def heparin_manifest(config: HeparinConfig | None = None, gamma: float = 0.95) -> Manifest:
    """Return the Contract-1 manifest of frames made by :func:`generate_heparin_data`."""
    cfg = config or HeparinConfig()
    labels = _labels(cfg)
    return Manifest.from_dict({
        "dataset": {"episode": "patient_id", "time": "step", "states": list(STATE_FEATURES),
                    "groups": [GROUP_COLUMN, "sex"], "terminal": "done",
                    "behavior_prob": "propensity", "gamma": gamma},
        "actions": {"rate": {"levels": list(labels)}},
        "reward": {"range": {"column": "r_range", "weight": 1.0},
                   "event": {"column": "r_event", "weight": 1.0}},
    }, source="<heparin manifest>")


def _labels(cfg: HeparinConfig) -> tuple[str, ...]:
    if cfg.rate_bins == (0.0, 6.0, 12.0, 18.0, 24.0, 30.0):
        return ACTION_LABELS
    return tuple(f"{r:g}U" for r in cfg.rate_bins)


def _action_space(cfg: HeparinConfig) -> FactoredActionSpace:
    return FactoredActionSpace.from_levels({"rate": list(_labels(cfg))})


# ---------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class NomogramPolicy:
    """The behaviour policy (nomogram with clinician noise) as a :class:`~equicare.policy.Policy`.

    Reads the group column of the dataset (``race_ethnicity``) for the adherence and the ``hours``
    feature for the step, so it gives the exact logged propensities of the simulated data.

    Parameters
    ----------
    config : HeparinConfig
    """

    config: HeparinConfig = field(default_factory=HeparinConfig)
    window: int = 1

    @property
    def n_actions(self) -> int:
        """Number of rate bins."""
        return self.config.n_actions

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Nomogram probabilities per row, shape ``(n_steps, n_actions)``."""
        cfg = self.config
        names = list(dataset.state_names)
        if names != list(STATE_FEATURES):
            raise InvalidParameterError(
                f"NomogramPolicy needs the 16 heparin state features in order "
                             f"{list(STATE_FEATURES)}; got {names}.")
        lab = dataset.episode_rows(dataset.group_labels(GROUP_COLUMN)).astype(str)
        codes = _group_codes(lab, cfg)
        steps = np.rint(dataset.states[:, 14] / cfg.dt_hours).astype(np.int64)
        out = np.empty((dataset.n_steps, cfg.n_actions))
        for s in np.unique(steps):  # loop over <= horizon distinct steps, not rows
            m = steps == s
            out[m] = nomogram_probs(dataset.states[m], codes[m], int(s), cfg)
        return out


def _group_codes(labels: NDArray[Any], cfg: HeparinConfig) -> NDArray[np.int64]:
    known = np.asarray(cfg.groups, dtype=str)
    lab = np.asarray(labels, dtype=str)
    bad = ~np.isin(lab, known)
    if bad.any():
        raise InvalidParameterError(
            f"Unknown {GROUP_COLUMN} label {lab[bad][0]!r}; expected one of "
                         f"{list(cfg.groups)}.")
    order = np.argsort(known)
    return np.asarray(order[np.searchsorted(known[order], lab)], dtype=np.int64)


def _step_dataset(obs: NDArray[np.float32], groups: NDArray[np.int64], cfg: HeparinConfig,
                  gamma: float) -> TrajectoryDataset:
    """One-row episodes holding the current observations (what a Markov policy needs)."""
    n = obs.shape[0]
    return TrajectoryDataset(
        states=np.ascontiguousarray(obs, dtype=np.float32), actions=np.zeros(n, dtype=np.int64),
        reward_components=np.zeros((n, 2)), terminals=np.ones(n, dtype=bool),
        episode_offsets=np.arange(n + 1, dtype=np.int64), episode_ids=np.arange(n),
        times=np.zeros(n, dtype=np.int64), action_space=_action_space(cfg),
        state_names=STATE_FEATURES, reward_names=("range", "event"),
        reward_weights=np.ones(2), gamma=gamma,
        groups={GROUP_COLUMN: np.asarray(cfg.groups, dtype=object)[groups],
                "sex": np.zeros(n, dtype=object)},
    )


def _act_fn(policy: PolicyLike, cfg: HeparinConfig
            ) -> Callable[[NDArray[np.float32], NDArray[np.int64], int], NDArray[np.float64]]:
    if isinstance(policy, str):
        if policy not in ("behavior", "behaviour", "nomogram"):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="policy", owner="evaluate_heparin_policy",
                expected="a Policy, a callable or 'behavior'", got=policy))
        return lambda obs, g, t: nomogram_probs(obs, g, t, cfg)
    if hasattr(policy, "action_probs"):
        n_act = int(getattr(policy, "n_actions", cfg.n_actions))
        if n_act != cfg.n_actions:
            raise InvalidParameterError(
                f"The policy has {n_act} actions; the simulator has {cfg.n_actions}.")
        window = int(getattr(policy, "window", 1))
        if window > 1:
            # The simulator passes one-row episodes (the current observations); a policy that
            # reads earlier rows would be scored as a different policy.
            raise PolicyError(
                f"The policy reads {window} rows of history (window={window}); the heparin "
                "simulator passes only the current row, so it can evaluate only policies with "
                "window 1 (an MLP encoder, or a history encoder trained with --window 1).")

        def fn(obs: NDArray[np.float32], g: NDArray[np.int64], t: int) -> NDArray[np.float64]:
            ds = _step_dataset(obs, g, cfg, 0.95)
            return np.asarray(policy.action_probs(ds), dtype=np.float64)
        return fn
    if callable(policy):
        return lambda obs, g, t: np.asarray(policy(obs), dtype=np.float64)
    raise InvalidParameterError(PARAM_MESSAGE.format(name="policy", owner="evaluate_heparin_policy",
                                         expected="a Policy, a callable or 'behavior'",
                                         got=type(policy).__name__))


def _choose(probs: NDArray[np.float64], rng: np.random.Generator, greedy: bool
            ) -> NDArray[np.int64]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any() or \
            np.abs(p.sum(axis=1) - 1).max(initial=0.0) > 1e-5:
        raise InvalidParameterError(
            "The policy must return finite, non-negative probabilities of shape "
                         f"(n, n_actions) summing to 1 per row; got shape {p.shape}.")
    out: NDArray[np.int64]
    if greedy:
        out = np.argmax(p, axis=1).astype(np.int64)
        return out
    cdf = np.cumsum(p, axis=1)
    u = rng.random((p.shape[0], 1)) * cdf[:, -1:]
    out = np.minimum((cdf < u).sum(axis=1), p.shape[1] - 1).astype(np.int64)
    return out


# ---------------------------------------------------------------------------- simulation
def _simulate(policy: PolicyLike, n_patients: int, cfg: HeparinConfig, random_state: RandomState,
              greedy: bool, record: bool) -> tuple[Cohort, dict[str, NDArray[Any]]]:
    """Run ``n_patients`` through the simulator under ``policy`` (vectorised over patients).

    Returns the final cohort and per-(patient, step) arrays of shape ``(n, horizon)``.
    """
    rng = check_random_state(random_state)
    seed_cohort, seed_policy = rng.integers(0, 2**63 - 1, size=2)
    c = sample_cohort(n_patients, cfg, np.random.default_rng(seed_cohort))
    prng = np.random.default_rng(seed_policy)
    act = _act_fn(policy, cfg)
    n, h = n_patients, cfg.horizon
    keys = ("reward", "range_reward", "event", "aptt_true", "aptt_meas", "aptt_exposure",
            "terminated", "bolus")
    out: dict[str, NDArray[Any]] = {k: np.full((n, h), np.nan) for k in keys}
    out["action"] = np.full((n, h), -1, dtype=np.int64)
    out["alive"] = np.zeros((n, h), dtype=bool)
    if record:
        out["obs"] = np.full((n, h, len(STATE_FEATURES)), np.nan, dtype=np.float32)
        out["prob"] = np.full((n, h), np.nan)
    for t in range(h):
        idx = np.flatnonzero(c.alive)
        if idx.size == 0:
            break
        obs = observe(c, cfg)[idx]
        probs = act(obs, c.group[idx], t)
        a_live = _choose(probs, prng, greedy)
        actions = np.zeros(n, dtype=np.int64)
        actions[idx] = a_live
        res = advance(c, actions, cfg)
        for k in keys:
            out[k][idx, t] = res[k][idx]
        out["action"][idx, t] = a_live
        out["alive"][idx, t] = True
        if record:
            out["obs"][idx, t] = obs
            out["prob"][idx, t] = probs[np.arange(idx.size), a_live]
    return c, out


def generate_heparin_data(n_patients: int = 2000, *, config: HeparinConfig | None = None,
                          random_state: RandomState = None, gamma: float = 0.95,
                          policy: PolicyLike = "behavior") -> tuple[pd.DataFrame, Manifest]:
    """Simulate a dosing panel under the behaviour nomogram (or another policy).

    Parameters
    ----------
    n_patients : int
    config : HeparinConfig, optional
    random_state : int, Generator or None
    gamma : float
        Discount written to the manifest.
    policy : Policy, callable or ``"behavior"``
        Logging policy (default: the nomogram with clinician noise).

    Returns
    -------
    frame : pandas.DataFrame of shape (n_rows, 28)
        One row per 6-hourly decision: ``patient_id``, ``step``, the 16 :data:`STATE_FEATURES`,
        ``race_ethnicity``, ``sex``, ``rate`` (action label), ``propensity`` (probability of the
        logged action), ``r_range``, ``r_event``, ``done`` and the truth columns ``event``
        (0 none, 1 bleed, 2 clot), ``aptt_true_next``, ``bolus_u_per_kg`` (not named in the
        manifest; carried along as extras).
    manifest : Manifest
        Contract-1 manifest (:func:`heparin_manifest`).

    Examples
    --------
    >>> frame, manifest = generate_heparin_data(20, random_state=0)
    >>> frame.shape[1], manifest.action_space.n_actions
    (28, 6)
    """
    check_param(n_patients, "n_patients", "generate_heparin_data", kind=int, low=1)
    cfg = config or HeparinConfig()
    c, out = _simulate(policy, n_patients, cfg, random_state, greedy=False, record=True)
    alive = out["alive"]
    pi, st = np.nonzero(alive)                  # row-major: grouped by patient, in time order
    obs = out["obs"][pi, st]
    labels = np.asarray(_labels(cfg), dtype=object)
    event = out["event"][pi, st]
    data: dict[str, Any] = {"patient_id": pi.astype(np.int64), "step": st.astype(np.int64)}
    for j, name in enumerate(STATE_FEATURES):
        data[name] = obs[:, j].astype(np.float64)
    data[GROUP_COLUMN] = np.asarray(cfg.groups, dtype=object)[c.group[pi]]
    data["sex"] = np.where(c.female[pi] > 0, "female", "male").astype(object)
    data["rate"] = labels[out["action"][pi, st]]
    data["propensity"] = out["prob"][pi, st]
    data["r_range"] = out["range_reward"][pi, st]
    data["r_event"] = -cfg.event_penalty * (event != 0)
    data["done"] = out["terminated"][pi, st].astype(np.int64)
    data["event"] = event.astype(np.int64)
    data["aptt_true_next"] = out["aptt_true"][pi, st]
    data["bolus_u_per_kg"] = out["bolus"][pi, st]
    return pd.DataFrame(data), heparin_manifest(cfg, gamma)


def heparin_dataset(n_patients: int = 2000, *, config: HeparinConfig | None = None,
                    random_state: RandomState = None, gamma: float = 0.95) -> TrajectoryDataset:
    """:func:`generate_heparin_data` read into a :class:`~equicare.data.TrajectoryDataset`."""
    frame, man = generate_heparin_data(n_patients, config=config, random_state=random_state,
                                       gamma=gamma)
    return from_frame(frame, man, source="<heparin simulator>", emit_warnings=False)


# ---------------------------------------------------------------------------- ground truth
_METRICS = ("tir", "reach24", "ae_rate", "bleed_rate", "clot_rate", "return")


@dataclass(frozen=True)
class HeparinEvaluation:
    """Monte-Carlo ground truth of a policy in the simulator.

    Attributes
    ----------
    n_patients : int
    overall : dict of str to (value, se)
        ``tir`` (mean per-patient fraction of 6-hourly true aPTT values in 60-100 s while on
        therapy), ``reach24`` (fraction of patients with a true aPTT in range within 24 h),
        ``ae_rate`` (fraction with a major bleed or thrombosis), ``bleed_rate``, ``clot_rate``,
        ``return`` (undiscounted sum of :math:`r_p`). Standard errors are ``sd / sqrt(n)``.
    by_group : pandas.DataFrame
        One row per race/ethnicity group: ``group, n_patients`` and ``<metric>, <metric>_se``.
    tir_gap : float
        Largest minus smallest group time-in-range (groups with >= 11 patients).
    tir_gap_se : float
        Standard error of that difference (independent groups).
    per_patient : dict of str to ndarray of shape (n_patients,)
        Per-patient values (for paired comparisons between policies run with the same seed).
    seed : int or None
        The integer ``random_state`` of the evaluation (None for a Generator or no seed): a
        paired comparison needs the same one on both sides.
    """

    n_patients: int
    overall: dict[str, tuple[float, float]]
    by_group: pd.DataFrame
    tir_gap: float
    tir_gap_se: float
    per_patient: dict[str, NDArray[np.float64]] = field(repr=False)
    seed: int | None = None

    def value(self, metric: str) -> float:
        """Overall value of ``metric``."""
        return self.overall[metric][0]

    def se(self, metric: str) -> float:
        """Return the standard error of ``metric``."""
        return self.overall[metric][1]

    def difference(self, other: HeparinEvaluation, metric: str = "tir"
                   ) -> tuple[float, float, float]:
        """``self - other`` for ``metric``: (difference, unpaired SE, paired SE).

        The paired SE is valid when both were run with the same integer seed and number of
        patients (common random numbers: same patients and noise); otherwise it is NaN.
        """
        d = self.value(metric) - other.value(metric)
        se_u = float(np.hypot(self.se(metric), other.se(metric)))
        a, b = self.per_patient[metric], other.per_patient[metric]
        paired = a.size == b.size and self.seed is not None and self.seed == other.seed
        se_p = float(np.std(a - b, ddof=1) / np.sqrt(a.size)) if paired else float("nan")
        return float(d), se_u, se_p

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "n_patients": self.n_patients,
            "overall": {k: {"value": v, "se": s} for k, (v, s) in self.overall.items()},
            "by_group": self.by_group.to_dict(orient="records"),
            "tir_gap": self.tir_gap, "tir_gap_se": self.tir_gap_se,
        }


def _mean_se(x: NDArray[np.float64]) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))


def evaluate_heparin_policy(policy: PolicyLike = "behavior", *, n_patients: int = 2000,
                            config: HeparinConfig | None = None, random_state: RandomState = 0,
                            greedy: bool = False) -> HeparinEvaluation:
    """Ground truth of a policy by Monte Carlo in the true simulator.

    Parameters
    ----------
    policy : Policy, callable or ``"behavior"``
        A :class:`~equicare.policy.Policy` (its ``action_probs`` receives one-row episodes holding
        the current observations, with the ``race_ethnicity`` group; a policy whose ``window``
        exceeds 1 raises :class:`~equicare.exceptions.PolicyError`), a callable mapping
        observations of shape ``(n, 16)`` to probabilities of shape ``(n, 6)``, or ``"behavior"``
        for the nomogram with clinician noise.
    n_patients : int
    config : HeparinConfig, optional
    random_state : int, Generator or None
        The same seed gives the same patients and noise for every policy (common random numbers).
    greedy : bool
        Take the most likely action instead of sampling.

    Returns
    -------
    HeparinEvaluation
    """
    check_param(n_patients, "n_patients", "evaluate_heparin_policy", kind=int, low=2)
    cfg = config or HeparinConfig()
    c, out = _simulate(policy, n_patients, cfg, random_state, greedy=greedy, record=False)
    alive = out["alive"]
    lo, hi = cfg.aptt_low, cfg.aptt_high
    a = out["aptt_true"]
    in_range = (a >= lo) & (a <= hi) & alive
    n_on = alive.sum(axis=1)
    k24 = min(4, cfg.horizon)
    ev = np.nan_to_num(out["event"])
    per = {
        "tir": in_range.sum(axis=1) / np.maximum(n_on, 1),
        "reach24": in_range[:, :k24].any(axis=1).astype(np.float64),
        "ae_rate": (ev > 0).any(axis=1).astype(np.float64),
        "bleed_rate": (ev == 1).any(axis=1).astype(np.float64),
        "clot_rate": (ev == 2).any(axis=1).astype(np.float64),
        "return": np.nansum(np.where(alive, out["reward"], 0.0), axis=1),
    }
    overall = {k: _mean_se(per[k]) for k in _METRICS}
    rows = []
    for g, name in enumerate(cfg.groups):
        m = c.group == g
        row: dict[str, Any] = {"group": name, "n_patients": int(m.sum())}
        for k in _METRICS:
            row[k], row[f"{k}_se"] = _mean_se(per[k][m])
        rows.append(row)
    by_group = pd.DataFrame(rows)
    ok = by_group[by_group["n_patients"] >= 11]
    if len(ok) >= 2:
        hi_i, lo_i = ok["tir"].idxmax(), ok["tir"].idxmin()
        gap = float(ok.loc[hi_i, "tir"] - ok.loc[lo_i, "tir"])
        gap_se = float(np.hypot(ok.loc[hi_i, "tir_se"], ok.loc[lo_i, "tir_se"]))
    else:
        gap, gap_se = float("nan"), float("nan")
    seed = (int(random_state) if isinstance(random_state, int | np.integer)
            and not isinstance(random_state, bool) else None)
    return HeparinEvaluation(n_patients=n_patients, overall=overall, by_group=by_group,
                             tir_gap=gap, tir_gap_se=gap_se, per_patient=per, seed=seed)


# ---------------------------------------------------------------------------- gymnasium
class HeparinEnv(gym.Env[NDArray[np.float32], np.int64]):
    """One patient on a heparin infusion, one 6-hourly dosing decision per step.

    Observation: the 16 :data:`STATE_FEATURES` (float32). Action: ``Discrete(6)``, the infusion rate
    bin. Reward: :math:`r_p`. ``terminated`` is True after an adverse event or at the end of the
    5-day course (the course length is part of the task and ``hours`` is observed); ``truncated`` is
    always False (wrap in ``gymnasium.wrappers.TimeLimit`` for shorter episodes).

    Parameters
    ----------
    config : HeparinConfig, optional
    group : str, optional
        Fix the patient's race/ethnicity group (default: drawn from the population).
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, config: HeparinConfig | None = None, group: str | None = None) -> None:
        self.config = config or HeparinConfig()
        if group is not None and group not in self.config.groups:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="group", owner="HeparinEnv",
                                                  expected=f"one of {list(self.config.groups)}",
                                                  got=group))
        self.group = group
        self.action_space = gym.spaces.Discrete(self.config.n_actions)
        high = np.array(OBS_HIGH, dtype=np.float32)
        high[14] = self.config.horizon * self.config.dt_hours
        high[15] = max(self.config.rate_bins)
        self.observation_space = gym.spaces.Box(low=np.array(OBS_LOW, dtype=np.float32),
                                                high=high, dtype=np.float32)
        self._cohort: Cohort | None = None

    def _obs(self) -> NDArray[np.float32]:
        assert self._cohort is not None
        obs: NDArray[np.float32] = observe(self._cohort, self.config)[0]
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Draw a new patient; ``info`` holds the group and the hidden PK/PD parameters."""
        super().reset(seed=seed)
        c = sample_cohort(1, self.config, self.np_random)
        group = (options or {}).get("group", self.group)
        if group is not None:
            c.group[:] = self.config.groups.index(group)
        self._cohort = c
        return self._obs(), self._info()

    def _info(self) -> dict[str, Any]:
        c = self._cohort
        assert c is not None
        return {"group": self.config.groups[int(c.group[0])], "step": c.t,
                "clearance_ml_h": float(c.clearance()[0]), "ec50": float(c.ec50()[0]),
                "concentration": float(c.conc[0])}

    def step(self, action: Any) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Infuse rate bin ``action`` for 6 hours."""
        if self._cohort is None or not self._cohort.alive[0]:
            raise RuntimeError("Call reset() before step() (the episode is over).")
        if not self.action_space.contains(np.int64(action)):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="action", owner="HeparinEnv",
                expected=f"an int in [0, {self.config.n_actions})", got=action))
        res = advance(self._cohort, np.array([int(action)]), self.config)
        info = self._info()
        info.update(event=int(res["event"][0]), aptt_true=float(res["aptt_true"][0]),
                    bolus_u_per_kg=float(res["bolus"][0]))
        return self._obs(), float(res["reward"][0]), bool(res["terminated"][0]), False, info
