r"""Discrete conservative Q-learning (Kumar et al., 2020, CQL(H)) over the observed support.

.. math::

    y = r + \gamma (1 - d) \max_{a' \in \mathcal{A}_{obs}} Q'(s', a'),

    L(\theta) = \underbrace{\ell(Q_\theta(s, a) - y)}_{\text{TD}}
      + \alpha \Big(\log \sum_{a' \in \mathcal{A}_{obs}} e^{Q_\theta(s, a')}
      - Q_\theta(s, a)\Big),

with ``A_obs`` the observed action combinations (the support) and ``Q'`` a target network copied
every ``target_update_interval`` steps and ``ell`` the squared error (default) or the Huber
loss. (The Huber loss estimates a robust location, not the mean, of the bootstrap target: with
stochastic termination or skewed rewards its fixed point is biased, so it is opt-in.)
``factored_q=True`` uses additive utilities ``Q(s, a) = sum_j u_j(s, a_j)`` over the action
components. The policy is
``softmax(Q / temperature)`` over the support, or greedy. The parity penalty acts on the softmax
policy, so it requires (and deploys) ``policy="softmax"``; greedy with ``fair_lambda > 0`` is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from equicare.exceptions import InvalidParameterError
from equicare.learn._base import LearnerConfig, OfflineLearner
from equicare.learn._data import TrainData
from equicare.models._inputs import batched_forward
from equicare.models._networks import Network, build_network
from equicare.utils import check_param

__all__ = ["CQL", "CQLConfig", "MSG_GREEDY_FAIR", "MSG_REWARD_SCALE", "REWARD_SCALE_RATIO"]

#: The parity penalty acts on softmax(Q / temperature); a greedy policy deploys argmax Q instead.
MSG_GREEDY_FAIR = ("The 'policy' parameter of CQLConfig must be 'softmax' when fair_lambda > 0. "
                   "Got 'greedy' instead: the parity penalty constrains softmax(Q / temperature), "
                   "not the greedy policy that would be deployed. Use policy='softmax' (tune "
                   "temperature for a sharper policy) or fair_lambda=0.")


@dataclass(frozen=True, kw_only=True)
class CQLConfig(LearnerConfig):
    """Settings of :class:`CQL` (plus every field of :class:`LearnerConfig`).

    Parameters
    ----------
    alpha : float
        Weight of the conservative (logsumexp) penalty (>= 0; 0 gives fitted-Q / DQN).
    factored_q : bool
        Sum per-component utilities instead of one Q per action combination.
    policy : {"softmax", "greedy"}
        Policy read from Q. With a parity penalty (``fair_lambda > 0``) only ``"softmax"`` is
        allowed: the penalty constrains ``softmax(Q / temperature)``, so that is the policy that
        must be deployed (a greedy policy would escape the constraint).
    temperature : float
        Softmax temperature (> 0), in reward units; also used by the fairness terms.
    target_update_interval : int
        Steps between copies of Q into the target network.
    td_loss : {"mse", "huber"}
        Loss of the temporal-difference error.
    """

    alpha: float = 1.0
    factored_q: bool = False
    policy: Literal["softmax", "greedy"] = "softmax"
    temperature: float = 0.1
    target_update_interval: int = 100
    td_loss: Literal["mse", "huber"] = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        check_param(self.alpha, "alpha", o, kind=(int, float), low=0)
        check_param(self.factored_q, "factored_q", o, kind=bool)
        check_param(self.policy, "policy", o, choices=("softmax", "greedy"))
        check_param(self.temperature, "temperature", o, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.target_update_interval, "target_update_interval", o, kind=int, low=1,
                    expected="an int >= 1")
        check_param(self.td_loss, "td_loss", o, choices=("mse", "huber"))
        if self.policy == "greedy" and self.fair_lambda > 0:
            raise InvalidParameterError(MSG_GREEDY_FAIR)


#: Rewards' mean absolute deviation, in softmax temperatures, above which CQL warns that its
#: reward-unit settings (``temperature``, ``alpha``) do not suit the rewards' scale.
REWARD_SCALE_RATIO = 100.0
#: The warning (tests match it).
MSG_REWARD_SCALE = (
    "CQL: the rewards' mean absolute deviation is {sd} reward units, {ratio:,.0f} times the "
    "softmax temperature ({temperature:g}); temperature and alpha ({alpha:g}) are in reward "
    "units, so the policy will be greedy on barely fitted Q-values and the conservative "
    "penalty negligible against the squared TD error. Scale the reward in the manifest "
    "([reward] name = {{ column = \"...\", weight = 0.001 }} reads dollars as thousands) or set "
    "temperature and alpha in reward units (docs/learn.md, 'Assumptions and limits').")


class CQL(OfflineLearner):
    """Discrete conservative Q-learning (see module docstring).

    Parameters
    ----------
    config : CQLConfig, optional
    **overrides
        Config fields, e.g. ``CQL(alpha=0.5, factored_q=True)``.
    """

    algo = "cql"
    config_class = CQLConfig
    config: CQLConfig
    policy_output = "q"

    def _networks(self, base: dict[str, Any], critic_base: dict[str, Any]
                  ) -> dict[str, Network]:
        cfg = self.config
        head = "factored_q" if cfg.factored_q else "joint_q"
        q = build_network(self._spec(base, head=head), seed=cfg.seed)
        target = build_network(self._spec(base, head=head), seed=cfg.seed)
        return {"policy": q, "target": target}

    def _policy_mode(self) -> tuple[Literal["softmax", "greedy"], float]:
        return self.config.policy, float(self.config.temperature)

    def _check_train_data(self, data: TrainData) -> None:
        """Warn when the rewards' scale dwarfs ``temperature`` (:data:`MSG_REWARD_SCALE`).

        Their mean absolute deviation, not their standard deviation, which a few rare
        $1M claims would set. On a Medicaid panel of monthly costs in dollars
        the defaults gave one action to every row (a TD loss of 1e8 after 2,000 steps).
        """
        cfg = self.config
        r = data.reward[data.rows].double()
        mad = float((r - r.mean()).abs().mean()) if r.numel() else 0.0  # heavy tails: not sd
        if mad > REWARD_SCALE_RATIO * cfg.temperature:
            import warnings

            from equicare.exceptions import DataWarning
            from equicare.utils import value_text

            warnings.warn(MSG_REWARD_SCALE.format(sd=value_text(mad, ".4g"),
                                                  ratio=mad / cfg.temperature,
                                                  temperature=cfg.temperature,
                                                  alpha=cfg.alpha), DataWarning, stacklevel=3)

    def _losses(self, data: TrainData, rows: Tensor, q: Tensor, q_next: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Per-row TD and conservative losses from ``Q(s, .)`` and target ``Q'(s', .)``."""
        cfg = self.config
        a = data.action_pos[rows]
        with torch.no_grad():
            td_target = (data.reward[rows]
                         + data.gamma * (1.0 - data.done[rows]) * q_next.max(dim=1).values)
        q_sa = q.gather(1, a[:, None]).squeeze(1)
        if cfg.td_loss == "mse":
            td = (q_sa - td_target) ** 2
        else:
            td = F.smooth_l1_loss(q_sa, td_target, reduction="none")
        td = td * data.td_ok[rows].float()
        conservative = torch.logsumexp(q, dim=1) - q_sa
        return td, conservative

    def _update(self, data: TrainData, rows: Tensor, step: int) -> dict[str, Tensor]:
        cfg = self.config
        net, opt = self.nets_["policy"], self._optims["policy"]
        x, lengths = data.inputs.take(rows)
        q = net(x, lengths)
        with torch.no_grad():
            xn, ln = data.inputs.take(data.next_row[rows])
            q_next = self.nets_["target"](xn, ln)
        td, conservative = self._losses(data, rows, q, q_next)
        per_row = td + cfg.alpha * conservative
        log_pi = torch.log_softmax(q / cfg.temperature, dim=1)
        loss = self._policy_objective(per_row, log_pi, data.group[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if (step + 1) % cfg.target_update_interval == 0:
            self._hard_update(self.nets_["target"], net)
        return {"loss": loss.detach(), "td": td.detach().mean(),
                "cql": conservative.detach().mean()}

    def _value_parts(self, data: TrainData, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """``V^pi(s)`` of the current (softmax or greedy) policy and ``Q(s, a_logged)``."""
        q = batched_forward(self.nets_["policy"], data.inputs, rows=rows)
        if self.config.policy == "greedy":
            v = q.max(dim=1).values
        else:
            v = (torch.softmax(q / self.config.temperature, dim=1) * q).sum(dim=1)
        pos = data.action_pos[rows]
        q_logged = q.gather(1, pos.clamp(min=0)[:, None]).squeeze(1)
        return v, torch.where(pos >= 0, q_logged, v)

    def _valid_loss(self, data: TrainData) -> float:
        rows = data.rows
        q = batched_forward(self.nets_["policy"], data.inputs, rows=rows)
        q_next = batched_forward(self.nets_["target"], data.inputs, rows=data.next_row[rows])
        td, conservative = self._losses(data, rows, q, q_next)
        return float((td + self.config.alpha * conservative).mean())
