r"""Per-stay values and effects of a renewed process (terminal outcomes).

When terminal rows lead to a new stay's first state (:func:`equicare.causal._data.
transition_rows`), each process's long-run average reward is, by the renewal-reward theorem,

.. math::

    \eta_R = \frac{E[\text{outcome of a stay}]}{E[\text{length of a stay}]},

and the long-run rate of stay ends (reward 1 on a stay's last row, 0 elsewhere) is
``eta_T = 1 / E[length]``. Their ratio ``eta_R / eta_T`` is the expected outcome per stay
(survival per stay when the outcome is survival at discharge). Stays end by the state
transition, so the end rate belongs to a process's state chain: ``pi_e``, ``pi_e_a0`` and
``pi_e_a0star`` share the chain (and the stays) of ``pi_e``, ``G`` and ``a0`` have their own
(:data:`CHAIN_KEYS`, :data:`CHAIN_OF`). A censored last row (the window closed, the stay went
on) counts as a step that did not end its stay; its missing next state is made up for by
inverse-probability-of-censoring weights on the next states of the other steps
(:func:`equicare.causal._data.next_state_weights`). Dropping it instead kept the ends at the
window's close and not the non-ends: the end rates came out 4-5 % too high on panels with a
quarter of their stays censored (docs/mediation.md "Censored stays").

The ratio's intervals come from the same inference as the etas: MR's by the delta method on
the joint influence values of numerator and denominator (:func:`per_stay_influence`), DM's and
MIS's from the same refitting bootstrap replicates (:func:`per_stay_values` of each).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from equicare.causal._result import CHAIN_KEYS

__all__ = ["CHAIN_KEYS", "CHAIN_OF", "per_stay_influence", "per_stay_values"]

#: The chain of each process (:data:`equicare.causal._result.ETA_KEYS` order).
CHAIN_OF = np.array([0, 0, 0, 1, 2])


def per_stay_values(etas: NDArray[np.float64]) -> NDArray[np.float64]:
    """Outcome per stay of the five processes from their etas and their chains' end rates.

    Parameters
    ----------
    etas : ndarray of shape (..., 8)
        The five etas (:data:`~equicare.causal._result.ETA_KEYS`) then the end rates of the
        three chains (:data:`CHAIN_KEYS`); replicates along the leading axes.

    Returns
    -------
    ndarray of shape (..., 5)
        ``eta_k / end_rate_{chain(k)}``; NaN where that end rate is not positive (no stay ends
        under the process as estimated).
    """
    rate = etas[..., 5:][..., CHAIN_OF]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rate > 0, etas[..., :5] / np.where(rate > 0, rate, 1.0), np.nan)


def per_stay_influence(point: NDArray[np.float64], influence: NDArray[np.float64]
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""Per-stay values and their influence values by the delta method.

    For a ratio ``V = a / b`` of two means with influence values ``phi_a``, ``phi_b`` the
    influence of ``V`` is ``(phi_a - V phi_b) / b``.

    Parameters
    ----------
    point : ndarray of shape (8,)
        Five etas then three end rates (:func:`per_stay_values`).
    influence : ndarray of shape (n, 8)
        Their centred per-row influence values.

    Returns
    -------
    value : ndarray of shape (5,)
    influence : ndarray of shape (n, 5)
        NaN in a column whose end rate is not positive.
    """
    value = per_stay_values(point)
    rate = point[5:][CHAIN_OF]
    with np.errstate(divide="ignore", invalid="ignore"):
        infl = (influence[:, :5] - value[None, :] * influence[:, 5:][:, CHAIN_OF]) / rate
    return value, infl
