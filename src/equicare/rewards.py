"""Multi-component reward shaping, ``R = sum_k w_k R_k``, with per-component returns kept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError

__all__ = ["RewardSpec", "CARE_DEFAULT_WEIGHTS", "shape_reward", "component_returns"]

#: Default weights of the care-management panel (primary outcome, engagement, milestones).
CARE_DEFAULT_WEIGHTS: dict[str, float] = {"primary": 1.0, "engagement": 0.3, "intermediate": 0.5}


@dataclass(frozen=True, kw_only=True)
class RewardSpec:
    """Names and weights of reward components.

    Parameters
    ----------
    names : tuple of str
    weights : tuple of float
        Finite weights, one per name.
    """

    names: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.weights) or not self.names:
            raise InvalidParameterError(
                "RewardSpec needs one weight per component name (at least one).")
        if not np.all(np.isfinite(self.weights)):
            raise InvalidParameterError(
                f"Reward weights must be finite numbers, got {self.weights}.")

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> RewardSpec:
        """Build from ``{name: weight}`` (order kept)."""
        return cls(names=tuple(weights), weights=tuple(float(v) for v in weights.values()))

    def to_dict(self) -> dict[str, float]:
        """``{name: weight}``."""
        return dict(zip(self.names, self.weights, strict=True))

    def shape(self, components: NDArray[np.float64]) -> NDArray[np.float64]:
        """Shaped reward of rows, see :func:`shape_reward`."""
        return shape_reward(components, np.asarray(self.weights))


def shape_reward(
    components: NDArray[np.float64], weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Weighted sum of reward components.

    Parameters
    ----------
    components : ndarray of shape (n_steps, n_components)
    weights : ndarray of shape (n_components,)

    Returns
    -------
    ndarray of shape (n_steps,)
        ``components @ weights``.
    """
    c = np.asarray(components, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != w.shape[0]:
        raise InvalidParameterError(f"components {c.shape} and weights {w.shape} do not match.")
    if not np.all(np.isfinite(w)):
        raise InvalidParameterError(f"Reward weights must be finite numbers, got {w.tolist()}.")
    return c @ w


def component_returns(
    components: NDArray[np.float64], episode_offsets: NDArray[np.int64], gamma: float = 1.0
) -> NDArray[np.float64]:
    """Discounted return of each episode per component.

    Parameters
    ----------
    components : ndarray of shape (n_steps, n_components)
    episode_offsets : ndarray of shape (n_episodes + 1,)
    gamma : float

    Returns
    -------
    ndarray of shape (n_episodes, n_components)
        ``sum_t gamma^t R_k[t]`` per episode and component.
    """
    c = np.asarray(components, dtype=np.float64)
    offs = np.asarray(episode_offsets, dtype=np.int64)
    lengths = np.diff(offs)
    step = np.arange(c.shape[0]) - np.repeat(offs[:-1], lengths)
    disc = gamma ** step.astype(np.float64)
    return np.add.reduceat(c * disc[:, None], offs[:-1], axis=0)
