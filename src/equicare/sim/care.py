"""Care-management simulator with known dynamics (a Medicaid-like weekly member panel).

Members have five clinical/social state features, demographics (race/ethnicity, sex, age band),
and receive weekly outreach decisions factored as modality x provider x goal x urgency (300 flat
actions, about 100 used by current practice). The behaviour policy is known exactly, and the true
value of any policy is computed by Monte Carlo. Model equations: docs/care_simulator.md.

Examples
--------
>>> from equicare.sim.care import CareManagementSim
>>> sim = CareManagementSim()
>>> panel = sim.generate(n_members=50, n_weeks=8, random_state=0)
>>> panel.frame.shape[1]
22
>>> res = sim.true_value(sim.behavior_policy(), n_members=200, n_weeks=8, random_state=1)
>>> res.n_episodes
200
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import Manifest
from equicare.exceptions import InvalidParameterError
from equicare.sim._care_config import (
    CARE_ACTION_LEVELS,
    CARE_GROUP_LEVELS,
    CARE_REWARD_COLUMNS,
    CARE_STATE_NAMES,
    CareConfig,
)
from equicare.sim._care_engine import BehaviorActor, PolicyActor, simulate
from equicare.sim._care_model import N_ACTIONS, CareModel
from equicare.sim._care_panel import CarePanel, care_manifest, panel_frame
from equicare.sim._care_policies import CareBehaviorPolicy, CareReferencePolicy
from equicare.utils import PARAM_MESSAGE, RandomState, check_param, check_random_state

__all__ = [
    "CARE_ACTION_LEVELS",
    "CARE_GROUP_LEVELS",
    "CARE_REWARD_COLUMNS",
    "CARE_STATE_NAMES",
    "CareBehaviorPolicy",
    "CareConfig",
    "CareManagementEnv",
    "CareManagementSim",
    "CarePanel",
    "CareReferencePolicy",
    "CareValue",
]

if TYPE_CHECKING:
    from equicare.sim._care_env import CareManagementEnv

_OWNER = "CareManagementSim"
_MAX_MEMBERS = 50_000_000


def __getattr__(name: str) -> Any:
    if name == "CareManagementEnv":  # gymnasium is imported only when the Env is used
        from equicare.sim._care_env import CareManagementEnv

        return CareManagementEnv
    raise AttributeError(f"module 'equicare.sim.care' has no attribute {name!r}")


@dataclass(frozen=True)
class CareValue:
    """Monte-Carlo true value of a policy in the care-management simulator.

    The value of an episode (member) is ``sum_t gamma^t r_t`` over its weeks (``t`` = weeks since
    enrolment, ``r`` the shaped reward ``sum_k w_k r_k``); ``value`` is the mean over the simulated
    members and ``se`` its standard error (members are independent).

    Attributes
    ----------
    value, se : float
    n_episodes : int
    n_steps : int
        Member-weeks simulated.
    components : dict
        ``{name: {"value", "se"}}`` per reward component (unweighted; ``value = sum_k w_k
        components[k]["value"]``).
    by_group : dict
        ``{attr: {label: {"value", "se", "n_episodes"}}}`` for race_ethnicity, sex and age_band
        (empty when ``by_group=False``).
    components_by_group : dict
        ``{attr: {label: {component: value}}}``, e.g. the discounted ED/hospitalisation penalty of
        each group (empty when ``by_group=False``).
    action_set : str
        The action set whose allocation is reported (e.g. ``"modality=home_visit"``).
    allocation_overall : float
        Share of member-weeks in which the policy picks an action of ``action_set`` (expected over
        its probabilities, under its own state distribution).
    allocation : dict
        ``{attr: {label: rate}}``, the same per group (member-week weighted).
    allocation_by_need : dict
        ``{attr: {label: {"high_need": rate, "low_need": rate}}}``.
    gamma : float
    n_weeks : int
    episode_values : ndarray of shape (n_episodes,)
        Discounted shaped return of each simulated member (for paired comparisons: two policies
        evaluated with the same ``random_state`` share the cohort and the noise).
    episode_groups : dict
        ``{attr: ndarray of shape (n_episodes,)}``, the group label of each simulated member
        (for paired comparisons within a group, :meth:`paired_difference`).
    """

    value: float
    se: float
    n_episodes: int
    n_steps: int
    components: dict[str, dict[str, float]]
    by_group: dict[str, dict[str, dict[str, float]]]
    components_by_group: dict[str, dict[str, dict[str, float]]]
    action_set: str
    allocation_overall: float
    allocation: dict[str, dict[str, float]]
    allocation_by_need: dict[str, dict[str, dict[str, float]]]
    gamma: float
    n_weeks: int
    episode_values: NDArray[np.float64] = field(repr=False, compare=False,
                                                default_factory=lambda: np.zeros(0))
    episode_groups: dict[str, NDArray[np.str_]] = field(repr=False, compare=False,
                                                        default_factory=dict)

    def parity_gap(self, attr: str = "race_ethnicity") -> float:
        """Largest minus smallest allocation rate across the labels of ``attr`` (a share)."""
        rates = list(self.allocation[attr].values())
        return float(max(rates) - min(rates))

    def paired_difference(self, other: CareValue, attr: str | None = None,
                          label: str | None = None) -> tuple[float, float]:
        """Mean and standard error of ``self - other`` member by member.

        Both results must come from the same ``random_state``, ``n_members`` and ``n_weeks``
        (common random numbers), so the difference is paired and far more precise than either
        value. With ``attr`` and ``label``, only that group's members.

        Returns
        -------
        mean, se : float
        """
        if other.episode_values.shape != self.episode_values.shape or not np.array_equal(
                other.episode_groups.get("race_ethnicity", np.zeros(0)),
                self.episode_groups.get("race_ethnicity", np.zeros(0))):
            raise InvalidParameterError(
                "paired_difference needs two results of the same cohort (same "
                             "random_state, n_members and n_weeks).")
        d = self.episode_values - other.episode_values
        if attr is not None:
            if attr not in self.episode_groups:
                raise InvalidParameterError(f"Unknown group attribute {attr!r}; expected one of "
                                 f"{sorted(self.episode_groups)}.")
            d = d[self.episode_groups[attr] == label]
        return _mean_se(d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (without the per-episode arrays)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in ("episode_values", "episode_groups")}


def _mean_se(x: NDArray[np.float64]) -> tuple[float, float]:
    n = x.shape[0]
    if n == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(x.mean()), se


@dataclass(frozen=True)
class CareManagementSim:
    """Generator of care-management panels with known dynamics, exact propensities and true values.

    Parameters
    ----------
    config : CareConfig, optional
        Model settings (defaults: ``CareConfig()``).
    """

    config: CareConfig = field(default_factory=CareConfig)
    _model: CareModel = field(init=False, repr=False, compare=False)
    _manifest: Manifest = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.config, CareConfig):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="config", owner="CareManagementSim", expected="a CareConfig", got=self.config))
        object.__setattr__(self, "_model", CareModel(self.config))
        object.__setattr__(self, "_manifest", care_manifest(self.config))

    # ------------------------------------------------------------------ description
    def manifest(self) -> Manifest:
        """Return the dataset manifest of the panels (Contract 1)."""
        return self._manifest

    @property
    def n_actions(self) -> int:
        """Size of the flat action space (300)."""
        return N_ACTIONS

    @property
    def action_space(self) -> Any:
        """The :class:`~equicare.spaces.FactoredActionSpace` of the panels."""
        return self._manifest.action_space

    def behavior_policy(self, equitable: bool = False) -> CareBehaviorPolicy:
        """Return the exact behaviour policy (current practice) as a Policy object.

        Parameters
        ----------
        equitable : bool
            The same policy without the home-visit disparity (a fairer comparator).
        """
        return CareBehaviorPolicy(self.config, equitable=equitable)

    def reference_policy(self, window: int = 1) -> CareReferencePolicy:
        """Return a hand-written targeted policy that beats current practice."""
        return CareReferencePolicy(window=window)

    def make_env(self, **kwargs: Any) -> Any:
        """Create a :class:`CareManagementEnv` with this simulator's configuration."""
        from equicare.sim._care_env import CareManagementEnv

        return CareManagementEnv(config=self.config, **kwargs)

    # ------------------------------------------------------------------ data
    def _check_sizes(self, n_members: int, n_weeks: int) -> None:
        check_param(n_members, "n_members", _OWNER, kind=(int, np.integer), low=1,
                    high=_MAX_MEMBERS)
        check_param(n_weeks, "n_weeks", _OWNER, kind=(int, np.integer), low=1, high=10_000)

    def generate(self, n_members: int = 1000, n_weeks: int = 52,
                 random_state: RandomState = None) -> CarePanel:
        """Simulate a panel under the behaviour policy (the observational data).

        Parameters
        ----------
        n_members : int
            Members in the cohort (with churn, some enrol late or leave early).
        n_weeks : int
            Calendar weeks of the observation window.
        random_state : int, numpy.random.Generator or None

        Returns
        -------
        CarePanel
            ``propensity`` holds the exact behaviour probability of each logged action.
        """
        self._check_sizes(n_members, n_weeks)
        n_members, n_weeks = int(n_members), int(n_weeks)
        rng = check_random_state(random_state)
        cohort = self._model.draw_cohort(n_members, n_weeks, rng)
        out = simulate(self._model, cohort, n_weeks, rng, BehaviorActor(self._model),
                       self._manifest, record=True, gamma=self.config.gamma)
        return CarePanel(panel_frame(out), self._manifest, self.config, n_weeks)

    def rollout(self, policy: Any, n_members: int = 1000, n_weeks: int = 52,
                random_state: RandomState = None) -> CarePanel:
        """Simulate a panel under any policy.

        Parameters
        ----------
        policy : Policy or callable
            A Policy (``action_probs(dataset) -> (n_steps, 300)``, optional ``window``) or
            ``fn(states (n, 5) float32, groups {attr: labels (n,)}) -> probs (n, 300)``.
        n_members, n_weeks, random_state
            As in :meth:`generate`.

        Returns
        -------
        CarePanel
            ``propensity`` holds the probability of each logged action under ``policy``.
        """
        self._check_sizes(n_members, n_weeks)
        n_members, n_weeks = int(n_members), int(n_weeks)
        rng = check_random_state(random_state)
        cohort = self._model.draw_cohort(n_members, n_weeks, rng)
        out = simulate(self._model, cohort, n_weeks, rng, PolicyActor(policy), self._manifest,
                       record=True, gamma=self.config.gamma)
        return CarePanel(panel_frame(out), self._manifest, self.config, n_weeks)

    # ------------------------------------------------------------------ ground truth
    def true_value(self, policy: Any, n_members: int = 2000, n_weeks: int = 52,
                   random_state: RandomState = 0, by_group: bool = True,
                   action_mask: str | NDArray[np.bool_] = "modality=home_visit") -> CareValue:
        """Monte-Carlo value of a policy, overall, per component and per group.

        The cohort (entry, disenrolment, baseline states) is drawn as in :meth:`generate`, so the
        value is over the same initial-state and episode-length distribution as the panels.

        Parameters
        ----------
        policy : Policy or callable
            See :meth:`rollout`. A Policy with ``window = k > 1`` receives, each week, a dataset
            with each active member's last ``min(k, t + 1)`` rows (the current row last, its
            action/rewards set to 0) and its probabilities at each episode's last row are used.
        n_members : int
            Episodes simulated (the standard error shrinks as ``1 / sqrt(n_members)``).
        n_weeks : int
        random_state : int, numpy.random.Generator or None
            The same seed gives the same cohort and outcome noise for every policy (common random
            numbers), which makes differences between policies precise.
        by_group : bool
            Also report values per group label.
        action_mask : str or ndarray of shape (300,), bool
            Action set whose allocation rates are reported, e.g. ``"modality=home_visit"`` or
            ``"urgency=urgent|semi_urgent"``.

        Returns
        -------
        CareValue
        """
        self._check_sizes(n_members, n_weeks)
        n_members, n_weeks = int(n_members), int(n_weeks)
        check_param(by_group, "by_group", "true_value", kind=bool)
        space = self._manifest.action_space
        if isinstance(action_mask, str):
            mask = space.parse_action_set(action_mask)
            set_name = action_mask
        else:
            mask = np.asarray(action_mask, dtype=bool)
            if mask.shape != (N_ACTIONS,):
                raise InvalidParameterError(
                    f"action_mask must be a string like 'modality=home_visit' or a "
                                 f"boolean array of shape ({N_ACTIONS},), got shape {mask.shape}.")
            set_name = f"mask of {int(mask.sum())} actions"
        rng = check_random_state(random_state)
        cohort = self._model.draw_cohort(n_members, n_weeks, rng)
        out = simulate(self._model, cohort, n_weeks, rng, PolicyActor(policy, mask),
                       self._manifest, record=False, gamma=self.config.gamma)
        w = np.asarray(self.config.reward_weights)
        ret = out.returns @ w
        value, se = _mean_se(ret)
        components = {}
        for j, name in enumerate(CARE_REWARD_COLUMNS):
            v, s = _mean_se(out.returns[:, j])
            components[name] = {"value": v, "se": s}
        codes = {"race_ethnicity": cohort.race, "sex": cohort.sex, "age_band": cohort.age}
        groups: dict[str, dict[str, dict[str, float]]] = {}
        comp_groups: dict[str, dict[str, dict[str, float]]] = {}
        alloc: dict[str, dict[str, float]] = {}
        alloc_need: dict[str, dict[str, dict[str, float]]] = {}
        assert out.mask_sum is not None
        steps = out.n_steps.astype(np.float64)
        hn = cohort.high_need == 1
        for attr, c in codes.items():
            groups[attr], alloc[attr], alloc_need[attr], comp_groups[attr] = {}, {}, {}, {}
            for k, label in enumerate(CARE_GROUP_LEVELS[attr]):
                sel = c == k
                if by_group:
                    v, s = _mean_se(ret[sel])
                    groups[attr][label] = {"value": v, "se": s, "n_episodes": int(sel.sum())}
                    comp_groups[attr][label] = {
                        name: _mean_se(out.returns[sel, j])[0]
                        for j, name in enumerate(CARE_REWARD_COLUMNS)}
                alloc[attr][label] = _rate(out.mask_sum[sel], steps[sel])
                alloc_need[attr][label] = {
                    "high_need": _rate(out.mask_sum[sel & hn], steps[sel & hn]),
                    "low_need": _rate(out.mask_sum[sel & ~hn], steps[sel & ~hn])}
        if not by_group:
            groups, comp_groups = {}, {}
        return CareValue(
            value=value, se=se, n_episodes=n_members, n_steps=int(out.n_steps.sum()),
            components=components, by_group=groups, components_by_group=comp_groups,
            action_set=set_name,
            allocation_overall=_rate(out.mask_sum, steps), allocation=alloc,
            allocation_by_need=alloc_need, gamma=self.config.gamma, n_weeks=n_weeks,
            episode_values=ret,
            episode_groups={attr: np.asarray(CARE_GROUP_LEVELS[attr])[c]
                            for attr, c in codes.items()})


def _rate(num: NDArray[np.float64], den: NDArray[np.float64]) -> float:
    d = float(den.sum())
    return float(num.sum() / d) if d > 0 else math.nan
