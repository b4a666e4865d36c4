"""Actor-critic networks for on-policy learners (PPO, group-robust PPO).

Separate actor and critic multilayer perceptrons with orthogonal initialisation (the PPO
implementation details of Huang et al., 2022, "The 37 implementation details of PPO"): hidden
layers with gain sqrt(2), the policy head with gain 0.01 (near-uniform initial policy), the value
head with gain 1. Initialisation draws from an explicit :class:`torch.Generator`, never from the
global one.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["DiscreteActorCritic"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(
    sizes: list[int], activation: str, out_gain: float, generator: torch.Generator | None
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2.0),
                            generator=generator)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class DiscreteActorCritic(nn.Module):
    """Categorical policy and state-value function over a flat observation vector.

    Parameters
    ----------
    obs_dim : int
        Length of the observation vector.
    n_actions : int
        Number of discrete actions.
    hidden_sizes : tuple of int
        Widths of the hidden layers (same for actor and critic).
    activation : {'tanh', 'relu'}
    generator : torch.Generator, optional
        Source of the initial weights (seeded by the learner).
    n_values : int
        Outputs of the critic: the value of the reward, then of any auxiliary reward streams
        (e.g. one per group for group-robust learners).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: Literal["tanh", "relu"] = "tanh",
        generator: torch.Generator | None = None,
        n_values: int = 1,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.n_values = n_values
        sizes = [obs_dim, *hidden_sizes]
        self.actor = _mlp([*sizes, n_actions], activation, 0.01, generator)
        self.critic = _mlp([*sizes, n_values], activation, 1.0, generator)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Unnormalised action log-probabilities, shape (batch, n_actions)."""
        out: torch.Tensor = self.actor(obs)
        return out

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values of the reward (first critic output), shape (batch,)."""
        out: torch.Tensor = self.critic(obs)[:, 0]
        return out

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """All critic outputs, shape (batch, n_values)."""
        out: torch.Tensor = self.critic(obs)
        return out

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits (batch, n_actions), values (batch, n_values))``."""
        return self.logits(obs), self.values(obs)
