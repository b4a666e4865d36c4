r"""Guided cost learning pieces of OMG-RL (private).

Maximum-entropy IRL (Ziebart et al. 2008) with the importance-sampled partition function of guided
cost learning (Finn et al. 2016). With trajectory return :math:`R_\psi(\tau) = \sum_t
r_\psi(s_t, a_t, s_{t+1})` and a background set :math:`B` of demonstration and model-generated
segments,

.. math::
    L(\psi) = -\frac{1}{|D|} \sum_{\tau \in D} R_\psi(\tau)
              + \log \frac{1}{|B|} \sum_{\tau_j \in B} \frac{e^{R_\psi(\tau_j)}}{\bar q(\tau_j)},
    \qquad \bar q(\tau) = \tfrac12 \prod_t \hat\pi_\beta(a_t|s_t) + \tfrac12 \prod_t
    \pi_\theta(a_t|s_t).

The dynamics terms of the trajectory densities cancel in the ratio, so only action probabilities
enter :math:`\bar q`: the behaviour model :math:`\hat\pi_\beta` (fitted by maximum likelihood on
the logged data) for the demonstrations' generator and the current actor for the model rollouts
(Finn et al.'s "demonstrations in the background samples" mixture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from equicare.dosing._sac import MLP

__all__ = ["Segments", "gcl_loss", "expert_segments", "fit_behavior_model"]


@dataclass
class Segments:
    """A batch of trajectory segments of length ``H`` (arrays of shape ``(n, H, ...)``)."""

    states: Tensor        # (n, H, d)
    actions: Tensor       # (n, H) int64
    next_states: Tensor   # (n, H, d)
    valid: Tensor         # (n, H) float (0 after the end of the episode)

    @property
    def n(self) -> int:
        """Number of segments."""
        return int(self.actions.shape[0])

    def take(self, idx: Tensor) -> Segments:
        """Subset of segments."""
        return Segments(self.states[idx], self.actions[idx], self.next_states[idx],
                        self.valid[idx])


def gcl_loss(returns_demo: Tensor, returns_background: Tensor, log_q_background: Tensor
             ) -> Tensor:
    r"""Guided-cost-learning loss (negative MaxEnt log-likelihood with IS partition function).

    Parameters
    ----------
    returns_demo : Tensor of shape (n_demo,)
        :math:`R_\psi(\tau)` of demonstration segments.
    returns_background : Tensor of shape (n_background,)
        :math:`R_\psi` of the background set (demonstrations and samples).
    log_q_background : Tensor of shape (n_background,)
        :math:`\log \bar q(\tau)` of the background set (treated as a constant).

    Returns
    -------
    Tensor of shape ()
    """
    log_w = returns_background - log_q_background.detach()
    log_z = torch.logsumexp(log_w, dim=0) - math.log(returns_background.shape[0])
    return -returns_demo.mean() + log_z


def expert_segments(starts: NDArray[np.int64], horizon: int, states: Tensor, actions: Tensor,
                    next_states: Tensor, episode_end: NDArray[np.int64],
                    model_next_states: Tensor | None = None) -> Segments:
    """Cut logged windows ``start, ..., start + H - 1`` (masked after the episode's last row).

    Parameters
    ----------
    starts : ndarray of shape (n,)
        Row indices where segments start.
    horizon : int
    states, next_states : Tensor of shape (n_rows, d)
    actions : Tensor of shape (n_rows,)
    episode_end : ndarray of shape (n_rows,)
        One past the last row of each row's episode.
    model_next_states : Tensor of shape (n_rows, d), optional
        One-step model samples of each row's next state. When given, every state after the first
        and every next state of a segment is replaced by the model's one-step sample from the
        logged (state, action): the demonstrations' actions are kept, but their outcomes come from
        the same model as the samples', so the reward cannot tell demonstrations from samples by
        model error.
    """
    rows = starts[:, None] + np.arange(horizon)[None, :]
    valid = rows < episode_end[starts][:, None]
    rows = np.where(valid, rows, starts[:, None])
    r = torch.as_tensor(rows)
    if model_next_states is None:
        return Segments(states[r], actions[r], next_states[r],
                        torch.as_tensor(valid, dtype=torch.float32))
    st = states[r].clone()
    st[:, 1:] = model_next_states[r[:, :-1]]
    return Segments(st, actions[r], model_next_states[r],
                    torch.as_tensor(valid, dtype=torch.float32))


def fit_behavior_model(states: NDArray[np.float32], actions: NDArray[np.int64], n_actions: int,
                       *, hidden: tuple[int, ...] = (64, 64), epochs: int = 5,
                       batch_size: int = 512, lr: float = 1e-3,
                       generator: torch.Generator | None = None) -> MLP:
    r"""Maximum-likelihood softmax model :math:`\hat\pi_\beta(a|s)` of the logged actions.

    Returns
    -------
    MLP
        Maps states of shape ``(n, d)`` to logits of shape ``(n, n_actions)``.
    """
    s = torch.as_tensor(np.asarray(states, dtype=np.float32))
    a = torch.as_tensor(np.asarray(actions, dtype=np.int64))
    net = MLP(s.shape[1], n_actions, hidden, s.mean(0).numpy(), s.std(0).numpy())
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = s.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            b = perm[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(net(s[b]), a[b])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    net.eval()
    return net
