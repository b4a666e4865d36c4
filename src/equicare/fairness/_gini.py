"""Gini index of group outcomes (plain and population-weighted), vectorised over replicates."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from equicare.exceptions import InvalidParameterError

__all__ = ["gini"]


def gini(values: ArrayLike, weights: ArrayLike | None = None, *, axis: int = -1
         ) -> NDArray[np.float64] | float:
    r"""Gini index of a vector of (group-average) outcomes.

    Plain form (each entry counts once, as over group means in the equitable restless-bandit
    literature):

    .. math::

        G = \frac{\sum_i \sum_j |x_i - x_j|}{2 n^2 |\bar x|}, \qquad \bar x = \frac1n \sum_i x_i.

    Population-weighted form (entry ``i`` stands for ``w_i`` people; equal to the plain Gini of the
    person-level vector in which everybody gets their group's value):

    .. math::

        G_w = \frac{\sum_i \sum_j w_i w_j |x_i - x_j|}{2 W^2 |\bar x_w|},
        \qquad W = \sum_i w_i, \quad \bar x_w = \frac1W \sum_i w_i x_i.

    Computed in :math:`O(n \log n)` after sorting:
    :math:`\sum_{i,j} w_i w_j |x_i - x_j| = 2 \sum_i w_i x_{(i)} (2 C_i - w_i - W)` with
    :math:`C_i` the cumulative weight up to and including the ``i``-th smallest value.

    Parameters
    ----------
    values : array-like of shape (..., n)
        Outcomes (e.g. group means); the index runs along ``axis``. Leading dimensions (e.g.
        bootstrap replicates) are handled at once.
    weights : array-like broadcastable to ``values``, optional
        Non-negative population weights (e.g. group sizes). ``None`` gives the plain form.
    axis : int
        Axis along which the entries lie.

    Returns
    -------
    float or ndarray of shape (...)
        A float for one vector, else one index per leading position. The index lies in
        ``[0, 1 - 1/n]`` (plain) for non-negative values. For values that are all non-positive
        (costs) the denominator uses :math:`|\bar x|`, so the result is the Gini of the magnitudes.
        Values of mixed sign have no meaningful Gini: the result is NaN there. All-zero vectors
        (perfect equality) give 0; NaN inputs give NaN.

    Examples
    --------
    >>> gini([1.0, 1.0, 1.0])
    0.0
    >>> gini([0.0, 0.0, 0.0, 1.0])   # sum |xi-xj| = 6, n^2 = 16, mean 1/4
    0.75
    >>> round(gini([1.0, 3.0], weights=[3.0, 1.0]), 6)  # people (1,1,1,3): 2*3*2/(2*16*1.5)
    0.25
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0:
        raise InvalidParameterError("gini needs a vector of values, got a scalar.")
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n == 0:
        raise InvalidParameterError("gini needs at least one value.")
    if weights is None:
        w = np.ones_like(x)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 0:
            raise InvalidParameterError("gini weights must be a vector broadcastable to values.")
        w = np.broadcast_to(np.moveaxis(w, axis, -1) if w.ndim == np.ndim(values) else w, x.shape)
        if np.any(w < 0):
            raise InvalidParameterError("gini weights must be non-negative.")
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    ws = np.take_along_axis(w, order, axis=-1)
    total_w = ws.sum(axis=-1)
    cum = np.cumsum(ws, axis=-1)
    pair_sum = 2.0 * np.sum(ws * xs * (2.0 * cum - ws - total_w[..., None]), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.sum(ws * xs, axis=-1) / total_w
        g = pair_sum / (2.0 * total_w**2 * np.abs(mean))
    mixed = (np.min(x, axis=-1) < 0) & (np.max(x, axis=-1) > 0)
    all_equal = np.max(x, axis=-1) == np.min(x, axis=-1)
    g = np.where(all_equal, 0.0, g)
    g = np.where(mixed | np.isnan(x).any(axis=-1) | (total_w <= 0), np.nan, g)
    if g.ndim == 0:
        return float(g)
    return np.asarray(g, dtype=np.float64)
