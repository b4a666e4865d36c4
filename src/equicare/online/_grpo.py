r"""Group-robust proximal policy optimisation (GRPO).

PPO whose policy objective mixes the average clipped loss with the loss of the worst-off group.

**Served-patient groups** (``group_signal="served"``, the default). Every sample (one decision in
one environment) belongs to the group of the patient the action served (``info["served_group"]``
of :class:`equicare.sim.hospital.HospitalVectorEnv`; any other labelling through ``group_fn``),
or to no group (-1: nobody served). With :math:`\ell_i` the per-sample clipped surrogate of
:mod:`equicare.online._ppo` and :math:`B_g` the minibatch samples of group :math:`g`:

.. math::

    L_g = \frac{1}{|B_g|}\sum_{i \in B_g} \ell_i, \qquad
    L^{\mathrm{max}} = (1 - \lambda)\,\frac{1}{|B|}\sum_{i \in B} \ell_i
                    + \lambda \max_{g:\,|B_g|>0} L_g.

The smooth variant (``mode="dro"``) replaces the max by group weights :math:`q` updated by
exponentiated gradient ascent after every minibatch (Sagawa et al., 2020, "Distributionally
Robust Neural Networks for Group Shifts", Algorithm 1):

.. math::

    q_g \leftarrow \frac{q_g\, e^{\eta L_g}}{\sum_h q_h\, e^{\eta L_h}}, \qquad
    L^{\mathrm{dro}} = (1 - \lambda)\,\bar\ell + \lambda \sum_g q_g L_g

(the normalisation runs over the groups present in the minibatch; absent groups keep their
weight). The value loss and the entropy bonus are those of PPO. With :math:`\lambda = 0` both
objectives equal PPO's exactly, so a GRPO run with ``lam=0`` gives the same weights as a PPO run
with the same seed.

A caution, measured in ``docs/online.md``: :math:`L_g` at ratio 1 is minus the mean advantage of
the decisions that served group :math:`g`. The group whose service looks least advantageous
(often the group an efficient policy already puts last) has the largest :math:`L_g`, and
up-weighting its samples pushes the policy further away from serving it.

**Group welfare** (``group_signal="welfare"``, an extension). The environment reports a reward
stream per group (``info["group_reward"]``, shape (n_envs, n_groups): minus each group's
per-capita waiting cost); the critic gets one extra head per group, GAE gives group advantages
:math:`\hat A^g`, and :math:`\ell^g_i` is the clipped surrogate under :math:`\hat A^g`. The
group loss is the group's cost in the last rollout, :math:`c_g = -\overline{r_g}`; the robust term
is the surrogate of the worst group, or a soft-max of groups with exponentiated-gradient weights:

.. math::

    L^{\mathrm{welfare}} = (1 - \lambda)\,\bar\ell + \lambda \sum_g q_g\,
    \frac{1}{|B|}\sum_{i \in B} \ell^g_i,\qquad
    q = e_{\arg\max_g c_g}\ (\texttt{max})\ \text{or}\
    q_g \propto q_g e^{\eta c_g / \bar c}\ \text{per rollout}\ (\texttt{dro}),

with :math:`\bar c` the mean group cost (so that :math:`\eta` does not depend on the reward
scale).

Here the extra critic heads share the gradient-norm clip with the actor, so ``lam=0`` is close
to, not bit-identical with, PPO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import numpy as np

from equicare.exceptions import InvalidParameterError
from equicare.online._ppo import PPO, PPOConfig
from equicare.utils import check_param

__all__ = ["GRPOConfig", "GRPO"]

#: Message when no group labels are available.
NO_GROUPS_MESSAGE = (
    "GRPO needs a group for every sample: the environment's info has no 'served_group' entry; "
    "pass group_fn=... to fit."
)
#: Message when the number of groups cannot be found.
N_GROUPS_MESSAGE = (
    "GRPO cannot tell how many groups there are: set GRPOConfig(n_groups=...) or use an "
    "environment with an 'n_groups' attribute."
)
#: Message when group rewards are missing (welfare signal).
NO_GROUP_REWARD_MESSAGE = (
    "GRPO(group_signal='welfare') needs info['group_reward'] of shape (n_envs, n_groups) from "
    "the environment."
)


@dataclass(frozen=True, kw_only=True)
class GRPOConfig(PPOConfig):
    r"""Hyperparameters of :class:`GRPO`: those of :class:`PPOConfig` plus the robust part.

    Parameters
    ----------
    lam : float
        Weight :math:`\lambda \in [0, 1]` of the robust (worst-group or DRO-weighted) term.
    mode : {'max', 'dro'}
        ``'max'``: the worst group; ``'dro'``: exponentiated-gradient group weights.
    dro_step : float
        Step size :math:`\eta` of the exponentiated-gradient update (``mode='dro'``).
    n_groups : int or None
        Number of groups (labels ``0 .. n_groups - 1``); ``None``: the environment's
        ``n_groups`` attribute.
    group_signal : {'served', 'welfare'}
        ``'served'``: group losses average the per-sample losses of the decisions that served
        each group (the issue's definition); ``'welfare'``: group losses are the groups'
        per-capita costs and the robust term optimises the worst group's own reward stream.
    """

    lam: float = 0.3
    mode: Literal["max", "dro"] = "max"
    dro_step: float = 0.1
    n_groups: int | None = None
    group_signal: Literal["served", "welfare"] = "served"

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_param(self.lam, "lam", owner, kind=(int, float), low=0, high=1)
        check_param(self.mode, "mode", owner, choices=("max", "dro"))
        check_param(self.dro_step, "dro_step", owner, kind=(int, float), low=0)
        check_param(self.n_groups, "n_groups", owner, kind=int, low=1, allow_none=True)
        check_param(self.group_signal, "group_signal", owner, choices=("served", "welfare"))


def _served_group(obs: np.ndarray, actions: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    if "served_group" not in info:
        raise InvalidParameterError(NO_GROUPS_MESSAGE)
    return np.asarray(info["served_group"], dtype=np.int64)


class GRPO(PPO):
    """Group-robust PPO (see the module docstring for the objectives).

    Parameters
    ----------
    config : GRPOConfig, optional

    Attributes
    ----------
    policy_, history_, obs_dim_, n_actions_, n_env_steps_, train_seconds_
        As for :class:`~equicare.online._ppo.PPO`; ``history_`` entries also hold
        ``group_loss`` (served: mean minibatch loss of each group, NaN if absent; welfare: the
        groups' per-capita cost in the rollout), ``group_count`` (samples that served each
        group in the rollout) and ``group_weight`` (the weights :math:`q` of the robust term).
    group_weights_ : ndarray of shape (n_groups,)
        Final weights :math:`q` (DRO weights, or the last worst group's indicator).

    Examples
    --------
    >>> from equicare.online._grpo import GRPO, GRPOConfig
    >>> from equicare.sim.hospital import HospitalVectorEnv
    >>> env = HospitalVectorEnv("urban", num_envs=4)
    >>> grpo = GRPO(GRPOConfig(lam=0.5, total_steps=1024, n_steps=64)).fit(env, random_state=0)
    >>> len(grpo.history_[-1]["group_loss"])
    3
    """

    config_class: ClassVar[type[PPOConfig]] = GRPOConfig
    algo_name: ClassVar[str] = "grpo"

    def _cfg(self) -> GRPOConfig:
        return cast(GRPOConfig, self._resolved_config())

    def _setup_groups(self, env: Any, group_fn: Any) -> None:
        cfg = self._cfg()
        n_groups = cfg.n_groups if cfg.n_groups is not None else getattr(env, "n_groups", None)
        if not isinstance(n_groups, int) or n_groups < 1:
            raise InvalidParameterError(N_GROUPS_MESSAGE)
        self._group_fn: Callable[..., np.ndarray] = group_fn if group_fn is not None \
            else _served_group
        self._n_groups = n_groups
        self._log_q = np.full(n_groups, -np.log(n_groups))
        self._q = np.exp(self._log_q)
        self._cost_sum = np.zeros(n_groups)
        self._cost_n = 0
        self._last_cost = np.full(n_groups, np.nan)
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._loss_sum = np.zeros(self._n_groups)
        self._loss_n = np.zeros(self._n_groups)
        self._count = np.zeros(self._n_groups)

    # -------------------------------------------------------------- group labels and rewards
    def _group_labels(
        self, obs: np.ndarray, actions: np.ndarray, info: dict[str, Any]
    ) -> np.ndarray:
        g = np.asarray(self._group_fn(obs, actions, info), dtype=np.int64)
        if g.shape != actions.shape or (g.size and (g.min() < -1 or g.max() >= self._n_groups)):
            raise InvalidParameterError(
                f"group labels must be ints in [-1, {self._n_groups - 1}] of shape "
                f"{actions.shape}; got shape {g.shape} with range "
                f"[{g.min() if g.size else None}, {g.max() if g.size else None}].")
        self._count += np.bincount(g[g >= 0], minlength=self._n_groups)
        return g

    def _n_aux_values(self) -> int:
        return self._n_groups if self._cfg().group_signal == "welfare" else 0

    def _aux_rewards(self, info: dict[str, Any], n_envs: int) -> np.ndarray:
        if "group_reward" not in info:
            raise InvalidParameterError(NO_GROUP_REWARD_MESSAGE)
        r = np.asarray(info["group_reward"], dtype=np.float64)
        if r.shape != (n_envs, self._n_groups):
            raise InvalidParameterError(f"{NO_GROUP_REWARD_MESSAGE} Got shape {r.shape}.")
        self._cost_sum -= r.mean(axis=0)
        self._cost_n += 1
        return r

    def _before_update(self) -> None:
        cfg = self._cfg()
        if cfg.group_signal != "welfare":
            return
        cost = self._cost_sum / max(self._cost_n, 1)
        self._last_cost = cost
        self._cost_sum[:] = 0.0
        self._cost_n = 0
        if cfg.mode == "max":
            self._q = np.zeros(self._n_groups)
            self._q[int(np.argmax(cost))] = 1.0
        else:  # exponentiated-gradient ascent on the groups' relative costs, once per rollout
            self._log_q += cfg.dro_step * cost / max(float(np.mean(np.abs(cost))), 1e-12)
            self._log_q -= np.logaddexp.reduce(self._log_q)
            self._q = np.exp(self._log_q)

    # -------------------------------------------------------------- objective
    def _policy_objective(self, per_sample: Any, groups: Any, aux: Any = None) -> Any:
        import torch

        cfg = self._cfg()
        mean = per_sample.mean()
        if cfg.group_signal == "welfare":
            q = torch.from_numpy(self._q).to(per_sample.dtype)
            robust = (aux.mean(0) * q).sum()
            return (1.0 - cfg.lam) * mean + cfg.lam * robust
        valid = groups >= 0
        g = groups[valid]
        counts = torch.bincount(g, minlength=self._n_groups)
        present = counts > 0
        if not bool(present.any()):
            robust = mean
        else:
            sums = torch.zeros(self._n_groups, dtype=per_sample.dtype).index_add(
                0, g, per_sample[valid])
            group_loss = sums[present] / counts[present].to(per_sample.dtype)
            pres = present.numpy()
            gl = group_loss.detach().numpy().astype(np.float64)
            self._loss_sum[pres] += gl
            self._loss_n[pres] += 1
            if cfg.mode == "max":
                robust = group_loss.max()
                self._q = np.zeros(self._n_groups)
                self._q[np.flatnonzero(pres)[int(np.argmax(gl))]] = 1.0
            else:
                # exponentiated-gradient ascent on the group weights (Sagawa et al., 2020)
                self._log_q[pres] += cfg.dro_step * gl
                self._log_q -= np.logaddexp.reduce(self._log_q)
                lq = self._log_q[pres]
                q = np.exp(lq - np.logaddexp.reduce(lq))
                self._q = np.exp(self._log_q)
                robust = (torch.from_numpy(q).to(per_sample.dtype) * group_loss).sum()
        return (1.0 - cfg.lam) * mean + cfg.lam * robust

    def _update_stats(self) -> dict[str, Any]:
        cfg = self._cfg()
        if cfg.group_signal == "welfare":
            loss = self._last_cost
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                loss = np.where(self._loss_n > 0,
                                self._loss_sum / np.maximum(self._loss_n, 1), np.nan)
        out: dict[str, Any] = {"group_loss": [float(x) for x in loss],
                               "group_count": self._count.tolist(),
                               "group_weight": [float(x) for x in self._q]}
        self._reset_stats()
        self.group_weights_ = self._q.copy()
        return out
