"""Permutation test of "no allocation difference between groups" (labels over episodes/people)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import RandomState, check_param, check_random_state

__all__ = ["permutation_test"]

#: Elements gathered per block (permutations x episodes x columns), bounds the memory used.
_BLOCK_ELEMENTS = 4_000_000


def _range_of_rates(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """``max_g num/den - min_g num/den`` along the group axis (-2), shape ``(..., K)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.asarray(np.nanmax(r, axis=-2) - np.nanmin(r, axis=-2), dtype=np.float64)


def _by_unit(num: NDArray[np.float64], den: NDArray[np.float64], c: NDArray[np.int64],
             clusters: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                               NDArray[np.int64]]:
    """Sums of ``num`` (n, K) and ``den`` (n,) per (person, group) unit, and each unit's group."""
    from equicare.ope._bootstrap import cluster_codes

    n_groups = int(c.max()) + 1 if c.size else 1
    keys, unit = np.unique(cluster_codes(clusters) * n_groups + c, return_inverse=True)
    unit = unit.ravel()
    m = keys.size
    num_u = np.stack([np.bincount(unit, weights=col, minlength=m) for col in num.T], axis=1)
    den_u = np.bincount(unit, weights=den, minlength=m)
    return (np.asarray(num_u, dtype=np.float64), np.asarray(den_u, dtype=np.float64),
            np.asarray(keys % n_groups, dtype=np.int64))


def permutation_test(numerators: ArrayLike, denominators: ArrayLike, codes: ArrayLike,
                     n_permutations: int = 1000, random_state: RandomState = None, *,
                     clusters: ArrayLike | None = None
                     ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""Permutation p-value of the range of group rates (max minus min).

    Under the null hypothesis the group labels are exchangeable across episodes (the allocation
    does not depend on the group). The statistic is the parity gap

    .. math::

        T = \max_g r_g - \min_g r_g, \qquad r_g = \frac{\sum_{e \in g} u_e}{\sum_{e \in g} v_e},

    recomputed after shuffling the labels over episodes (group sizes kept). The p-value is
    :math:`(1 + \#\{T^{(p)} \ge T\}) / (1 + P)` (valid at any ``P``; Phipson and Smyth, 2010).
    All permutations are processed as arrays: a block of ``c`` permutations of the episode order
    gathers the numerators into an array of shape ``(c, n_episodes, K)`` whose consecutive slices
    (the group sizes) are summed with one ``np.add.reduceat``.

    Parameters
    ----------
    numerators : array-like of shape (n_episodes,) or (n_episodes, K)
        Episode sums :math:`u_e` of the allocation, one column per policy (tested together, with
        the same permutations).
    denominators : array-like of shape (n_episodes,)
        Episode sums :math:`v_e` (rows of the episode, or 1 for episode-level rates).
    codes : array-like of shape (n_episodes,)
        Group index of each episode; episodes with a negative code (suppressed) are left out.
    n_permutations : int
        Number of random permutations ``P`` (>= 1).
    random_state : int, numpy.random.Generator or None
    clusters : array-like of shape (n_episodes,), optional
        The person of each episode (the manifest's ``member``). The labels are then shuffled
        over people, not episodes: a person's episodes (with one label) are summed into one
        unit first, so that correlated re-enrolments move together. A person whose episodes
        carry different labels gives one unit per label.

    Returns
    -------
    p_value : ndarray of shape (K,)
    statistic : ndarray of shape (K,)
        Observed range of group rates.
    """
    check_param(n_permutations, "n_permutations", "permutation_test", kind=(int, np.integer),
                low=1)
    num = np.asarray(numerators, dtype=np.float64)
    squeeze = num.ndim == 1
    if squeeze:
        num = num[:, None]
    den = np.asarray(denominators, dtype=np.float64)
    c = np.asarray(codes, dtype=np.int64)
    if den.shape != (num.shape[0],) or c.shape != (num.shape[0],) or (
            clusters is not None and np.shape(clusters) != (num.shape[0],)):
        raise InvalidParameterError(
            "numerators, denominators, codes (and clusters) must have one entry per episode.")
    keep = c >= 0
    num, den, c = num[keep], den[keep], c[keep]
    if clusters is not None:
        num, den, c = _by_unit(num, den, c, np.asarray(clusters)[keep])
    order = np.argsort(c, kind="stable")
    sizes = np.bincount(c)
    sizes = sizes[sizes > 0]
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    n, k = num.shape
    # observed statistic from the same slicing (episodes sorted by group)
    obs = _range_of_rates(np.add.reduceat(num[order], starts, axis=0),
                          np.add.reduceat(den[order], starts, axis=0)[:, None])
    rng = check_random_state(random_state)
    block = max(1, _BLOCK_ELEMENTS // max(1, n * (k + 1)))
    exceed = np.zeros(k, dtype=np.int64)
    base = np.arange(n, dtype=np.int64)
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))
    done = 0
    while done < n_permutations:
        b = min(block, n_permutations - done)
        perm = rng.permuted(np.tile(base, (b, 1)), axis=1)  # (b, n): episodes in shuffled order
        num_p = np.add.reduceat(num[perm], starts, axis=1)   # (b, G, K)
        den_p = np.add.reduceat(den[perm], starts, axis=1)   # (b, G)
        stat = _range_of_rates(num_p, den_p[:, :, None])     # (b, K)
        exceed += np.sum(stat >= obs - tol, axis=0)
        done += b
    p = np.asarray((1.0 + exceed) / (1.0 + n_permutations), dtype=np.float64)
    return p, obs
