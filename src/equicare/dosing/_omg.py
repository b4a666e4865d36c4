r"""OMG-RL: offline model-based guided reward learning (Lim & Lee, arXiv 2409.13299).

Three stages, all on logged data only:

1. **Dynamics.** A probabilistic ensemble (7 Gaussian MLPs, 5 elites;
   :class:`equicare.models.DynamicsEnsemble`) of :math:`(s, a) \to (s', r, d)`.
2. **Reward.** Maximum-entropy IRL with guided cost learning: a reward network
   :math:`r_\psi = -c_\psi` is fitted so that clinicians' logged segments are likely under
   :math:`p(\tau) \propto e^{R_\psi(\tau)}`, with the partition function estimated by importance
   sampling over demonstrations and short model rollouts of the policy, each rollout scored by
   the actor snapshot that drew it (:mod:`equicare.dosing._irl`).
3. **Policy.** Conservative discrete soft actor-critic (:mod:`equicare.dosing._sac`) on a 50/50 mix
   of logged transitions and branched model rollouts (horizon 5 from logged states), with the
   learned reward and the COMBO penalty (Q pushed down on model states, up on logged pairs).

Reward and policy updates alternate; the reward is frozen for the last part of training so that the
policy converges on a fixed reward. The same class gives the baselines of the paper's comparison:
``reward="dataset"`` trains the same conservative SAC on the known clinical reward (model rewards
from the ensemble's reward head), and ``use_model=False`` gives model-free conservative SAC (the
COMBO penalty then reduces to the CQL(H) penalty on logged states).

Examples
--------
>>> from equicare.sim.heparin import heparin_dataset
>>> ds = heparin_dataset(40, random_state=0)
>>> cfg = OMGConfig.small()
>>> omg = OMG(cfg, random_state=0).fit(ds)
>>> omg.action_probs(ds).shape == (ds.n_steps, 6)
True
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from equicare.data.validate import _lead, _led_by
from equicare.dosing._irl import (
    UNIFORM,
    Segments,
    background_weights,
    expert_segments,
    fit_behavior_model,
    gcl_loss,
    mixture_log_density,
)
from equicare.dosing._sac import MLP, DiscreteSAC, SACConfig
from equicare.exceptions import (
    DataValidationError,
    DataWarning,
    InvalidParameterError,
    PolicyError,
    UnknownNameError,
)
from equicare.models._dynamics import DynamicsConfig, DynamicsEnsemble, transitions_from_dataset
from equicare.models._reward_net import REWARD_INPUTS, RewardEnsemble, RewardInput
from equicare.policy._learned import StatePolicy, manifest_fingerprint
from equicare.privacy import round_significant
from equicare.spaces import FactoredActionSpace
from equicare.utils import (
    PARAM_MESSAGE,
    RandomState,
    check_is_fitted,
    check_random_state,
)

__all__ = ["OMG", "OMGConfig"]

Progress = Callable[[str, int, int], None]
#: Error when no episode has a second row (no transition to learn dynamics or rewards from).
NO_TRANSITIONS_MESSAGE = ("{data} has no transitions (every episode has one row); OMG learns the "
                          "dynamics from consecutive rows of an episode (only the model-free, "
                          "known-reward variant trains on single rows).")
#: Error when the action space has one action (nothing to choose); ``source`` is the panel file.
FEW_ACTIONS_MESSAGE = ("{source}OMG needs at least 2 actions; the manifest's action space "
                       "({actions}) has {n}, so there is no choice to learn a reward or a policy "
                       "for. Expected an action column with 2 or more levels.")
STAGES: tuple[str, ...] = ("dynamics", "reward", "policy")
#: Error when a method that needs a dataset gets something else (e.g. a NumPy array of states).
NOT_A_DATASET_MESSAGE = (
    "The 'dataset' parameter of OMG.{method} must be a TrajectoryDataset (from "
    "equicare.data.load_dataset(data, manifest) or equicare.sim.heparin.heparin_dataset); got "
    "{got}. OMG needs the episodes, actions and rewards, not only the states.")
_DATASET_ATTRS = ("states", "actions", "n_actions", "n_features", "n_steps", "n_episodes",
                  "state_names", "episode_offsets")


def _check_is_dataset(dataset: Any, method: str) -> None:
    if not all(hasattr(dataset, a) for a in _DATASET_ATTRS):
        got = type(dataset).__module__ + "." + type(dataset).__qualname__
        if isinstance(dataset, np.ndarray):
            got += f" of shape {dataset.shape}"
        raise InvalidParameterError(NOT_A_DATASET_MESSAGE.format(method=method, got=got))


@dataclass(frozen=True, kw_only=True)
class OMGConfig:
    """Settings of :class:`OMG` (and of its known-reward / model-free variants).

    Parameters
    ----------
    reward : {"learned", "dataset"}
        ``"learned"``: guided cost learning (OMG-RL). ``"dataset"``: the dataset's reward (the
        known-reward reference).
    use_model : bool
        Train the policy on real + model transitions (True) or on real transitions only.
    dynamics : DynamicsConfig
    sac : SACConfig
    gamma : float, optional
        Discount (default: the dataset's manifest ``gamma``).
    n_iterations : int
        Outer iterations (rollouts, reward updates, policy updates).
    policy_updates : int
        SAC gradient steps per iteration.
    rollout_horizon : int
        Length of branched model rollouts from logged states (5-20).
    rollout_starts : int
        Logged states rolled out from per iteration.
    model_buffer_size : int
        Capacity of the FIFO buffer of model transitions.
    real_ratio : float
        Fraction of each policy batch drawn from logged transitions.
    reward_inputs : {"state_action", "next_state", "transition"}
        What the reward network sees (see :class:`equicare.models.RewardNet`).
    reward_uniform : float in [0, 1)
        Share of the reward loss's sample segments that come from rollouts of the uniform policy
        (a broad proposal kept throughout). The importance weights use the mixture of every
        policy that generated the background: the behaviour model (demonstrations), the actor
        snapshots that drew the pooled rollouts, and the uniform policy, each in its share.
        These rollouts are not used by the policy.
    reward_segment : int, optional
        Length of the trajectory segments compared in the reward loss (default: the rollout
        horizon; at most the rollout horizon).
    reward_demo_outcomes : {"model", "data"}
        Outcomes of the demonstration segments in the reward loss: one-step model samples from
        the logged (state, action) pairs (``"model"``, refreshed every iteration), or the logged
        next states (``"data"``). With ``"data"`` the reward can learn to separate logged from
        model-generated states by the model's errors (e.g. a deterministic relation between two
        lab values that the model only reproduces with noise) instead of learning the clinicians'
        aim.
    reward_exclude : tuple of str or "auto"
        State features the reward must not depend on. Treatment-history features (the previous
        dose, the previous measurement) let the reward network imitate the logged actions instead
        of valuing patient states. ``"auto"`` excludes the features that the dynamics ensemble
        found to be a function of the action (:math:`s'_j = f(a)`, e.g. the previous rate) or a
        copy of a current feature (:math:`s'_j = s_k`, e.g. the previous aPTT): in
        :math:`r(s')` they encode :math:`(s, a)`, not the outcome. ``()`` keeps every feature.
    reward_members : int
        Reward networks trained side by side (each with its own guided-cost-learning loss); the
        reward is their mean.
    reward_hidden : tuple of int
    reward_lr : float
    reward_updates : int
        Guided-cost-learning steps per iteration.
    reward_warmup : int
        Guided-cost-learning steps before the first policy update (against rollouts of a uniform
        policy, a broad proposal).
    reward_batch : int
        Demonstration segments (and as many sample segments) per reward step.
    reward_l2 : float
        Penalty on the squared per-step reward (keeps the scale identified).
    reward_bound : float
        Per-step reward bound of the network.
    reward_freeze : float in (0, 1]
        Fraction of the iterations during which the reward is updated.
    reward_offset : {"nonnegative", "mean"}
        Standardisation of the learned reward for the policy stage: divided by its SD on the logged
        transitions, then shifted so that its 1st percentile is 0 (``"nonnegative"``: ending an
        episode early, e.g. by an adverse event, is never attractive) or its mean is 0.
    behavior_epochs : int
        Epochs of the behaviour model used in the importance weights.
    """

    reward: Literal["learned", "dataset"] = "learned"
    use_model: bool = True
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    gamma: float | None = None
    n_iterations: int = 40
    policy_updates: int = 500
    rollout_horizon: int = 5
    rollout_starts: int = 1000
    model_buffer_size: int = 100_000
    real_ratio: float = 0.5
    reward_inputs: RewardInput = "next_state"
    reward_uniform: float = 0.5
    reward_segment: int | None = None
    reward_demo_outcomes: Literal["model", "data"] = "model"
    reward_exclude: tuple[str, ...] | Literal["auto"] = "auto"
    reward_members: int = 5
    reward_hidden: tuple[int, ...] = (64, 64)
    reward_lr: float = 1e-3
    reward_updates: int = 20
    reward_warmup: int = 200
    reward_batch: int = 256
    reward_l2: float = 0.01
    reward_bound: float = 5.0
    reward_freeze: float = 0.25
    reward_offset: Literal["nonnegative", "mean"] = "nonnegative"
    behavior_epochs: int = 5

    def __post_init__(self) -> None:
        own = "OMGConfig"
        object.__setattr__(self, "reward_hidden", tuple(int(h) for h in self.reward_hidden))
        if self.reward_exclude != "auto":
            object.__setattr__(self, "reward_exclude",
                               tuple(str(f) for f in self.reward_exclude))

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InvalidParameterError(
                    PARAM_MESSAGE.format(name=name, owner=own, expected=expected,
                                                      got=getattr(self, name)))

        need(self.reward in ("learned", "dataset"), "reward", "one of 'learned', 'dataset'")
        need(isinstance(self.use_model, bool), "use_model", "a bool")
        need(isinstance(self.dynamics, DynamicsConfig), "dynamics", "a DynamicsConfig")
        need(isinstance(self.sac, SACConfig), "sac", "a SACConfig")
        need(self.gamma is None or 0 < self.gamma <= 1, "gamma", "None or a number in (0, 1]")
        for name in ("n_iterations", "policy_updates", "rollout_horizon", "rollout_starts",
                     "model_buffer_size", "reward_batch", "behavior_epochs", "reward_members"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "an int >= 1")
        for name in ("reward_updates", "reward_warmup"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name, "an int >= 0")
        need(0 < self.real_ratio <= 1, "real_ratio", "a number in (0, 1]")
        need(self.reward_inputs in REWARD_INPUTS, "reward_inputs",
             "one of " + ", ".join(repr(x) for x in REWARD_INPUTS))
        need(self.reward_lr > 0, "reward_lr", "a number in (0, inf)")
        need(self.reward_l2 >= 0, "reward_l2", "a number in [0, inf)")
        need(self.reward_bound > 0, "reward_bound", "a number in (0, inf)")
        need(0 < self.reward_freeze <= 1, "reward_freeze", "a number in (0, 1]")
        need(self.reward_offset in ("nonnegative", "mean"), "reward_offset",
             "one of 'nonnegative', 'mean'")
        need(self.reward_demo_outcomes in ("model", "data"), "reward_demo_outcomes",
             "one of 'model', 'data'")
        need(0 <= self.reward_uniform < 1, "reward_uniform", "a number in [0, 1)")
        need(self.reward_segment is None or (
            isinstance(self.reward_segment, int)
            and 1 <= self.reward_segment <= self.rollout_horizon),
            "reward_segment", f"None or an int in [1, {self.rollout_horizon}]")
        need(self.reward == "dataset" or self.use_model, "use_model",
             "True when reward='learned' (guided cost learning needs model rollouts)")

    @classmethod
    def small(cls, **overrides: Any) -> OMGConfig:
        """Return a tiny configuration for tests and examples (seconds, not minutes)."""
        base = cls(dynamics=DynamicsConfig(hidden=(32, 32), max_epochs=3, n_members=3,
                                           n_elites=2),
                   sac=SACConfig(hidden=(32, 32), batch_size=64), n_iterations=3,
                   policy_updates=20, rollout_starts=64, reward_updates=5, reward_warmup=10,
                   reward_batch=32, reward_hidden=(16,), behavior_epochs=1)
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (nested configs as dictionaries)."""
        d = asdict(self)
        d["dynamics"] = self.dynamics.to_dict()
        d["sac"] = self.sac.to_dict()
        d["reward_hidden"] = list(self.reward_hidden)
        d["reward_exclude"] = (self.reward_exclude if self.reward_exclude == "auto"
                               else list(self.reward_exclude))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OMGConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if "dynamics" in d:
            d["dynamics"] = DynamicsConfig.from_dict(d["dynamics"])
        if "sac" in d:
            d["sac"] = SACConfig.from_dict(d["sac"])
        for key in ("reward_hidden", "reward_exclude"):
            if key in d and d[key] != "auto":
                d[key] = tuple(d[key])
        return cls(**d)


class _ModelBuffer:
    """FIFO buffer of model transitions (NumPy arrays, vectorised insertion)."""

    def __init__(self, capacity: int, d: int) -> None:
        self.s = np.zeros((capacity, d), np.float32)
        self.a = np.zeros(capacity, np.int64)
        self.r = np.zeros(capacity, np.float32)
        self.s2 = np.zeros((capacity, d), np.float32)
        self.d = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.pos = capacity, 0, 0

    def add(self, s: NDArray[Any], a: NDArray[Any], r: NDArray[Any], s2: NDArray[Any],
            d: NDArray[Any]) -> None:
        n = s.shape[0]
        if n > self.capacity:
            s, a, r, s2, d = s[-self.capacity:], a[-self.capacity:], r[-self.capacity:], \
                s2[-self.capacity:], d[-self.capacity:]
            n = self.capacity
        idx = (self.pos + np.arange(n)) % self.capacity
        self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.d[idx] = s, a, r, s2, d
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)


class OMG:
    """Offline model-based guided reward learning with a conservative discrete SAC policy.

    Parameters
    ----------
    config : OMGConfig, optional
    random_state : int, Generator or None

    Attributes
    ----------
    agent_ : DiscreteSAC
        Actor, twin critics and temperature.
    dynamics_ : DynamicsEnsemble or None
    reward_net_ : RewardEnsemble or None
        Learned reward (``reward="learned"``).
    reward_shift_, reward_scale_ : float
        The policy stage uses ``(r_psi - reward_shift_) / reward_scale_``.
    history_ : list of dict
        Per iteration: losses, temperature, entropy, reward statistics.
    stage_seconds_ : dict of str to float
        Wall time of the ``dynamics``, ``reward`` and ``policy`` stages.
    n_actions, n_features_ : int
    feature_names_ : tuple of str
    """

    def __init__(self, config: OMGConfig | None = None, random_state: RandomState = None) -> None:
        self.config = config if config is not None else OMGConfig()
        self.random_state = random_state

    @property
    def n_actions(self) -> int:
        """Number of flat actions (after fit)."""
        check_is_fitted(self, "agent_")
        return int(self.n_actions_)

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Any, progress: Progress | None = None,
            dynamics: DynamicsEnsemble | None = None) -> OMG:
        """Learn dynamics, reward and policy from a :class:`~equicare.data.TrajectoryDataset`.

        Parameters
        ----------
        dataset : TrajectoryDataset
            Logged episodes; ``dataset.rewards`` is only used when ``reward="dataset"``.
        progress : callable, optional
            ``progress(stage, done, total)`` with stage in ``("dynamics", "reward", "policy")``.
        dynamics : DynamicsEnsemble, optional
            A dynamics ensemble already fitted on ``dataset`` (e.g. shared by several variants);
            the dynamics stage is then skipped.

        Returns
        -------
        self
        """
        _check_is_dataset(dataset, "fit")
        source = getattr(dataset, "source", None)
        if dataset.n_actions < 2:
            space = getattr(dataset, "action_space", None)
            raise DataValidationError(_led_by(source, FEW_ACTIONS_MESSAGE.format(
                source=_lead(source), n=dataset.n_actions, actions="unknown components"
                if space is None else ", ".join(f"{c}: {k} level{'' if k == 1 else 's'}"
                                                for c, k in zip(space.names, space.sizes,
                                                                strict=True)))))
        if dataset.n_features < 1:
            raise DataValidationError(_led_by(source, f"{_lead(source)}OMG needs numeric state "
                                              "features (manifest dataset.states); the panel "
                                              "has none."))
        if dataset.n_steps == dataset.n_episodes and \
                (self.config.use_model or self.config.reward == "learned"):
            raise DataValidationError(NO_TRANSITIONS_MESSAGE.format(data=source or "The data"))
        if dataset.categorical is not None and dataset.categorical.shape[1] > 0:
            import warnings

            cols = ", ".join(repr(c) for c in dataset.categorical_names)
            warnings.warn(DataWarning(
                f"OMG models numeric states only: the categorical state column(s) {cols} are "
                "not used by its dynamics, reward or policy. To use one, add it to the "
                "manifest's states as numeric indicator (0/1) columns."), stacklevel=2)
        rng = check_random_state(self.random_state)
        seed = int(rng.integers(2**31 - 1))
        report = progress or (lambda stage, done, total: None)
        if dynamics is not None:
            check_is_fitted(dynamics, "net_")
            if tuple(dynamics.feature_names_) != tuple(dataset.state_names) or \
                    dynamics.n_actions_ != dataset.n_actions:
                raise DataValidationError("The given dynamics ensemble was fitted on other state "
                                          "columns or another action space.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._fit(dataset, rng, report, dynamics)
        return self

    def _fit(self, dataset: Any, rng: np.random.Generator, report: Progress,
             dynamics: DynamicsEnsemble | None) -> None:
        cfg = self.config
        times = {k: 0.0 for k in STAGES}
        tr = transitions_from_dataset(dataset)
        self.__dict__.pop("reward_exclude_", None)
        self.n_actions_ = int(dataset.n_actions)
        self.n_features_ = int(dataset.n_features)
        self.feature_names_ = tuple(dataset.state_names)
        self.action_space_ = dataset.action_space
        self.manifest_fingerprint_ = manifest_fingerprint(getattr(dataset, "manifest", None))
        gamma = float(cfg.gamma if cfg.gamma is not None else dataset.gamma)
        self.gamma_ = gamma
        self._states_cache = tr.states
        # the typical state of reward_grid, saved with the model: medians rounded to 3
        # significant digits (an exact median is a row's value)
        self._median = round_significant(np.median(tr.states, axis=0), 3).astype(np.float32)
        n, d, k = tr.n, self.n_features_, self.n_actions_
        # ---------------------------------------------------------- stage 1: dynamics
        t0 = time.perf_counter()
        self.dynamics_: DynamicsEnsemble | None = None
        s2_real = tr.next_states.copy()
        dyn_seed = int(rng.integers(2**31 - 1))
        if cfg.use_model:
            if dynamics is None:
                dyn = DynamicsEnsemble(cfg.dynamics, random_state=dyn_seed)
                dyn.fit(dataset, progress=lambda e, tot: report("dynamics", e, tot))
            else:
                dyn = dynamics
            report("dynamics", cfg.dynamics.max_epochs, cfg.dynamics.max_epochs)
            self.dynamics_ = dyn
            miss = ~tr.has_next
            if miss.any():  # next state of a final transition: the model's mean prediction
                s2_real[miss] = dyn.predict(tr.states[miss], tr.actions[miss],
                                            deterministic=True)[0]
        times["dynamics"] = time.perf_counter() - t0
        # ---------------------------------------------------------- tensors of logged data
        S = torch.as_tensor(tr.states)
        A = torch.as_tensor(tr.actions)
        R = torch.as_tensor(tr.rewards)
        S2 = torch.as_tensor(s2_real)
        D = torch.as_tensor(tr.terminals)
        # logged rows of the critic: a censored last row (not terminal, no next row) bootstraps
        # from the dynamics model's predicted next state; without a model it has no target and
        # is never drawn (never zero future value: Contract 1)
        real_rows = np.arange(n, dtype=np.int64)
        if not cfg.use_model and tr.censored is not None and tr.censored.any():
            real_rows = np.flatnonzero(~tr.censored)
        mean = tr.states.astype(np.float64).mean(axis=0)
        std = tr.states.astype(np.float64).std(axis=0)
        agent = DiscreteSAC(d, k, cfg.sac, gamma, mean, std)
        self.agent_ = agent
        episode_end = np.asarray(dataset.episode_offsets[1:], dtype=np.int64)[tr.episode]
        buffer = _ModelBuffer(cfg.model_buffer_size, d) if cfg.use_model else None

        # ---------------------------------------------------------- reward network
        learned = cfg.reward == "learned"
        self.reward_net_: RewardEnsemble | None = None
        self.reward_shift_, self.reward_scale_ = 0.0, 1.0
        pool: Segments | None = None
        upool: Segments | None = None
        behavior: MLP | None = None
        uniform = lambda s: rng.integers(0, k, size=s.shape[0])  # noqa: E731
        if learned:
            t0 = time.perf_counter()
            behavior = fit_behavior_model(tr.states, tr.actions, k, epochs=cfg.behavior_epochs)
            net = RewardEnsemble(cfg.reward_members, n_features=d, n_actions=k,
                                 inputs=cfg.reward_inputs, hidden=cfg.reward_hidden,
                                 bound=cfg.reward_bound, state_mean=mean, state_std=std,
                                 feature_index=self._reward_feature_index())
            self.reward_net_ = net
            self._reward_opt_obj = torch.optim.Adam(net.parameters(), lr=cfg.reward_lr)
            self._proposals: dict[int, MLP] = {}  # generator id -> actor snapshot
            pool = self._rollout_segments(uniform, rng, buffer, n, source=UNIFORM)
            upool = pool
            self._refresh_demo_outcomes(tr.states, tr.actions, rng)
            total = cfg.reward_warmup
            for i in range(cfg.reward_warmup):
                self._reward_step(pool, upool, S, A, S2, episode_end, behavior, rng)
                if (i + 1) % 10 == 0 or i + 1 == total:
                    report("reward", i + 1, total)
            self._set_reward_normalisation(S, A, S2)
            times["reward"] += time.perf_counter() - t0

        # ---------------------------------------------------------- alternate
        self.history_: list[dict[str, float]] = []
        n_freeze = max(1, int(math.ceil(cfg.reward_freeze * cfg.n_iterations)))
        bs = cfg.sac.batch_size
        n_real = max(1, int(round(bs * (cfg.real_ratio if cfg.use_model else 1.0))))
        n_model = bs - n_real if cfg.use_model else 0
        for it in range(cfg.n_iterations):
            t0 = time.perf_counter()
            rec: dict[str, float] = {"iteration": float(it)}
            if cfg.use_model:
                into_pool = learned and pool is not None and it < n_freeze
                # the rollouts that enter the reward's pool keep the actor that drew them
                sid = self._snapshot_actor() if into_pool else -1
                actor = self._proposals[sid] if into_pool else None
                segs = self._rollout_segments(self._actor_sampler(rng, actor), rng, buffer, n,
                                              source=sid)
                if into_pool and pool is not None:
                    keep = max(0, 10 * cfg.rollout_starts - segs.n)
                    pool = _cat_segments(pool.take(torch.arange(max(0, pool.n - keep), pool.n)),
                                         segs)
                    if cfg.reward_uniform > 0 and upool is not None:
                        useg = self._rollout_segments(uniform, rng, None, n, source=UNIFORM)
                        keep = max(0, 10 * cfg.rollout_starts - useg.n)
                        upool = _cat_segments(
                            upool.take(torch.arange(max(0, upool.n - keep), upool.n)), useg)
                    self._drop_unused_snapshots(pool)
            times["policy"] += time.perf_counter() - t0
            if learned and it < n_freeze and cfg.reward_updates > 0:
                t0 = time.perf_counter()
                assert pool is not None and behavior is not None
                self._refresh_demo_outcomes(tr.states, tr.actions, rng)
                losses = [self._reward_step(pool, upool, S, A, S2, episode_end, behavior, rng)
                          for _ in range(cfg.reward_updates)]
                self._set_reward_normalisation(S, A, S2)
                rec["reward_loss"] = float(np.mean(losses))
                times["reward"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            stats: list[dict[str, float]] = []
            for _ in range(cfg.policy_updates):
                ri = torch.as_tensor(real_rows[rng.integers(0, real_rows.size, size=n_real)])
                s, a, s2, dn = S[ri], A[ri], S2[ri], D[ri]
                r = self._policy_reward(s, a, s2) if learned else R[ri]
                if n_model > 0 and buffer is not None and buffer.size > 0:
                    mi = rng.integers(0, buffer.size, size=n_model)
                    ms, ma, ms2 = (torch.as_tensor(buffer.s[mi]), torch.as_tensor(buffer.a[mi]),
                                   torch.as_tensor(buffer.s2[mi]))
                    mr = self._policy_reward(ms, ma, ms2) if learned else \
                        torch.as_tensor(buffer.r[mi])
                    s, a, s2 = torch.cat([s, ms]), torch.cat([a, ma]), torch.cat([s2, ms2])
                    r, dn = torch.cat([r, mr]), torch.cat([dn, torch.as_tensor(buffer.d[mi])])
                is_real = torch.zeros(s.shape[0], dtype=torch.bool)
                is_real[:n_real] = True
                stats.append(agent.update(s, a, r, s2, dn, is_real))
            for key in stats[0] if stats else ():
                rec[key] = float(np.mean([st[key] for st in stats]))
            self.history_.append(rec)
            times["policy"] += time.perf_counter() - t0
            report("policy", it + 1, cfg.n_iterations)
        agent.eval()
        self.stage_seconds_ = times

    # ------------------------------------------------------------------ internals
    def _reward_feature_index(self) -> NDArray[np.int64]:
        names = list(self.feature_names_)
        excl: list[str]
        if self.config.reward_exclude == "auto":
            cached: tuple[str, ...] | None = getattr(self, "reward_exclude_", None)
            excl = list(cached) if cached is not None else []
            if cached is None and self.dynamics_ is not None:
                st = self.dynamics_.structure_
                excl = [names[j] for j in sorted(set(st.by_action) | set(st.copy_of))]
        else:
            excl = list(self.config.reward_exclude)
        unknown = [f for f in excl if f not in names]
        if unknown:
            raise DataValidationError(f"reward_exclude names unknown state feature(s) {unknown}; "
                                      f"known: {names}.")
        self.reward_exclude_ = tuple(excl)
        keep = [j for j, f in enumerate(names) if f not in excl]
        if not keep:
            raise DataValidationError("reward_exclude leaves the reward no state feature.")
        return np.asarray(keep, dtype=np.int64)

    def _snapshot_actor(self) -> int:
        """Store a frozen copy of the current actor; return its generator id (>= 1)."""
        sid = max(self._proposals, default=UNIFORM) + 1
        snap = copy.deepcopy(self.agent_.actor).requires_grad_(False)
        snap.eval()
        self._proposals[sid] = snap
        return sid

    def _drop_unused_snapshots(self, pool: Segments) -> None:
        """Forget the actor snapshots that generated no segment left in the pool."""
        assert pool.source is not None
        live = set(torch.unique(pool.source).tolist())
        self._proposals = {k: v for k, v in self._proposals.items() if k in live}

    def _actor_sampler(self, rng: np.random.Generator, actor: MLP | None = None
                       ) -> Callable[[NDArray[Any]], NDArray[Any]]:
        """Sample actions of ``actor`` (default: the current actor) at states ``(n, d)``."""
        net = self.agent_.actor if actor is None else actor

        def sample(states: NDArray[Any]) -> NDArray[np.int64]:
            with torch.no_grad():
                p = torch.softmax(net(torch.as_tensor(np.asarray(states, np.float32))),
                                  dim=-1).numpy()
            cdf = np.cumsum(p, axis=1)
            u = rng.random((p.shape[0], 1)) * cdf[:, -1:]
            out: NDArray[np.int64] = np.minimum((cdf < u).sum(axis=1),
                                                 p.shape[1] - 1).astype(np.int64)
            return out
        return sample

    def _rollout_segments(self, policy: Callable[[NDArray[Any]], NDArray[Any]],
                          rng: np.random.Generator, buffer: _ModelBuffer | None, n_rows: int,
                          source: int = -1) -> Segments:
        """Branched model rollouts from logged states; adds them to the buffer.

        ``source`` is the generator id stored with each segment (the policy that drew it).
        """
        dyn = self.dynamics_
        assert dyn is not None
        cfg = self.config
        starts = rng.integers(0, n_rows, size=cfg.rollout_starts)
        tr_states = self._train_states
        ro = dyn.rollout(tr_states[starts], policy, cfg.rollout_horizon, random_state=rng)
        v = ro["valid"]
        if buffer is not None:
            buffer.add(ro["states"][v], ro["actions"][v], ro["rewards"][v],
                       ro["next_states"][v], ro["terminals"][v])
        n_seg = int(ro["actions"].shape[0])
        return Segments(torch.as_tensor(ro["states"]), torch.as_tensor(ro["actions"]),
                        torch.as_tensor(ro["next_states"]),
                        torch.as_tensor(v, dtype=torch.float32),
                        torch.full((n_seg,), source, dtype=torch.int64))

    @property
    def _train_states(self) -> NDArray[np.float32]:
        return self._states_cache

    def _refresh_demo_outcomes(self, states: NDArray[np.float32], actions: NDArray[np.int64],
                               rng: np.random.Generator) -> None:
        """One-step model samples of every logged transition (for the demonstrations)."""
        self._demo_next: torch.Tensor | None = None
        if self.config.reward_demo_outcomes == "model" and self.dynamics_ is not None:
            ns = self.dynamics_.predict(states, actions, random_state=rng)[0]
            self._demo_next = torch.as_tensor(ns)

    def _background_components(self, w_demo: float, w_sources: dict[int, float],
                               behavior: MLP) -> list[tuple[float, Any]]:
        """Mixture components of the background: behaviour model, snapshots, uniform."""
        comps: list[tuple[float, Any]] = [(w_demo, behavior)]
        for g, w in sorted(w_sources.items()):
            comps.append((w, None if g == UNIFORM else self._proposals[g]))
        return comps

    def _segment_rewards(self, seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment returns ``(n_members, n)`` and per-step rewards ``(n_members, n, H)``."""
        net = self.reward_net_
        assert net is not None
        n, h, d = seg.states.shape
        r = net.member_rewards(seg.states.reshape(-1, d), seg.actions.reshape(-1),
                               seg.next_states.reshape(-1, d)).reshape(-1, n, h) * seg.valid
        return r.sum(2), r

    def _reward_step(self, pool: Segments, upool: Segments | None, S: torch.Tensor,
                     A: torch.Tensor, S2: torch.Tensor, episode_end: NDArray[np.int64],
                     behavior: MLP, rng: np.random.Generator) -> float:
        cfg = self.config
        net, opt = self.reward_net_, self._reward_opt
        assert net is not None
        starts = rng.integers(0, S.shape[0], size=cfg.reward_batch)
        h = cfg.reward_segment or cfg.rollout_horizon
        demo = expert_segments(starts, h, S, A, S2, episode_end, self._demo_next)
        n_u = int(round(cfg.reward_uniform * cfg.reward_batch)) if upool is not None else 0
        samp = pool.take(torch.as_tensor(rng.integers(0, pool.n, size=cfg.reward_batch - n_u)))
        if n_u > 0 and upool is not None:
            samp = _cat_segments(samp, upool.take(torch.as_tensor(
                rng.integers(0, upool.n, size=n_u))))
        if h < samp.actions.shape[1]:
            samp = samp.head(h)
        ret_d, r_d = self._segment_rewards(demo)
        ret_s, r_s = self._segment_rewards(samp)
        # density of the whole background: the policies that generated it, in their shares
        assert pool.source is not None
        w_demo, w_src = background_weights(demo.n, pool.source, cfg.reward_batch - n_u, n_u)
        comps = self._background_components(w_demo, w_src, behavior)
        k = self.n_actions_
        logq = torch.cat([mixture_log_density(demo, comps, k),
                          mixture_log_density(samp, comps, k)])
        loss = sum((gcl_loss(ret_d[m], torch.cat([ret_d[m], ret_s[m]]), logq)
                    for m in range(ret_d.shape[0])), torch.zeros(()))
        nvalid = demo.valid.sum() + samp.valid.sum()
        loss = loss + cfg.reward_l2 * ((r_d ** 2).sum() + (r_s ** 2).sum()) / nvalid
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return float(loss.detach()) / ret_d.shape[0]

    @property
    def _reward_opt(self) -> torch.optim.Optimizer:
        return self._reward_opt_obj

    def _set_reward_normalisation(self, S: torch.Tensor, A: torch.Tensor, S2: torch.Tensor
                                  ) -> None:
        net = self.reward_net_
        assert net is not None
        m = min(S.shape[0], 20000)
        idx = torch.linspace(0, S.shape[0] - 1, m).long()
        with torch.no_grad():
            r = net(S[idx], A[idx], S2[idx]).numpy().astype(np.float64)
        scale = float(max(r.std(), 1e-6))
        shift = float(np.quantile(r, 0.01) if self.config.reward_offset == "nonnegative"
                      else r.mean())
        self.reward_shift_, self.reward_scale_ = shift, scale

    def _policy_reward(self, s: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        net = self.reward_net_
        assert net is not None
        with torch.no_grad():
            r: torch.Tensor = (net(s, a, s2) - self.reward_shift_) / self.reward_scale_
        return r

    # ------------------------------------------------------------------ prediction
    def _check_dataset(self, dataset: Any, method: str = "action_probs"
                       ) -> NDArray[np.float32]:
        check_is_fitted(self, "agent_")
        _check_is_dataset(dataset, method)
        if tuple(dataset.state_names) != self.feature_names_:
            raise DataValidationError(
                f"The dataset's state columns {list(dataset.state_names)} differ from the ones "
                f"{list(self.feature_names_)} this OMG was fitted on.")
        if dataset.n_actions != self.n_actions_:
            raise DataValidationError(f"The dataset has {dataset.n_actions} actions; this OMG was "
                                      f"fitted with {self.n_actions_}.")
        return np.ascontiguousarray(dataset.states, dtype=np.float32)

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Actor probabilities per row, shape ``(n_steps, n_actions)``.

        The same numbers as the :class:`~equicare.policy.StatePolicy` that
        ``equicare.policy.load_policy`` reads from the saved folder.
        """
        s = self._check_dataset(dataset)
        return self.as_policy().state_probs(s)

    def q_values(self, dataset: Any) -> NDArray[np.float64]:
        """Pessimistic Q, ``min(Q1, Q2)``, per row and action, shape ``(n_steps, n_actions)``."""
        s = torch.as_tensor(self._check_dataset(dataset, "q_values"))
        with torch.no_grad():
            q: NDArray[np.float64] = torch.min(self.agent_.q1(s), self.agent_.q2(s)).numpy(
            ).astype(np.float64)
        return q

    def learned_reward(self, states: NDArray[Any], actions: NDArray[Any],
                       next_states: NDArray[Any] | None = None, *, normalised: bool = True
                       ) -> NDArray[np.float64]:
        """Learned reward of transitions, shape ``(n,)``.

        Parameters
        ----------
        states : ndarray of shape (n, d)
        actions : ndarray of shape (n,)
        next_states : ndarray of shape (n, d), optional
            Needed unless ``reward_inputs == "state_action"``.
        normalised : bool
            Return the reward the policy stage used, ``(r_psi - shift) / scale``.
        """
        check_is_fitted(self, "agent_")
        if self.reward_net_ is None:
            raise InvalidParameterError(
                "This OMG was fitted with reward='dataset'; it has no learned reward.")
        r = self.reward_net_.predict(states, actions, next_states)
        return (r - self.reward_shift_) / self.reward_scale_ if normalised else r

    def dataset_reward(self, dataset: Any) -> NDArray[np.float64]:
        """Learned reward of every row of a dataset, shape ``(n_steps,)``.

        The next state of an episode's last row is the dynamics model's mean prediction.
        """
        s = self._check_dataset(dataset, "dataset_reward")
        tr = transitions_from_dataset(dataset)
        s2 = tr.next_states.copy()
        miss = ~tr.has_next
        if miss.any() and self.dynamics_ is not None:
            s2[miss] = self.dynamics_.predict(s[miss], tr.actions[miss], deterministic=True)[0]
        return self.learned_reward(s, tr.actions, s2)

    def reward_grid(self, feature: str, values: NDArray[Any],
                    base_state: NDArray[Any] | None = None, linked: tuple[str, ...] = ()
                    ) -> pd.DataFrame:
        """Learned reward along one feature, other features at ``base_state``.

        For ``reward_inputs="next_state"`` the grid is over the next state; for
        ``"state_action"`` over the state, with one column per action; for ``"transition"`` over
        the next state with the current state at ``base_state``.

        Parameters
        ----------
        feature : str
            Feature name.
        values : ndarray of shape (m,)
        base_state : ndarray of shape (d,), optional
            Default: the feature medians of the training data, rounded to 3 significant digits.
        linked : tuple of str
            Other features set to the same grid values (e.g. ``("aptt_prev",)``).

        Returns
        -------
        pandas.DataFrame
            Columns ``feature`` and ``reward``; with action-dependent rewards also
            ``reward_a<i>`` per action (``reward`` is then their mean).
        """
        check_is_fitted(self, "agent_")
        names = list(self.feature_names_)
        for f in (feature, *linked):
            if f not in names:
                raise UnknownNameError(f"Unknown feature {f!r}; known: {names}.")
        v = np.asarray(values, dtype=np.float32)
        base = self._median_state if base_state is None else np.asarray(base_state, np.float32)
        grid = np.repeat(base[None, :], v.size, axis=0)
        for f in (feature, *linked):
            grid[:, names.index(f)] = v
        out = {feature: v.astype(np.float64)}
        if self.config.reward_inputs == "next_state":   # no action dependence
            out["reward"] = self.learned_reward(grid, np.zeros(v.size, dtype=np.int64), grid)
            return pd.DataFrame(out)
        cols = []
        for a in range(self.n_actions_):
            act = np.full(v.size, a)
            if self.config.reward_inputs == "state_action":
                r = self.learned_reward(grid, act)
            else:
                r = self.learned_reward(np.repeat(base[None, :], v.size, axis=0), act, grid)
            out[f"reward_a{a}"] = r
            cols.append(r)
        out["reward"] = np.mean(cols, axis=0)
        return pd.DataFrame(out)

    # ------------------------------------------------------------------ persistence
    def as_policy(self, source: str = "<OMG policy>") -> StatePolicy:
        """The actor as a :class:`~equicare.policy.StatePolicy` (what :meth:`save` stores)."""
        check_is_fitted(self, "agent_")
        space = getattr(self, "action_space_", None)
        if space is None:
            space = FactoredActionSpace.from_dict(
                {"action": [str(a) for a in range(self.n_actions_)]})
        return StatePolicy(network=self.agent_.actor, action_space=space,
                           state_names=self.feature_names_, source=source)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             extra_files: Mapping[str, str | bytes] | None = None) -> Path:
        """Write the model folder (Contract 2): ``config.json`` + ``model.safetensors``.

        The weights of every part go into the one ``model.safetensors``, named by part:
        ``sac.*`` (actor, critics, targets, temperature), ``reward_net.*`` (learned reward) and
        ``dynamics.*`` (ensemble). An existing non-empty folder is refused unless ``overwrite``,
        which then replaces it whole (atomically), so no part of an older model survives.

        Parameters
        ----------
        path : str or Path
        overwrite : bool
        extra_files : dict of str to str or bytes, optional
            Companion files written into the folder (e.g. ``metrics.json``).
        """
        from equicare.policy._learned import prefixed, write_model_folder

        check_is_fitted(self, "agent_")
        tensors = prefixed(self.agent_.state_dict(), "sac")
        if self.reward_net_ is not None:
            tensors.update(prefixed(self.reward_net_.state_dict(), "reward_net"))
        dyn_meta = None
        if self.dynamics_ is not None:
            dyn_meta, dyn_tensors = self.dynamics_.to_state()
            tensors.update(prefixed(dyn_tensors, "dynamics"))
        pol = self.as_policy()
        config = {
            "learner": "omg",
            "action_space": pol.action_space.to_dict(),
            "manifest_fingerprint": getattr(self, "manifest_fingerprint_", None),
            "policy": {"network": "standardized_mlp", "weights": "sac.actor",
                       "hidden": list(self.config.sac.hidden)},
            "feature_names": list(self.feature_names_),
            "learner_config": self.config.to_dict(),
            "n_actions": self.n_actions_, "n_features": self.n_features_, "gamma": self.gamma_,
            "reward_net": self.reward_net_ is not None,
            "reward_shift": self.reward_shift_, "reward_scale": self.reward_scale_,
            "reward_exclude": list(getattr(self, "reward_exclude_", ())),
            "median_state": self._median_state.tolist(),
            "dynamics": dyn_meta,
            "history": self.history_, "stage_seconds": self.stage_seconds_,
        }
        return write_model_folder(path, config, tensors, overwrite=overwrite,
                                  extra_files=extra_files)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OMG:
        """Inverse of :meth:`save` (bit-identical networks).

        Raises
        ------
        PolicyError
            Missing, malformed, corrupt or future-version files, or another learner's folder.
        """
        from equicare.policy._learned import load_state, read_model_folder, state_with_prefix

        cfg, tensors = read_model_folder(path)
        if cfg["learner"] != "omg":
            raise PolicyError(f"{path} holds a {cfg['learner']!r} model, not 'omg'.")
        try:
            config = OMGConfig.from_dict(cfg["learner_config"])
            obj = cls(config)
            obj.n_actions_ = int(cfg["n_actions"])
            obj.n_features_ = int(cfg["n_features"])
            obj.feature_names_ = tuple(cfg["feature_names"])
            obj.action_space_ = FactoredActionSpace.from_dict(cfg["action_space"])
            obj.manifest_fingerprint_ = cfg.get("manifest_fingerprint")
            obj.gamma_ = float(cfg["gamma"])
            obj.reward_shift_ = float(cfg["reward_shift"])
            obj.reward_scale_ = float(cfg["reward_scale"])
            obj._median = np.asarray(cfg["median_state"], dtype=np.float32)
            obj.reward_exclude_ = tuple(cfg.get("reward_exclude", ()))
            obj.history_ = cfg["history"]
            obj.stage_seconds_ = cfg["stage_seconds"]
            agent = DiscreteSAC(obj.n_features_, obj.n_actions_, config.sac, obj.gamma_)
            obj.dynamics_ = None
            if cfg.get("dynamics") is not None:
                obj.dynamics_ = DynamicsEnsemble.from_state(
                    cfg["dynamics"], state_with_prefix(tensors, "dynamics"))
            net = None
            if cfg["reward_net"]:
                net = RewardEnsemble(config.reward_members, n_features=obj.n_features_,
                                     n_actions=obj.n_actions_, inputs=config.reward_inputs,
                                     hidden=config.reward_hidden, bound=config.reward_bound,
                                     feature_index=obj._reward_feature_index())
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise PolicyError(f"{path}: malformed model folder ({first}).") from exc
        load_state(agent, tensors, "sac", str(path))
        agent.eval()
        obj.agent_ = agent
        if net is not None:
            load_state(net, tensors, "reward_net", str(path))
        obj.reward_net_ = net
        return obj

    @property
    def _median_state(self) -> NDArray[np.float32]:
        return self._median


def _cat_segments(a: Segments, b: Segments) -> Segments:
    src = (None if a.source is None or b.source is None
           else torch.cat([a.source, b.source]))
    return Segments(torch.cat([a.states, b.states]), torch.cat([a.actions, b.actions]),
                    torch.cat([a.next_states, b.next_states]), torch.cat([a.valid, b.valid]),
                    src)
