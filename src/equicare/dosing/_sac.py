r"""Conservative discrete soft actor-critic (private; used by :class:`equicare.dosing.OMG`).

Discrete SAC (Christodoulou 2019) with twin critics :math:`Q_{1,2}(s, \cdot)`, Polyak-averaged
targets, a softmax actor and an automatically tuned temperature :math:`\alpha`, plus the COMBO
regulariser (Yu et al. 2021) that pushes Q down on model-generated states and up on logged
(state, action) pairs:

.. math::
    y &= r + \gamma (1 - d) \sum_{a'} \pi(a'|s') \big[\min_i \bar Q_i(s', a')
         - \alpha \log \pi(a'|s')\big] \\
    L_Q &= \sum_i \mathbb{E}_{(s,a,r,s',d) \sim D \cup D_{model}}\big[(Q_i(s,a) - y)^2\big]
          + \beta \Big(\mathbb{E}_{s \sim D_{model}} \log \sum_a e^{Q_i(s,a)}
          - \mathbb{E}_{(s,a) \sim D} Q_i(s,a)\Big) \\
    L_\pi &= \mathbb{E}_s \sum_a \pi(a|s) \big[\alpha \log \pi(a|s) - \min_i Q_i(s,a)\big] \\
    L_\alpha &= \log\alpha \cdot \mathbb{E}_s\big[\mathcal{H}(\pi(\cdot|s)) - \bar{\mathcal{H}}\big]

:math:`d = 1` means the episode ended at this step: the target is the reward alone (no
bootstrap). The target entropy of a categorical policy must lie in :math:`(0, \log |A|)`; we use
:math:`\bar{\mathcal H} = \kappa \log |A|` (the continuous-action heuristic :math:`-\dim A` is
negative, i.e. unreachable, and would drive :math:`\alpha` to zero).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from equicare.exceptions import InvalidParameterError
from equicare.models._mlp import StandardizedMLP
from equicare.utils import PARAM_MESSAGE, config_from_dict, config_to_dict

__all__ = ["SACConfig", "DiscreteSAC", "td_target", "discrete_target_entropy", "MLP"]


def discrete_target_entropy(n_actions: int, ratio: float) -> float:
    r"""Target entropy :math:`\kappa \log |A|` of a categorical policy (nats).

    Parameters
    ----------
    n_actions : int
        Number of discrete actions (>= 2).
    ratio : float in (0, 1)
        Fraction :math:`\kappa` of the maximum entropy :math:`\log |A|`.

    Examples
    --------
    >>> round(discrete_target_entropy(6, 0.5), 4)
    0.8959
    """
    if n_actions < 2:
        raise InvalidParameterError(
            f"A categorical policy needs >= 2 actions for a target entropy; got "
                         f"{n_actions}.")
    if not 0 < ratio < 1:
        raise InvalidParameterError(
            PARAM_MESSAGE.format(name="ratio", owner="discrete_target_entropy",
                                              expected="a number in (0, 1)", got=ratio))
    return float(ratio * math.log(n_actions))


def td_target(rewards: Tensor, terminals: Tensor, next_values: Tensor, gamma: float) -> Tensor:
    """Soft TD target ``r + gamma * (1 - done) * V(s')``; ``done = 1`` means no bootstrap.

    Parameters
    ----------
    rewards, terminals, next_values : Tensor of shape (n,)
        ``terminals`` is 1.0 where the episode ended at this step.
    gamma : float

    Returns
    -------
    Tensor of shape (n,)
    """
    return rewards + gamma * (1.0 - terminals) * next_values


#: The dosing networks' MLP (lives in :mod:`equicare.models` so the policy layer can rebuild it).
MLP = StandardizedMLP


@dataclass(frozen=True, kw_only=True)
class SACConfig:
    r"""Settings of the conservative discrete SAC.

    Parameters
    ----------
    hidden : tuple of int
        Hidden widths of the actor and the critics.
    actor_lr, critic_lr, alpha_lr : float
    tau : float
        Polyak rate of the target critics.
    batch_size : int
        Rows per update from each source (real and, when used, model data).
    target_entropy_ratio : float in (0, 1)
        :math:`\kappa`: target entropy :math:`\kappa \log |A|`.
    init_alpha : float
        Initial temperature.
    conservative_weight : float
        :math:`\beta` of the COMBO / CQL regulariser (0 = plain SAC).
    max_grad_norm : float
        Gradient clipping of every network (0 = none).
    """

    hidden: tuple[int, ...] = (128, 128)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    tau: float = 0.005
    batch_size: int = 256
    target_entropy_ratio: float = 0.3
    init_alpha: float = 0.1
    conservative_weight: float = 1.0
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        own = "SACConfig"
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InvalidParameterError(
                    PARAM_MESSAGE.format(name=name, owner=own, expected=expected,
                                                      got=getattr(self, name)))

        need(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden",
             "a non-empty tuple of positive ints")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            need(getattr(self, name) > 0, name, "a number in (0, inf)")
        need(0 < self.tau <= 1, "tau", "a number in (0, 1]")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
             "an int >= 1")
        need(0 < self.target_entropy_ratio < 1, "target_entropy_ratio", "a number in (0, 1)")
        need(self.conservative_weight >= 0, "conservative_weight", "a number in [0, inf)")
        need(self.max_grad_norm >= 0, "max_grad_norm", "a number in [0, inf)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SACConfig:
        """Inverse of :meth:`to_dict`."""
        return config_from_dict(cls, d)


class DiscreteSAC(nn.Module):
    """Networks and one update step of the conservative discrete SAC.

    Parameters
    ----------
    n_features, n_actions : int
    config : SACConfig
    gamma : float
    state_mean, state_std : array-like of shape (n_features,), optional
        Input standardisation.
    """

    def __init__(self, n_features: int, n_actions: int, config: SACConfig, gamma: float,
                 state_mean: ArrayLike | None = None, state_std: ArrayLike | None = None) -> None:
        super().__init__()
        self.config = config
        self.gamma = float(gamma)
        self.n_actions = int(n_actions)
        h = config.hidden
        self.actor = MLP(n_features, n_actions, h, state_mean, state_std)
        self.q1 = MLP(n_features, n_actions, h, state_mean, state_std)
        self.q2 = MLP(n_features, n_actions, h, state_mean, state_std)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.target_entropy = discrete_target_entropy(n_actions, config.target_entropy_ratio)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()],
                                           lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)

    @property
    def alpha(self) -> float:
        """Current temperature."""
        return float(self.log_alpha.exp())

    def policy(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Probabilities and log-probabilities, each of shape ``(n, n_actions)``."""
        logits = self.actor(states)
        return torch.softmax(logits, dim=-1), torch.log_softmax(logits, dim=-1)

    def _clip(self, params: Any) -> None:
        if self.config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)

    def update(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, d: Tensor, is_real: Tensor
               ) -> dict[str, float]:
        """One gradient step of critics, actor and temperature.

        Parameters
        ----------
        s, s2 : Tensor of shape (n, d)
            States and next states.
        a : Tensor of shape (n,)
            Flat actions (int64).
        r, d : Tensor of shape (n,)
            Rewards and terminal flags (1.0 = episode ended, no bootstrap).
        is_real : Tensor of shape (n,), bool
            Rows from the logged data: the conservative term pushes their Q up, and pushes the
            soft maximum of Q down on the other (model) rows, or on the logged rows when the
            batch has no model rows (CQL(H)).

        Returns
        -------
        dict
            ``critic_loss``, ``td_loss``, ``penalty``, ``actor_loss``, ``alpha``, ``entropy``,
            ``q_mean``.
        """
        cfg = self.config
        alpha = self.log_alpha.exp().detach()
        # ---- critics: soft TD target (done = 1 -> no bootstrap)
        with torch.no_grad():
            p2, logp2 = self.policy(s2)
            q_next = torch.min(self.q1_target(s2), self.q2_target(s2))
            v_next = (p2 * (q_next - alpha * logp2)).sum(dim=-1)
            y = td_target(r, d, v_next, self.gamma)
        q1_all, q2_all = self.q1(s), self.q2(s)
        idx = a.long().unsqueeze(-1)
        q1, q2 = q1_all.gather(1, idx).squeeze(-1), q2_all.gather(1, idx).squeeze(-1)
        td_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
        penalty = torch.zeros(())
        if cfg.conservative_weight > 0 and bool(is_real.any()):
            down = ~is_real if bool((~is_real).any()) else is_real
            penalty = (torch.logsumexp(q1_all[down], -1).mean() - q1[is_real].mean()) + \
                (torch.logsumexp(q2_all[down], -1).mean() - q2[is_real].mean())
        critic_loss = td_loss + cfg.conservative_weight * penalty
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self._clip([*self.q1.parameters(), *self.q2.parameters()])
        self.critic_opt.step()
        # ---- actor
        p, logp = self.policy(s)
        q_min = torch.min(q1_all, q2_all).detach()   # critics before this step's update
        actor_loss = (p * (alpha * logp - q_min)).sum(dim=-1).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self._clip(self.actor.parameters())
        self.actor_opt.step()
        # ---- temperature: raise alpha when the entropy is below the target
        entropy = -(p.detach() * logp.detach()).sum(dim=-1)
        alpha_loss = self.log_alpha * (entropy - self.target_entropy).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()  # type: ignore[no-untyped-call]
        self.alpha_opt.step()
        # ---- targets
        with torch.no_grad():
            for net, targ in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p_, pt in zip(net.parameters(), targ.parameters(), strict=True):
                    pt.mul_(1.0 - cfg.tau).add_(cfg.tau * p_)
        return {"critic_loss": critic_loss.item(), "td_loss": td_loss.item(),
                "penalty": penalty.item(), "actor_loss": actor_loss.item(),
                "alpha": alpha.item(), "entropy": entropy.mean().item(),
                "q_mean": q1.mean().item()}
