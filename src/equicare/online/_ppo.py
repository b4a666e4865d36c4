r"""Proximal policy optimisation (PPO) for discrete actions on vectorised gymnasium environments.

The update follows Schulman et al. (2017), "Proximal Policy Optimization Algorithms", with the
implementation details of Huang et al. (2022): generalised advantage estimation (GAE, Schulman et
al., 2016), several epochs of shuffled minibatch updates per rollout, per-minibatch advantage
normalisation, the clipped surrogate, a clipped value loss, an entropy bonus, global gradient-norm
clipping and a linearly annealed learning rate. Truncated episodes are bootstrapped with the value
of their final observation.

Per sample ``i`` with probability ratio :math:`r_i = \pi_\theta(a_i|s_i) / \pi_{old}(a_i|s_i)`
and normalised advantage :math:`\hat A_i`:

.. math::

    \ell_i = -\min\big(r_i \hat A_i,\ \mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon)\hat A_i\big),
    \qquad
    L = \frac{1}{n}\sum_i \ell_i + c_v L^V - c_e \bar H.

Subclasses change only how the per-sample losses :math:`\ell_i` are aggregated
(:meth:`PPO._policy_objective`), e.g. group-robust PPO (:mod:`equicare.online._grpo`).

Everything random draws from one seeded :class:`numpy.random.Generator` (environment seeds,
actions, minibatch order) and one seeded :class:`torch.Generator` (initial weights), so the same
``random_state`` gives the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from equicare.exceptions import InvalidParameterError
from equicare.policy._learned import MASKED_LOGIT
from equicare.utils import (
    PARAM_MESSAGE,
    check_is_fitted,
    check_param,
    check_random_state,
)

__all__ = ["PPOConfig", "PPO", "make_vector_env"]

_C = TypeVar("_C", bound="PPOConfig")
_P = TypeVar("_P", bound="PPO")

#: Signature of the per-step callback: ``callback(env_steps_so_far, step_info)``.
Callback = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class PPOConfig:
    r"""Hyperparameters of :class:`PPO` (defaults: CleanRL's ``ppo.py`` for classic control).

    Parameters
    ----------
    total_steps : int
        Environment steps to train for (summed over the parallel environments); rounded down to
        whole rollouts of ``n_envs * n_steps``.
    n_envs : int
        Parallel environments when ``fit`` builds the vector environment itself (ignored when
        it receives one).
    n_steps : int
        Steps per environment per rollout.
    n_epochs : int
        Passes over each rollout.
    n_minibatches : int
        Minibatches per epoch.
    learning_rate : float
        Adam step size (linearly annealed to 0 when ``anneal_lr``).
    anneal_lr : bool
    gamma : float
        Discount factor.
    gae_lambda : float
        GAE parameter :math:`\lambda`.
    clip_coef : float
        Surrogate clipping :math:`\epsilon`.
    clip_vloss : bool
        Clip the value loss around the rollout's values.
    ent_coef, vf_coef : float
        Entropy bonus and value-loss coefficients.
    max_grad_norm : float
        Global gradient-norm clip.
    norm_adv : bool
        Normalise advantages within each minibatch.
    target_kl : float or None
        Stop the epochs of an update early once the approximate KL exceeds this.
    hidden_sizes : tuple of int
        Hidden layers of actor and critic.
    activation : {'tanh', 'relu'}
    reward_scale : float
        Rewards (and any auxiliary reward streams) are multiplied by this before learning
        (returns are reported unscaled).
    torch_threads : int or None
        ``torch.set_num_threads`` during ``fit`` (restored afterwards); ``None`` leaves it.
    mask_actions : bool
        When the environment reports ``info["action_mask"]`` (bool, (n_envs, n_actions)) after
        ``reset`` and ``step``, give invalid actions probability zero (Huang & Ontañón, 2022,
        "A Closer Look at Invalid Action Masking in Policy Gradient Algorithms").
    """

    total_steps: int = 100_000
    n_envs: int = 8
    n_steps: int = 128
    n_epochs: int = 4
    n_minibatches: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    target_kl: float | None = None
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: Literal["tanh", "relu"] = "tanh"
    reward_scale: float = 1.0
    torch_threads: int | None = 1
    mask_actions: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("total_steps", "n_envs", "n_steps", "n_epochs", "n_minibatches"):
            check_param(getattr(self, name), name, owner, kind=int, low=1)
        check_param(self.learning_rate, "learning_rate", owner, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.anneal_lr, "anneal_lr", owner, kind=bool)
        check_param(self.gamma, "gamma", owner, kind=(int, float), low=0, high=1)
        check_param(self.gae_lambda, "gae_lambda", owner, kind=(int, float), low=0, high=1)
        check_param(self.clip_coef, "clip_coef", owner, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.clip_vloss, "clip_vloss", owner, kind=bool)
        for name in ("ent_coef", "vf_coef"):
            check_param(getattr(self, name), name, owner, kind=(int, float), low=0)
        check_param(self.max_grad_norm, "max_grad_norm", owner, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.norm_adv, "norm_adv", owner, kind=bool)
        check_param(self.target_kl, "target_kl", owner, kind=(int, float), low=0,
                    low_inclusive=False, allow_none=True)
        hs = self.hidden_sizes
        if not (isinstance(hs, tuple | list) and len(hs) >= 1
                and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hs)):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="hidden_sizes", owner=owner, expected="a non-empty tuple of positive ints",
                got=hs))
        object.__setattr__(self, "hidden_sizes", tuple(hs))
        check_param(self.activation, "activation", owner, choices=("tanh", "relu"))
        check_param(self.reward_scale, "reward_scale", owner, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.torch_threads, "torch_threads", owner, kind=int, low=1, allow_none=True)
        check_param(self.mask_actions, "mask_actions", owner, kind=bool)

    @property
    def batch_size(self) -> int:
        """Samples per rollout, ``n_envs * n_steps`` (for the configured ``n_envs``)."""
        return self.n_envs * self.n_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of all fields."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameterError(f"Unknown {cls.__name__} keys: {', '.join(unknown)}.")
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in data.items()}
        return cls(**kwargs)


def make_vector_env(env: Any, n_envs: int) -> Any:
    """Return a same-step-autoreset gymnasium vector environment.

    Parameters
    ----------
    env : VectorEnv, str or callable
        A vector environment (returned unchanged if its autoreset mode is same-step), a
        registered gymnasium id (``"CartPole-v1"``) or a function returning a fresh
        :class:`gymnasium.Env`.
    n_envs : int
        Copies to build for an id or a function.

    Returns
    -------
    gymnasium.vector.VectorEnv
    """
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

    if isinstance(env, VectorEnv):
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.SAME_STEP:
            raise InvalidParameterError(
                f"PPO needs a vector environment with same-step autoreset; got {mode!s}. Build it "
                "with autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP.")
        return env
    if isinstance(env, str):
        return gym.make_vec(env, num_envs=n_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    if callable(env):
        return SyncVectorEnv([env] * n_envs, autoreset_mode=AutoresetMode.SAME_STEP)
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="env", owner="PPO.fit",
        expected="a gymnasium VectorEnv, an environment id or a function returning an Env",
        got=env))


def _final_obs(info: dict[str, Any], done: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Observations at which finished episodes ended, (n_done, obs_dim)."""
    fo = info.get("final_obs")
    if fo is None:
        raise InvalidParameterError(
            "The vector environment did not report info['final_obs'] for finished "
                         "episodes (same-step autoreset is required).")
    if isinstance(fo, np.ndarray) and fo.dtype != object:
        return np.asarray(fo[done], dtype=np.float32)
    return np.stack([np.asarray(fo[i], dtype=np.float32) for i in np.flatnonzero(done)])


class PPO:
    """Proximal policy optimisation for discrete actions.

    Parameters
    ----------
    config : PPOConfig, optional
        Hyperparameters (default ``PPOConfig()``).

    Attributes
    ----------
    policy_ : DiscreteActorCritic
        Trained actor-critic network.
    history_ : list of dict
        One entry per rollout: ``env_steps``, ``episodes`` (finished in the rollout),
        ``mean_return`` (their mean undiscounted raw return, NaN if none), ``policy_loss``,
        ``value_loss``, ``entropy``, ``approx_kl``, ``clip_frac``, ``sps`` (environment steps per
        second so far) and learner-specific entries.
    obs_dim_, n_actions_ : int
    n_env_steps_ : int
        Environment steps taken by ``fit``.
    train_seconds_ : float

    Examples
    --------
    >>> from equicare.online._ppo import PPO, PPOConfig
    >>> from equicare.sim.hospital import HospitalVectorEnv
    >>> env = HospitalVectorEnv("urban", num_envs=4)
    >>> ppo = PPO(PPOConfig(total_steps=1024, n_steps=64)).fit(env, random_state=0)
    >>> ppo.predict(env.reset(seed=1)[0]).shape
    (4,)
    """

    config_class: ClassVar[type[PPOConfig]] = PPOConfig
    algo_name: ClassVar[str] = "ppo"

    def __init__(self, config: PPOConfig | None = None) -> None:
        self.config = config

    # ------------------------------------------------------------------ hooks for subclasses
    def _resolved_config(self) -> PPOConfig:
        cfg = self.config if self.config is not None else self.config_class()
        if not isinstance(cfg, self.config_class):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="config", owner=type(self).__name__,
                expected=f"a {self.config_class.__name__}", got=cfg))
        return cfg

    def _setup_groups(self, env: Any, group_fn: Any) -> None:
        """Prepare group labelling (PPO: none)."""

    def _n_aux_values(self) -> int:
        """Auxiliary reward streams with their own critic head (PPO: none)."""
        return 0

    def _aux_rewards(self, info: dict[str, Any], n_envs: int) -> np.ndarray | None:
        """Auxiliary rewards of one vector step, shape (n_envs, n_aux) (PPO: none)."""
        return None

    def _before_update(self) -> None:
        """Prepare for the update epochs after a rollout (PPO: nothing to do)."""

    def _group_labels(
        self, obs: np.ndarray, actions: np.ndarray, info: dict[str, Any]
    ) -> np.ndarray | None:
        """Group of each sample, shape (n_envs,) with -1 for none (PPO: not needed)."""
        return None

    def _policy_objective(self, per_sample: Any, groups: Any, aux: Any = None) -> Any:
        """Aggregate per-sample clipped losses into the policy loss.

        ``per_sample`` (batch,) uses the reward's advantages; ``groups`` (batch,) holds sample
        groups (-1: none); ``aux`` (batch, n_aux) the clipped losses under the advantages of
        the auxiliary reward streams (or None).
        """
        return per_sample.mean()

    def _update_stats(self) -> dict[str, Any]:
        """Learner-specific entries for ``history_`` after each update."""
        return {}

    # ------------------------------------------------------------------ training
    def fit(
        self: _P,
        env: Any,
        *,
        random_state: int | np.random.Generator | None = None,
        callback: Callback | None = None,
        group_fn: Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray] | None = None,
    ) -> _P:
        """Train on ``env`` for ``config.total_steps`` environment steps.

        Parameters
        ----------
        env : gymnasium VectorEnv, str or callable
            See :func:`make_vector_env`. Observations must be flat ``Box``es, actions
            ``Discrete``.
        random_state : int, Generator or None
            Seeds the environments, the initial weights, the actions and the minibatch order.
        callback : callable, optional
            ``callback(env_steps, info)`` after every vector step (``info`` as returned by the
            environment), e.g. to collect per-episode metrics.
        group_fn : callable, optional
            Only used by group-robust learners: ``group_fn(obs, actions, info) -> groups`` with
            ``obs`` of shape (n_envs, obs_dim) (before the step), ``actions`` (n_envs,) and the
            step's ``info``; returns int groups (n_envs,), -1 for none.

        Returns
        -------
        self
        """
        import torch
        from gymnasium import spaces

        from equicare.models._ppo_nets import DiscreteActorCritic

        cfg = self._resolved_config()
        venv = make_vector_env(env, cfg.n_envs)
        obs_space, act_space = venv.single_observation_space, venv.single_action_space
        if not isinstance(act_space, spaces.Discrete):
            raise InvalidParameterError(f"PPO needs a Discrete action space; got {act_space}.")
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise InvalidParameterError(f"PPO needs a flat Box observation space; got {obs_space}.")
        rng = check_random_state(random_state)
        n_envs, T = int(venv.num_envs), cfg.n_steps
        obs_dim, n_actions = int(obs_space.shape[0]), int(act_space.n)
        self._setup_groups(venv, group_fn)

        old_threads = torch.get_num_threads()
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        try:
            gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
            net = DiscreteActorCritic(obs_dim, n_actions, cfg.hidden_sizes, cfg.activation, gen,
                                      n_values=1 + self._n_aux_values())
            opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=1e-5)
            self.policy_ = net
            self.obs_dim_, self.n_actions_ = obs_dim, n_actions
            self.environment_ = _environment_name(venv)
            self.history_: list[dict[str, Any]] = []
            self._train(venv, net, opt, rng, n_envs, T, callback)
        finally:
            torch.set_num_threads(old_threads)
        return self

    def _train(self, venv: Any, net: Any, opt: Any, rng: np.random.Generator, n_envs: int,
               T: int, callback: Callback | None) -> None:
        import torch

        cfg = self._resolved_config()
        batch = n_envs * T
        n_updates = max(cfg.total_steps // batch, 1)
        mb_size = max(batch // cfg.n_minibatches, 1)
        obs_buf = np.zeros((T, n_envs, self.obs_dim_), dtype=np.float32)
        act_buf = np.zeros((T, n_envs), dtype=np.int64)
        logp_buf = np.zeros((T, n_envs), dtype=np.float32)
        H = 1 + self._n_aux_values()  # critic heads: the reward, then auxiliary streams
        val_buf = np.zeros((T, n_envs, H), dtype=np.float32)
        rew_buf = np.zeros((T, n_envs, H), dtype=np.float32)
        done_buf = np.zeros((T, n_envs), dtype=np.float32)
        grp_buf = np.full((T, n_envs), -1, dtype=np.int64)
        mask_buf = np.ones((T, n_envs, self.n_actions_), dtype=bool)

        obs, info = venv.reset(seed=int(rng.integers(2**31 - 1)))
        obs = np.asarray(obs, dtype=np.float32)
        mask = self._mask(info, n_envs)
        ep_ret = np.zeros(n_envs)
        steps = 0
        t_start = time.perf_counter()
        for update in range(n_updates):
            if cfg.anneal_lr:
                for pg in opt.param_groups:
                    pg["lr"] = cfg.learning_rate * (1.0 - update / n_updates)
            finished: list[float] = []
            for t in range(T):
                with torch.no_grad():
                    logits, value = net(torch.from_numpy(obs))
                    if mask is not None:
                        logits = logits.masked_fill(~torch.from_numpy(mask), _MASKED)
                        mask_buf[t] = mask
                    logp_all = torch.log_softmax(logits, dim=-1).numpy()
                action = _sample(np.exp(logp_all), rng)
                next_obs, reward, term, trunc, info = venv.step(action)
                next_obs = np.asarray(next_obs, dtype=np.float32)
                reward = np.asarray(reward, dtype=np.float64)
                term = np.asarray(term, dtype=bool)
                trunc = np.asarray(trunc, dtype=bool)
                steps += n_envs
                groups = self._group_labels(obs, action, info)
                if groups is not None:
                    grp_buf[t] = groups
                r = np.empty((n_envs, H))
                r[:, 0] = reward * cfg.reward_scale
                if H > 1:
                    aux_r = self._aux_rewards(info, n_envs)
                    if aux_r is not None:
                        r[:, 1:] = aux_r * cfg.reward_scale
                boot = trunc & ~term
                if boot.any():  # bootstrap truncated episodes from their final observation
                    fo = _final_obs(info, term | trunc, next_obs)
                    idx_done = np.flatnonzero(term | trunc)
                    with torch.no_grad():
                        v_final = net.values(torch.from_numpy(fo)).numpy()
                    sel = boot[idx_done]
                    r[idx_done[sel]] += cfg.gamma * v_final[sel]
                obs_buf[t], act_buf[t], val_buf[t], rew_buf[t] = obs, action, value.numpy(), r
                logp_buf[t] = logp_all[np.arange(n_envs), action]
                done = term | trunc
                done_buf[t] = done
                ep_ret += reward
                if done.any():
                    finished.extend(ep_ret[done].tolist())
                    ep_ret[done] = 0.0
                if callback is not None:
                    callback(steps, info)
                obs = next_obs
                mask = self._mask(info, n_envs)
            with torch.no_grad():
                next_value = net.values(torch.from_numpy(obs)).numpy()
            adv, ret = _gae(rew_buf, val_buf, done_buf, next_value, cfg.gamma, cfg.gae_lambda)
            self._before_update()
            stats = self._update(net, opt, rng, obs_buf.reshape(batch, -1), act_buf.ravel(),
                                 logp_buf.ravel(), adv.reshape(batch, H), ret.reshape(batch, H),
                                 val_buf.reshape(batch, H),
                                 grp_buf.ravel(), mask_buf.reshape(batch, -1), mb_size)
            elapsed = time.perf_counter() - t_start
            self.history_.append({
                "env_steps": steps, "episodes": len(finished),
                "mean_return": float(np.mean(finished)) if finished else math.nan,
                **stats, "sps": steps / max(elapsed, 1e-9), **self._update_stats()})
        self.n_env_steps_ = steps
        self.train_seconds_ = time.perf_counter() - t_start

    def _update(self, net: Any, opt: Any, rng: np.random.Generator, b_obs: np.ndarray,
                b_act: np.ndarray, b_logp: np.ndarray, b_adv: np.ndarray, b_ret: np.ndarray,
                b_val: np.ndarray, b_grp: np.ndarray, b_mask: np.ndarray,
                mb_size: int) -> dict[str, float]:
        import torch

        cfg = self._resolved_config()
        obs_t, act_t = torch.from_numpy(b_obs), torch.from_numpy(b_act)
        logp_t, adv_t = torch.from_numpy(b_logp), torch.from_numpy(b_adv)
        ret_t, val_t, grp_t = torch.from_numpy(b_ret), torch.from_numpy(b_val), \
            torch.from_numpy(b_grp)
        invalid_t = torch.from_numpy(~b_mask)
        any_invalid = bool(invalid_t.any())
        n = b_obs.shape[0]
        pg_l, v_l, ent_l, kl_l, cf_l = [], [], [], [], []
        for _epoch in range(cfg.n_epochs):
            perm = torch.from_numpy(rng.permutation(n))
            approx_kl = 0.0
            for start in range(0, n, mb_size):
                mb = perm[start:start + mb_size]
                logits, new_v = net(obs_t[mb])
                if any_invalid:
                    logits = logits.masked_fill(invalid_t[mb], _MASKED)
                logp_all = torch.log_softmax(logits, dim=-1)
                new_logp = logp_all.gather(1, act_t[mb, None]).squeeze(1)
                entropy = -(logp_all.exp() * logp_all).sum(-1)
                log_ratio = new_logp - logp_t[mb]
                ratio = log_ratio.exp()
                with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
                    approx_kl = float(((ratio - 1) - log_ratio).mean())
                    cf_l.append(float(((ratio - 1.0).abs() > cfg.clip_coef).float().mean()))
                mb_adv = adv_t[mb]  # (mb, heads): the reward's, then auxiliary streams'
                if cfg.norm_adv and mb_adv.shape[0] > 1:
                    mb_adv = (mb_adv - mb_adv.mean(0)) / (mb_adv.std(0) + 1e-8)
                # clipped surrogate, one loss per sample (Schulman et al., 2017, eq. 7)
                clipped = torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                per_sample = torch.max(-mb_adv[:, 0] * ratio, -mb_adv[:, 0] * clipped)
                aux = None
                if mb_adv.shape[1] > 1:
                    aux = torch.max(-mb_adv[:, 1:] * ratio[:, None],
                                    -mb_adv[:, 1:] * clipped[:, None])
                pg_loss = self._policy_objective(per_sample, grp_t[mb], aux)
                # value loss, clipped around the rollout's values; auxiliary heads count as one
                if cfg.clip_vloss:
                    v_clipped = val_t[mb] + torch.clamp(new_v - val_t[mb], -cfg.clip_coef,
                                                        cfg.clip_coef)
                    v_head = 0.5 * torch.max((new_v - ret_t[mb]) ** 2,
                                             (v_clipped - ret_t[mb]) ** 2).mean(0)
                else:
                    v_head = 0.5 * ((new_v - ret_t[mb]) ** 2).mean(0)
                v_loss = v_head[0] + v_head[1:].mean() if v_head.shape[0] > 1 else v_head[0]
                ent = entropy.mean()
                loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                opt.step()
                pg_l.append(float(pg_loss.detach()))
                v_l.append(float(v_loss.detach()))
                ent_l.append(float(ent.detach()))
                kl_l.append(approx_kl)
            if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                break
        return {"policy_loss": float(np.mean(pg_l)), "value_loss": float(np.mean(v_l)),
                "entropy": float(np.mean(ent_l)), "approx_kl": float(np.mean(kl_l)),
                "clip_frac": float(np.mean(cf_l))}

    def _mask(self, info: dict[str, Any], n_envs: int) -> np.ndarray | None:
        if not self._resolved_config().mask_actions or "action_mask" not in info:
            return None
        m = np.asarray(info["action_mask"], dtype=bool)
        if m.shape != (n_envs, self.n_actions_):
            raise InvalidParameterError(f"info['action_mask'] must have shape ({n_envs}, "
                             f"{self.n_actions_}); got {m.shape}.")
        m = m.copy()
        m[~m.any(axis=1)] = True  # no valid action reported: leave the row unmasked
        return m

    # ------------------------------------------------------------------ using the policy
    def action_probs(self, obs: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        """Return the trained policy's action probabilities.

        Parameters
        ----------
        obs : array-like of shape (n, obs_dim) or (obs_dim,)
        action_mask : bool array of shape (n, n_actions) or (n_actions,), optional
            Valid actions (e.g. ``info["action_mask"]``); invalid ones get probability 0.

        Returns
        -------
        ndarray of shape (n, n_actions) (or (n_actions,) for one observation)
        """
        check_is_fitted(self, "policy_")
        x = np.asarray(obs, dtype=np.float32)
        single = x.ndim == 1
        x2 = x[None, :] if single else x
        if x2.ndim != 2 or x2.shape[1] != self.obs_dim_:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="obs", owner=type(self).__name__,
                expected=f"an array of shape (n, {self.obs_dim_})", got=x.shape))
        p = np.asarray(self.as_policy().observation_probs(x2, action_mask))
        return np.asarray(p[0]) if single else p

    def predict(
        self,
        obs: np.ndarray,
        *,
        action_mask: np.ndarray | None = None,
        deterministic: bool = True,
        random_state: int | np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return actions for ``obs`` (n, obs_dim): the most probable, or sampled.

        See :meth:`action_probs` for ``action_mask``.

        Returns
        -------
        ndarray of int64, shape (n,) (a 0-d array for one observation)
        """
        p = self.action_probs(obs, action_mask)
        p2 = p[None, :] if p.ndim == 1 else p
        if deterministic:
            a = np.argmax(p2, axis=1).astype(np.int64)
        else:
            a = _sample(p2, check_random_state(random_state))
        return np.asarray(a[0]) if p.ndim == 1 else a

    # ------------------------------------------------------------------ persistence
    def as_policy(self, source: str = "<simulator policy>") -> Any:
        """The trained policy as a :class:`~equicare.policy.SimulatorPolicy`."""
        from equicare.policy._learned import SimulatorPolicy
        from equicare.spaces import FactoredActionSpace

        check_is_fitted(self, "policy_")
        space = FactoredActionSpace.from_dict({"action": [str(a) for a in
                                                          range(self.n_actions_)]})
        return SimulatorPolicy(network=self.policy_, learner=self.algo_name,
                               obs_dim=self.obs_dim_, action_space=space,
                               environment=getattr(self, "environment_", "a simulator"),
                               source=source)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model folder (Contract 2): ``config.json`` + ``model.safetensors``.

        Tensors are named ``actor_critic.<name>``. An existing non-empty folder is refused
        unless ``overwrite``, which then replaces it whole (atomically).
        """
        from equicare.policy._learned import prefixed, write_model_folder

        check_is_fitted(self, "policy_")
        cfg = self._resolved_config()
        net = self.policy_
        config = {
            "learner": self.algo_name,
            "action_space": {"action": [str(a) for a in range(self.n_actions_)]},
            "manifest_fingerprint": None,  # trained in a simulator, not on a panel
            "policy": {"network": "discrete_actor_critic", "weights": "actor_critic",
                       "obs_dim": self.obs_dim_, "hidden": list(cfg.hidden_sizes),
                       "activation": cfg.activation, "n_values": int(net.n_values),
                       "environment": getattr(self, "environment_", "a simulator")},
            "learner_config": cfg.to_dict(),
            "obs_dim": self.obs_dim_,
            "n_actions": self.n_actions_,
            "n_env_steps": int(getattr(self, "n_env_steps_", 0)),
        }
        tensors = prefixed(net.state_dict(), "actor_critic")
        return write_model_folder(path, config, tensors, overwrite=overwrite)

    @classmethod
    def load(cls: type[_P], path: str | Path) -> _P:
        """Rebuild a learner saved with :meth:`save` (no training history).

        Raises
        ------
        PolicyError
            Missing, malformed or corrupt files, or a folder of another learner.
        """
        from equicare.exceptions import PolicyError
        from equicare.policy._learned import read_model_folder, simulator_policy

        cfg, tensors = read_model_folder(path)
        if cfg["learner"] != cls.algo_name:
            raise PolicyError(f"{path} holds a {cfg['learner']!r} model, not "
                              f"{cls.algo_name!r}.")
        pol = simulator_policy(cfg, tensors, str(path))
        try:
            config = cls.config_class.from_dict(cfg["learner_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"{path}: malformed config.json ({exc}).") from exc
        obj = cls(config)
        obj.policy_ = pol.network
        obj.obs_dim_, obj.n_actions_ = pol.obs_dim, pol.n_actions
        obj.environment_ = pol.environment
        return obj


_MASKED = MASKED_LOGIT  # logit of an invalid action (finite: 0 * logit stays 0 in the entropy)


def _environment_name(venv: Any) -> str:
    """Name of the environment a policy was trained in (for messages and model folders)."""
    spec = getattr(venv, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(venv).__name__


def _sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``probs`` (n, k) by inverse CDF."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    out: np.ndarray = np.minimum((cdf < u[:, None]).sum(axis=1), probs.shape[1] - 1)
    return out.astype(np.int64)


def _gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, next_value: np.ndarray,
         gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al., 2016, eq. 16).

    ``dones[t]`` marks that the episode ended at step ``t`` (truncation already bootstrapped in
    the reward), so no value flows from ``t + 1`` back to ``t``. Arrays are (T, n_envs) or,
    for several reward streams, (T, n_envs, n_streams) (``dones`` stays (T, n_envs)).
    """
    if rewards.ndim == 3:
        dones = dones[:, :, None]
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    last = np.zeros(rewards.shape[1:], dtype=np.float32)
    for t in reversed(range(T)):  # recursion over time only; vectorised over environments
        nv = next_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * nv * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values
