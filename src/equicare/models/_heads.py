"""Output heads over a (factored) discrete action space.

Every head scores a fixed list of *support* actions (flat indices, in increasing order): by default
the combinations observed in the training data, or all flat actions. Categorical heads return
scores whose ``log_softmax`` over the support is the policy's log-probability; Q heads return
action values.

* :class:`JointCategoricalHead` - one logit per support action (unobserved combinations get no
  logit, i.e. probability exactly 0).
* :class:`FactoredCategoricalHead` - one categorical per component, independent or
  autoregressive in component order; ``flat_log_probs`` gives the exact chain-rule product
  ``log p(a) = sum_j log p_j(a_j | s, a_<j)`` over all flat actions.
* :class:`JointQHead`, :class:`FactoredQHead` - Q over support actions; the factored one sums
  per-component utilities, ``Q(s, a) = sum_j u_j(s, a_j)``.
* :class:`ValueHead` - a state value ``V(s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from equicare.exceptions import InvalidParameterError

__all__ = [
    "JointCategoricalHead",
    "FactoredCategoricalHead",
    "JointQHead",
    "FactoredQHead",
    "ValueHead",
    "flat_codes",
]


def flat_codes(sizes: Sequence[int]) -> NDArray[np.int64]:
    """Per-component codes of every flat action (mixed radix, last component fastest).

    Returns
    -------
    ndarray of shape (prod(sizes), len(sizes))
    """
    sizes = [int(s) for s in sizes]
    grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)


def _support_tensor(support: Sequence[int] | NDArray[np.int64], n_actions: int) -> Tensor:
    s = np.asarray(support, dtype=np.int64)
    if s.ndim != 1 or s.size == 0:
        raise InvalidParameterError("support must be a non-empty 1-d list of flat action indices.")
    if (np.diff(s) <= 0).any() or s[0] < 0 or s[-1] >= n_actions:
        raise InvalidParameterError(
            f"support must be strictly increasing flat indices in [0, {n_actions}).")
    return torch.as_tensor(s)


class JointCategoricalHead(nn.Module):
    """One logit per support action.

    Parameters
    ----------
    in_dim : int
    n_actions : int
        Size of the flat action space.
    support : sequence of int
        Flat indices that can be chosen (``K`` of them).

    Notes
    -----
    ``forward(h)`` maps ``(batch, in_dim)`` to scores ``(batch, K)``.
    """

    support: Tensor

    def __init__(self, in_dim: int, n_actions: int, support: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("support", _support_tensor(support, n_actions), persistent=False)
        self.n_actions = int(n_actions)
        self.linear = nn.Linear(in_dim, int(self.support.numel()))

    def forward(self, h: Tensor) -> Tensor:
        """Logits over the support, shape ``(batch, K)``."""
        out: Tensor = self.linear(h)
        return out


class FactoredCategoricalHead(nn.Module):
    """One categorical per action component; exact products over the flat space.

    Independent: ``p(a | s) = prod_j p_j(a_j | s)`` with ``p_j = softmax(W_j h + b_j)``.
    Autoregressive (component order): ``p(a | s) = prod_j p_j(a_j | s, a_<j)`` with
    ``p_j = softmax(W2_j relu(W1_j h + sum_{i<j} E_{j,i}[a_i] + b1_j) + b2_j)``.

    Parameters
    ----------
    in_dim : int
    sizes : sequence of int
        Levels per component (manifest order).
    support : sequence of int
        Flat indices scored by ``forward``; ``forward`` returns the flat log-probabilities at
        these indices. If they are not all actions, ``log_softmax`` of the scores renormalises the
        product distribution over the support.
    autoregressive : bool
    ar_hidden : int
        Hidden units of each autoregressive conditional.
    """

    support: Tensor
    prefix_codes: list[Tensor]

    def __init__(self, in_dim: int, sizes: Sequence[int], support: Sequence[int] | None = None,
                 autoregressive: bool = False, ar_hidden: int = 64) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.n_actions = int(np.prod(self.sizes))
        sup = np.arange(self.n_actions) if support is None else support
        self.register_buffer("support", _support_tensor(sup, self.n_actions), persistent=False)
        self.full_support = int(self.support.numel()) == self.n_actions
        self.autoregressive = bool(autoregressive)
        if not self.autoregressive:
            self.linear = nn.Linear(in_dim, int(sum(self.sizes)))
        else:
            self.hid = nn.ModuleList([nn.Linear(in_dim, ar_hidden) for _ in self.sizes])
            self.out = nn.ModuleList([nn.Linear(ar_hidden, s) for s in self.sizes])
            # prefix embeddings: E[j][i] embeds the level of component i < j for conditional j
            self.emb = nn.ModuleList([
                nn.ModuleList([nn.Embedding(self.sizes[i], ar_hidden) for i in range(j)])
                for j in range(len(self.sizes))])
            for j in range(len(self.sizes)):
                self.register_buffer(f"_prefix_{j}", torch.as_tensor(flat_codes(self.sizes[:j]))
                                     if j else torch.zeros((1, 0), dtype=torch.int64),
                                     persistent=False)

    # ------------------------------------------------------------------ per-component pieces
    def _prefix_embedding(self, j: int, prefix: Tensor) -> Tensor:
        """Sum of embeddings of the levels ``prefix`` (shape ``(m, j)``) -> ``(m, ar_hidden)``."""
        embs = cast(nn.ModuleList, self.emb[j])
        out: Tensor = embs[0](prefix[:, 0])
        for i in range(1, j):
            out = out + embs[i](prefix[:, i])
        return out

    def component_log_probs(self, h: Tensor, codes: Tensor | None = None) -> list[Tensor]:
        """Log-probabilities of each component's levels.

        Parameters
        ----------
        h : Tensor of shape (batch, in_dim)
        codes : Tensor of shape (batch, n_components), optional
            Taken actions; needed for the autoregressive conditionals (``a_<j``).

        Returns
        -------
        list of Tensor of shape (batch, sizes[j])
        """
        if not self.autoregressive:
            return [torch.log_softmax(z, dim=1)
                    for z in torch.split(self.linear(h), list(self.sizes), dim=1)]
        if codes is None:
            raise InvalidParameterError("An autoregressive head needs the taken codes a_<j.")
        out = []
        for j in range(len(self.sizes)):
            z = self.hid[j](h)
            if j:
                z = z + self._prefix_embedding(j, codes[:, :j])
            out.append(torch.log_softmax(self.out[j](torch.relu(z)), dim=1))
        return out

    def log_prob(self, h: Tensor, codes: Tensor) -> Tensor:
        """Unrestricted log-probability of taken actions: codes ``(batch, C)`` -> ``(batch,)``."""
        lps = self.component_log_probs(h, codes)
        return torch.stack([lp.gather(1, codes[:, j:j + 1]).squeeze(1)
                            for j, lp in enumerate(lps)], dim=1).sum(dim=1)

    def flat_log_probs(self, h: Tensor) -> Tensor:
        """Exact log-probabilities of every flat action, shape ``(batch, n_actions)``.

        Built by the chain rule in mixed-radix order: after component ``j`` the accumulated
        tensor holds ``log p(a_0..a_j)`` for all ``prod(sizes[:j+1])`` prefixes.
        """
        b = h.shape[0]
        if not self.autoregressive:
            lps = self.component_log_probs(h)
            acc = lps[0]
            for lp in lps[1:]:
                acc = (acc[:, :, None] + lp[:, None, :]).reshape(b, -1)
            return acc
        acc_ar: Tensor | None = None
        for j in range(len(self.sizes)):
            z = self.hid[j](h)  # (b, H)
            if j:
                pe = self._prefix_embedding(j, getattr(self, f"_prefix_{j}"))  # (P_j, H)
                z = z[:, None, :] + pe[None, :, :]  # (b, P_j, H)
            else:
                z = z[:, None, :]
            lp = torch.log_softmax(self.out[j](torch.relu(z)), dim=-1)  # (b, P_j, s)
            acc_ar = (lp.reshape(b, -1) if acc_ar is None
                      else (acc_ar[:, :, None] + lp).reshape(b, -1))
        assert acc_ar is not None
        return acc_ar

    def forward(self, h: Tensor) -> Tensor:
        """Flat log-probabilities at the support actions, shape ``(batch, K)``."""
        flat = self.flat_log_probs(h)
        return flat if self.full_support else flat[:, self.support]


class JointQHead(nn.Module):
    """One action value per support action: ``(batch, in_dim) -> (batch, K)``."""

    support: Tensor

    def __init__(self, in_dim: int, n_actions: int, support: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("support", _support_tensor(support, n_actions), persistent=False)
        self.n_actions = int(n_actions)
        self.linear = nn.Linear(in_dim, int(self.support.numel()))

    def forward(self, h: Tensor) -> Tensor:
        """Q over the support, shape ``(batch, K)``."""
        out: Tensor = self.linear(h)
        return out


class FactoredQHead(nn.Module):
    """Additive action values ``Q(s, a) = sum_j u_j(s, a_j)`` at the support actions.

    Parameters
    ----------
    in_dim : int
    sizes : sequence of int
    support : sequence of int
    """

    support: Tensor
    gather_index: Tensor

    def __init__(self, in_dim: int, sizes: Sequence[int], support: Sequence[int]) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.n_actions = int(np.prod(self.sizes))
        self.register_buffer("support", _support_tensor(support, self.n_actions), persistent=False)
        codes = flat_codes(self.sizes)[self.support.numpy()]  # (K, C)
        offsets = np.r_[0, np.cumsum(self.sizes)[:-1]]
        self.register_buffer("gather_index", torch.as_tensor(codes + offsets), persistent=False)
        self.linear = nn.Linear(in_dim, int(sum(self.sizes)))

    def utilities(self, h: Tensor) -> list[Tensor]:
        """Per-component utilities ``u_j``, each of shape ``(batch, sizes[j])``."""
        return list(torch.split(self.linear(h), list(self.sizes), dim=1))

    def forward(self, h: Tensor) -> Tensor:
        """Q over the support, shape ``(batch, K)``."""
        u: Tensor = self.linear(h)  # (b, sum sizes)
        return u[:, self.gather_index].sum(dim=-1)


class ValueHead(nn.Module):
    """State value: ``(batch, in_dim) -> (batch, 1)``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        """Values, shape ``(batch, 1)``."""
        out: Tensor = self.linear(h)
        return out
