r"""Reward (negative cost) network for guided cost learning.

:math:`r_\psi = -c_\psi` is an MLP over standardised features. Which features it sees is a
setting:

* ``"state_action"``: :math:`r_\psi(s, a)` (as in guided cost learning and OMG-RL);
* ``"next_state"``: :math:`r_\psi(s')`, the reward of the state a dose leads to;
* ``"transition"``: :math:`r_\psi(s, a, s')`.

Actions are encoded with :func:`equicare.models._dynamics.one_hot_actions`, the same function the
dynamics ensemble uses. The output is bounded, :math:`r = b \tanh(f / b)`, which keeps the
importance-sampled partition function of the IRL loss finite.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from equicare.exceptions import InvalidParameterError
from equicare.models._dynamics import one_hot_actions
from equicare.utils import PARAM_MESSAGE

__all__ = ["RewardNet", "RewardEnsemble", "RewardInput", "REWARD_INPUTS"]

RewardInput = Literal["state_action", "next_state", "transition"]
REWARD_INPUTS: tuple[str, ...] = ("state_action", "next_state", "transition")


class RewardNet(nn.Module):
    r"""Bounded MLP reward :math:`r_\psi` with built-in feature standardisation.

    Parameters
    ----------
    n_features : int
        State dimension ``d``.
    n_actions : int
    inputs : {"state_action", "next_state", "transition"}
    hidden : tuple of int
    bound : float
        Output bound ``b``: rewards lie in ``(-b, b)``.
    state_mean, state_std : array-like of shape (d,), optional
        Standardisation of states (default: none).
    feature_index : sequence of int, optional
        State columns the reward may depend on (default: all). Leaving out treatment-history
        features (e.g. the previous dose) stops the reward from simply imitating the logged
        actions; see ``docs/dosing.md``.
    """

    def __init__(self, n_features: int, n_actions: int, inputs: RewardInput = "state_action",
                 hidden: tuple[int, ...] = (128, 128), bound: float = 5.0,
                 state_mean: ArrayLike | None = None, state_std: ArrayLike | None = None,
                 feature_index: ArrayLike | None = None) -> None:
        super().__init__()
        if inputs not in REWARD_INPUTS:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="inputs", owner="RewardNet",
                                                  expected="one of " + ", ".join(
                                                      repr(x) for x in REWARD_INPUTS), got=inputs))
        self.inputs = inputs
        self.n_features = int(n_features)
        self.n_actions = int(n_actions)
        self.bound = float(bound)
        mean = np.zeros(n_features) if state_mean is None else np.asarray(state_mean)
        std = np.ones(n_features) if state_std is None else np.asarray(state_std)
        self.register_buffer("state_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.as_tensor(np.where(std > 1e-6, std, 1.0),
                                                          dtype=torch.float32))
        idx = np.arange(n_features) if feature_index is None else np.asarray(feature_index)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n_features:
            raise InvalidParameterError(
                f"feature_index must list state columns in [0, {n_features}); "
                             f"got {idx.tolist()}.")
        self.feature_index: Tensor
        self.state_mean: Tensor
        self.state_std: Tensor
        self.register_buffer("feature_index", torch.as_tensor(idx, dtype=torch.long).clone())
        m = int(idx.size)
        d_in = {"state_action": m + n_actions, "next_state": m,
                "transition": 2 * m + n_actions}[inputs]
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.SiLU()]
            d_in = h
        layers.append(nn.Linear(d_in, 1))
        self.mlp = nn.Sequential(*layers)

    def features(self, states: Tensor, actions: Tensor, next_states: Tensor | None) -> Tensor:
        """Network input for a batch.

        Parameters
        ----------
        states : Tensor of shape (n, d)
        actions : Tensor of shape (n,)
            Flat action indices.
        next_states : Tensor of shape (n, d), optional
            Needed unless ``inputs == "state_action"``.

        Returns
        -------
        Tensor of shape (n, d_in)
            Standardised selected features (and the one-hot action where used).
        """
        fi = self.feature_index
        z = ((states - self.state_mean) / self.state_std)[:, fi]
        if self.inputs == "state_action":
            return torch.cat([z, one_hot_actions(actions, self.n_actions)], dim=-1)
        if next_states is None:
            raise InvalidParameterError(f"RewardNet(inputs={self.inputs!r}) needs next_states.")
        zn = ((next_states - self.state_mean) / self.state_std)[:, fi]
        if self.inputs == "next_state":
            return zn
        return torch.cat([z, one_hot_actions(actions, self.n_actions), zn], dim=-1)

    def forward(self, states: Tensor, actions: Tensor, next_states: Tensor | None = None
                ) -> Tensor:
        """Reward of each transition, shape ``(n,)``."""
        f = self.mlp(self.features(states, actions, next_states)).squeeze(-1)
        return self.bound * torch.tanh(f / self.bound)

    def predict(self, states: ArrayLike, actions: ArrayLike, next_states: ArrayLike | None = None
                ) -> NDArray[np.float64]:
        """NumPy convenience: rewards of shape ``(n,)`` without gradients."""
        with torch.no_grad():
            s = torch.as_tensor(np.asarray(states, dtype=np.float32))
            a = torch.as_tensor(np.asarray(actions, dtype=np.int64))
            ns = None if next_states is None else torch.as_tensor(
                np.asarray(next_states, dtype=np.float32))
            out: NDArray[np.float64] = self(s, a, ns).numpy().astype(np.float64)
        return out


class RewardEnsemble(nn.Module):
    """Average of ``n_members`` independently initialised :class:`RewardNet` s.

    Each member is trained with its own loss on the same batches; the reward is the members' mean,
    which averages out dependence on features that individual members pick up by chance.

    Parameters
    ----------
    n_members : int
    **kwargs
        Arguments of :class:`RewardNet`.
    """

    def __init__(self, n_members: int = 1, **kwargs: Any) -> None:
        super().__init__()
        if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 1:
            raise InvalidParameterError(
                PARAM_MESSAGE.format(name="n_members", owner="RewardEnsemble",
                                                  expected="an int >= 1", got=n_members))
        self.members = nn.ModuleList(RewardNet(**kwargs) for _ in range(n_members))

    @property
    def inputs(self) -> str:
        """What the members see (``"state_action"``, ``"next_state"`` or ``"transition"``)."""
        return str(self.members[0].inputs)

    def member_rewards(self, states: Tensor, actions: Tensor, next_states: Tensor | None = None
                       ) -> Tensor:
        """Rewards of every member, shape ``(n_members, n)``."""
        return torch.stack([m(states, actions, next_states) for m in self.members])

    def forward(self, states: Tensor, actions: Tensor, next_states: Tensor | None = None
                ) -> Tensor:
        """Mean reward of the members, shape ``(n,)``."""
        return self.member_rewards(states, actions, next_states).mean(dim=0)

    def predict(self, states: ArrayLike, actions: ArrayLike, next_states: ArrayLike | None = None
                ) -> NDArray[np.float64]:
        """NumPy convenience: mean rewards of shape ``(n,)`` without gradients."""
        with torch.no_grad():
            s = torch.as_tensor(np.asarray(states, dtype=np.float32))
            a = torch.as_tensor(np.asarray(actions, dtype=np.int64))
            ns = None if next_states is None else torch.as_tensor(
                np.asarray(next_states, dtype=np.float32))
            out: NDArray[np.float64] = self(s, a, ns).numpy().astype(np.float64)
        return out
