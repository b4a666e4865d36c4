r"""Advantage-weighted regression (Peng et al., 2019; with a Q critic as in AWAC/CRR).

Critic (``critic="q"``, fitted-Q on the shaped reward with a target network ``Q'``):

.. math::

    y = r + \gamma (1 - d) \, V'(s'), \qquad
    V'(s') = \sum_{a'} \pi_\theta(a' \mid s') Q'(s', a') \;\; (\text{or } \max_{a'} Q'(s', a')),

    A(s, a) = Q(s, a) - \sum_{a'} \pi_\theta(a' \mid s) Q(s, a').

Critic ``"v"`` (TD(0) on the behaviour data): ``y = r + gamma (1 - d) V'(s')`` and
``A = y - V(s)``. Actor (weighted maximum likelihood of the logged actions):

.. math::

    \min_\theta -\frac{1}{n} \sum_i w_i \log \pi_\theta(a_i \mid s_i), \qquad
    w_i = \min\big(\exp(A_i / (\beta \sigma_A)),\; w_{\max}\big),

with ``sigma_A`` a running standard deviation of the advantages when ``normalize_advantage``
(else 1). Actions are restricted to the policy's support (observed combinations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from equicare.learn._base import LearnerConfig, OfflineLearner
from equicare.learn._bc import nll_rows
from equicare.learn._data import TrainData
from equicare.models._inputs import batched_forward
from equicare.models._networks import Network, build_network
from equicare.utils import check_param

__all__ = ["AWR", "AWRConfig"]


@dataclass(frozen=True, kw_only=True)
class AWRConfig(LearnerConfig):
    """Settings of :class:`AWR` (plus every field of :class:`LearnerConfig`).

    Parameters
    ----------
    head : {"joint", "factored", "autoregressive"}
        Policy head (see :class:`BCConfig`).
    beta : float
        Temperature of the advantage weights (> 0; smaller = greedier).
    max_weight : float
        Clip of the weights ``exp(A / beta)`` (> 0).
    critic : {"q", "v"}
        Action-value critic fitted by fitted-Q, or state-value critic fitted by TD(0).
    q_target : {"policy", "max"}
        Bootstrap value of the Q critic: expectation under the current policy, or the maximum
        over the support.
    normalize_advantage : bool
        Divide advantages by their running standard deviation (``beta`` then has no units).
    target_update_interval : int
        Steps between copies of the critic into its target network.
    critic_groups : bool or None
        The critic also reads the one-hot group attribute (``group_attr``) of each row; the
        policy never does. Advantages then reflect group-specific responses to actions, which is
        what the group-robust weights act on. Needs group labels (also in :meth:`scores` of the
        critic), never at deployment. ``None`` (default): on exactly when ``group_robust > 0``
        (without it, AWR's group weights follow the weighted likelihood, which on the
        hidden-group test MDP up-weights the better-off group and gains nothing).
    """

    head: Literal["joint", "factored", "autoregressive"] = "joint"
    beta: float = 0.5
    max_weight: float = 20.0
    critic: Literal["q", "v"] = "q"
    q_target: Literal["policy", "max"] = "policy"
    normalize_advantage: bool = True
    target_update_interval: int = 100
    critic_groups: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        check_param(self.head, "head", o, choices=("joint", "factored", "autoregressive"))
        check_param(self.beta, "beta", o, kind=(int, float), low=0, low_inclusive=False)
        check_param(self.max_weight, "max_weight", o, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.critic, "critic", o, choices=("q", "v"))
        check_param(self.q_target, "q_target", o, choices=("policy", "max"))
        check_param(self.normalize_advantage, "normalize_advantage", o, kind=bool)
        check_param(self.target_update_interval, "target_update_interval", o, kind=int, low=1,
                    expected="an int >= 1")
        check_param(self.critic_groups, "critic_groups", o, kind=bool, allow_none=True,
                    expected="a bool or None (on when group_robust > 0)")


class AWR(OfflineLearner):
    """Advantage-weighted regression (see module docstring).

    Parameters
    ----------
    config : AWRConfig, optional
    **overrides
        Config fields, e.g. ``AWR(beta=0.3, encoder="lstm", window=4)``.
    """

    algo = "awr"
    config_class = AWRConfig
    config: AWRConfig
    critic_nets = ("critic", "critic_target")

    def _critic_groups(self) -> bool:
        cfg = self.config
        return cfg.group_robust > 0 if cfg.critic_groups is None else bool(cfg.critic_groups)

    def _networks(self, base: dict[str, Any], critic_base: dict[str, Any]
                  ) -> dict[str, Network]:
        cfg = self.config
        head = "joint_q" if cfg.critic == "q" else "value"
        actor = build_network(self._spec(base, head=cfg.head), seed=cfg.seed)
        critic = build_network(self._spec(critic_base, head=head), seed=cfg.seed + 1)
        target = build_network(self._spec(critic_base, head=head), seed=cfg.seed + 1)
        self._adv_scale: float | None = None
        return {"policy": actor, "critic": critic, "critic_target": target}

    # ------------------------------------------------------------------ pieces of the update
    def _critic_step(self, data: TrainData, rows: Tensor, x: Tensor, lengths: Tensor | None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """Critic loss, ``Q(s, .)`` or ``V(s)`` and the one-step target ``y``."""
        cfg = self.config
        critic, target = self.nets_["critic"], self.nets_["critic_target"]
        actor = self.nets_["policy"]
        nxt = data.next_row[rows]
        xn, ln = data.inputs.take(nxt)
        r, done, ok = data.reward[rows], data.done[rows], data.td_ok[rows].float()
        if data.critic_inputs is data.inputs:
            xc, lc, xcn, lcn = x, lengths, xn, ln
        else:
            xc, lc = data.critic_inputs.take(rows)
            xcn, lcn = data.critic_inputs.take(nxt)
        out = critic(xc, lc)
        with torch.no_grad():
            out_next = target(xcn, lcn)
            if cfg.critic == "v":
                v_next = out_next.squeeze(1)
            elif cfg.q_target == "max":
                v_next = out_next.max(dim=1).values
            else:
                v_next = (torch.softmax(actor(xn, ln), dim=1) * out_next).sum(dim=1)
            td_target = r + data.gamma * (1.0 - done) * v_next
        pred = (out.gather(1, data.action_pos[rows][:, None]).squeeze(1) if cfg.critic == "q"
                else out.squeeze(1))
        critic_loss = ((pred - td_target) ** 2 * ok).sum() / ok.sum().clamp(min=1.0)
        return critic_loss, out, td_target

    def _advantage(self, data: TrainData, rows: Tensor, critic_out: Tensor, td_target: Tensor,
                   log_pi: Tensor) -> Tensor:
        """Advantage of the logged actions (no gradient)."""
        with torch.no_grad():
            if self.config.critic == "q":
                q = critic_out.detach()
                q_sa = q.gather(1, data.action_pos[rows][:, None]).squeeze(1)
                return q_sa - (log_pi.detach().exp() * q).sum(dim=1)
            ok = data.td_ok[rows]
            return torch.where(ok, td_target - critic_out.detach().squeeze(1), 0.0)

    def _value_parts(self, data: TrainData, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Critic's values at ``rows`` for the group-robust signal (no gradient).

        A state-value critic's ``V(s)`` (the behaviour's), else ``V^pi(s)`` and
        ``Q(s, a_logged)``.
        """
        out = batched_forward(self.nets_["critic"], data.critic_inputs, rows=rows)
        if self.config.critic == "v":
            return out.squeeze(1), None
        logits = batched_forward(self.nets_["policy"], data.inputs, rows=rows)
        v = (torch.softmax(logits, dim=1) * out).sum(dim=1)
        pos = data.action_pos[rows]
        q = out.gather(1, pos.clamp(min=0)[:, None]).squeeze(1)
        return v, torch.where(pos >= 0, q, v)

    def _weights(self, adv: Tensor, update_scale: bool) -> Tensor:
        cfg = self.config
        scale = 1.0
        if cfg.normalize_advantage:
            if update_scale:
                sd = float(adv.std()) if adv.numel() > 1 else 0.0
                sd = sd if sd > 1e-8 else 1.0
                old = self._adv_scale
                self._adv_scale = sd if old is None else 0.99 * old + 0.01 * sd
            scale = self._adv_scale or 1.0
        return torch.exp(adv / (cfg.beta * scale)).clamp(max=cfg.max_weight)

    # ------------------------------------------------------------------ update
    def _update(self, data: TrainData, rows: Tensor, step: int) -> dict[str, Tensor]:
        x, lengths = data.inputs.take(rows)
        critic_loss, critic_out, td_target = self._critic_step(data, rows, x, lengths)
        opt_c = self._optims["critic"]
        opt_c.zero_grad(set_to_none=True)
        critic_loss.backward()  # type: ignore[no-untyped-call]
        opt_c.step()
        if (step + 1) % self.config.target_update_interval == 0:
            self._hard_update(self.nets_["critic_target"], self.nets_["critic"])
        # actor: advantage-weighted likelihood of the logged actions
        log_pi, nll = nll_rows(self.nets_["policy"](x, lengths), data.action_pos[rows])
        adv = self._advantage(data, rows, critic_out, td_target, log_pi)
        w = self._weights(adv, update_scale=True)
        actor_loss = self._policy_objective(w * nll, log_pi, data.group[rows])
        opt_a = self._optims["policy"]
        opt_a.zero_grad(set_to_none=True)
        actor_loss.backward()  # type: ignore[no-untyped-call]
        opt_a.step()
        return {"actor": actor_loss.detach(), "critic": critic_loss.detach(),
                "weight": w.mean()}

    def _valid_loss(self, data: TrainData) -> float:
        rows = data.rows
        scores = batched_forward(self.nets_["policy"], data.inputs, rows=rows)
        log_pi, nll = nll_rows(scores, data.action_pos[rows])
        with torch.no_grad():
            critic_out = batched_forward(self.nets_["critic"], data.critic_inputs, rows=rows)
            td_target = torch.zeros(rows.shape[0])
            if self.config.critic == "v":
                nxt = batched_forward(self.nets_["critic_target"], data.critic_inputs,
                                      rows=data.next_row[rows]).squeeze(1)
                td_target = data.reward[rows] + data.gamma * (1.0 - data.done[rows]) * nxt
            adv = self._advantage(data, rows, critic_out, td_target, log_pi)
            w = self._weights(adv, update_scale=False)
        return float((w * nll).mean())

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {"adv_scale": self._adv_scale}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        v = state.get("adv_scale")
        self._adv_scale = None if v is None else float(v)
