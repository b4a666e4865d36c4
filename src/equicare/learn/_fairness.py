r"""Training-time fairness terms: a demographic-parity penalty and group-DRO weights.

Demographic parity (on a mini-batch of rows with group labels ``g_i``):

.. math::

    \mathrm{pen} = \lambda \sum_g \Big(\frac{1}{n_g} \sum_{i: g_i = g} \pi(S \mid s_i)
                    - \frac{1}{n} \sum_i \pi(S \mid s_i)\Big)^2,

where ``S`` is an action set (``"modality=home_visit"``) and ``pi(S|s) = sum_{a in S} pi(a|s)``.

Group-robust objective (group DRO, Sagawa et al., 2020, exponentiated-gradient weights):

.. math::

    q_g \leftarrow \frac{q_g e^{\eta L_g}}{\sum_h q_h e^{\eta L_h}}, \qquad
    J = (1 - \lambda) \bar L + \lambda \sum_g q_g L_g,

with ``L_g`` the mean loss of group ``g``'s rows in the batch and ``bar L`` the mean over all
rows; ``lambda = 0`` is the plain objective. The weights can also follow another per-group
signal of being worse off than the loss: ``q_g <- q_g exp(eta S_g)``. Learners whose critic reads
the group use the group's estimated policy value (group-robust policy optimisation maximises the
smallest group value ``J_g``),

.. math::

    \hat J_g = \frac{1}{|E_g|} \sum_{e \in E_g} \hat V^{\pi}(s_{e,0}), \qquad
    S_g = -\frac{\hat J_g - \operatorname{mean}_h \hat J_h}{\operatorname{sd}_h \hat J_h},

over the initial states of each group's episodes ``E_g`` (the value of a policy is defined over
the initial-state distribution), so the group with the lowest estimated value gets the weight.

``V^pi(s_{e,0})`` is not read off the critic alone: early in training, and on long stays at
``gamma = 1``, a temporal-difference critic has not propagated the outcomes back to the initial
states (on a Garnet panel with 34-step stays it rated the best-off group worst and DRO moved all
the weight there). :func:`episode_values` estimates it from the episode's observed return plus
the critic's advantages of ``pi`` along the logged path (the performance-difference identity,
Kakade & Langford, 2002),

.. math::

    \hat V^{\pi}(s_{e,0}) = \sum_t \gamma^t r_t
        + \sum_t \gamma^t \big(\hat V^{\pi}(s_t) - \hat Q(s_t, a_t)\big)
        + [\text{censored}]\, \gamma^{T-1} \big(\hat Q(s_{T-1}, a_{T-1}) - r_{T-1}\big),

unbiased for the exact ``Q^pi`` and equal to the observed return (the behaviour's value) when
the critic is flat; the last term values the unobserved rest of a censored episode.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["parity_penalty", "GroupDRO", "group_means", "group_value_signal", "episode_values"]


def group_means(values: Tensor, group: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` within each group present in the batch.

    Parameters
    ----------
    values : Tensor of shape (batch,)
    group : Tensor of shape (batch,), int64 in ``[0, n_groups)``
    n_groups : int

    Returns
    -------
    means : Tensor of shape (n_groups,)
        0 for absent groups.
    present : Tensor of shape (n_groups,), bool
    """
    sums = torch.zeros(n_groups, dtype=values.dtype).index_add(0, group, values)
    counts = torch.bincount(group, minlength=n_groups).to(values.dtype)
    present = counts > 0
    return sums / counts.clamp(min=1.0), present


def parity_penalty(p_set: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Sum over groups of the squared gap between the group's and the overall mean ``p_set``.

    Parameters
    ----------
    p_set : Tensor of shape (batch,)
        Probability of the action set at each row.
    group : Tensor of shape (batch,)
    n_groups : int

    Returns
    -------
    Tensor (scalar)
    """
    means, present = group_means(p_set, group, n_groups)
    return ((means - p_set.mean()) ** 2 * present).sum()


def episode_values(v_pi: Tensor, q_logged: Tensor | None, reward: Tensor, gamma: float,
                   episode: Tensor, step: Tensor, last: Tensor, done: Tensor,
                   n_episodes: int, n_corrected: int | None = None) -> Tensor:
    """Each episode's estimated value of ``pi`` at its initial state (module docstring).

    Parameters
    ----------
    v_pi : Tensor of shape (n,)
        Critic's value of the current policy at each row's state, ``sum_a pi(a|s) Q(s, a)``
        (a state-value critic's ``V(s)``).
    q_logged : Tensor of shape (n,) or None
        Critic's value of the logged action (rows whose action is outside the policy's support
        carry ``v_pi``). None for a state-value critic of the behaviour: the observed return
        already estimates its value, only censored ends use ``v_pi``.
    reward : Tensor of shape (n,)
    gamma : float
    episode : Tensor of shape (n,), int64
        Episode of each row, in ``[0, n_episodes)``.
    step : Tensor of shape (n,), int64
        Position of the row in its episode.
    last : Tensor of shape (n,), bool
        The episode's last row.
    done : Tensor of shape (n,), bool
        The row ends the episode for good (terminal); a last row that is not done is censored.
    n_episodes : int
    n_corrected : int, optional
        Only the first ``n_corrected`` steps of an episode carry the advantage correction
        (default: every step).

    Returns
    -------
    Tensor of shape (n_episodes,), float64
    """
    r = reward.double()
    disc = torch.as_tensor(gamma, dtype=torch.float64) ** step.double()
    q = v_pi.double() if q_logged is None else q_logged.double()
    terms = r.clone()
    if q_logged is not None:
        adv = v_pi.double() - q
        if n_corrected is not None:
            adv = torch.where(step < n_corrected, adv, torch.zeros_like(adv))
        terms = terms + adv
    censored = last & ~done
    terms = terms + torch.where(censored, q - r, torch.zeros_like(r))
    return torch.zeros(n_episodes, dtype=torch.float64).index_add(0, episode, disc * terms)


def group_value_signal(values: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Standardised negative group mean of estimated values (lowest value = largest signal).

    Parameters
    ----------
    values : Tensor of shape (n,)
        Estimated value of the current policy at each episode's initial state.
    group : Tensor of shape (n,)
        Group code of each episode.
    n_groups : int

    Returns
    -------
    Tensor of shape (n_groups,)
        ``S_g`` of the module docstring; 0 for absent groups and when all groups are equal.
    """
    means, present = group_means(values.detach(), group, n_groups)
    m = means[present]
    sd = m.std() if m.numel() > 1 else torch.zeros(())
    if not bool(sd > 1e-8):
        return torch.zeros(n_groups, dtype=values.dtype)
    return torch.where(present, -(means - m.mean()) / sd, torch.zeros_like(means))


class GroupDRO:
    """Exponentiated-gradient weights over groups and the mixed objective (see module docstring).

    Parameters
    ----------
    n_groups : int
    step : float
        Step size ``eta`` of the exponentiated-gradient update.
    """

    def __init__(self, n_groups: int, step: float) -> None:
        self.step = float(step)
        self.q = torch.full((n_groups,), 1.0 / n_groups)

    def objective(self, per_row: Tensor, group: Tensor, lam: float,
                  signal: Tensor | None = None, group_signal: Tensor | None = None) -> Tensor:
        """Mixed objective of a batch; updates the weights of the groups present.

        Parameters
        ----------
        per_row : Tensor of shape (batch,)
            Loss of each row.
        group : Tensor of shape (batch,)
        lam : float in [0, 1]
        signal : Tensor of shape (batch,), optional
            Per-row measure of being worse off that drives the weights (default: the loss).
        group_signal : Tensor of shape (n_groups,), optional
            Per-group measure of being worse off (e.g. :func:`group_value_signal`); takes
            precedence over ``signal``.
        """
        plain = per_row.mean()
        if lam <= 0.0:
            return plain
        n_groups = int(self.q.shape[0])
        g_loss, present = group_means(per_row, group, n_groups)
        with torch.no_grad():
            if group_signal is not None:
                drive = group_signal.detach().to(g_loss.dtype)
            elif signal is not None:
                drive = group_means(signal.detach(), group, n_groups)[0]
            else:
                drive = g_loss
            gl = drive.detach() * present
            # shift by the largest loss (same weights after normalising, no overflow)
            self.q = self.q * torch.exp(self.step * (gl - gl[present].max()))
            self.q = self.q / self.q.sum()
        q = self.q * present
        robust = (q / q.sum() * g_loss).sum()
        return (1.0 - lam) * plain + lam * robust
