"""The Policy protocol and simple policies (callable, tabular, fixed, uniform, mixture)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.utils import row_blocks

__all__ = [
    "Policy",
    "CallablePolicy",
    "TabularPolicy",
    "FixedActionPolicy",
    "UniformPolicy",
    "MixturePolicy",
    "check_probs",
    "greedy_actions",
    "sample_actions",
]

PROB_TOL = 1e-6


@runtime_checkable
class Policy(Protocol):
    """Anything that gives action probabilities for every row of a dataset.

    ``action_probs(dataset)`` returns an array of shape ``(dataset.n_steps, n_actions)`` over the
    flat action index; rows are non-negative and sum to 1. A policy that looks at history reads the
    earlier rows of each episode in ``dataset`` (rows are grouped by episode in time order); it may
    declare ``window`` (rows of history it needs, default 1) so that simulators can pass only that.
    """

    @property
    def n_actions(self) -> int:
        """Number of flat actions (columns of :meth:`action_probs`).

        Read-only: a plain attribute, a property or a frozen dataclass field all satisfy it.
        """
        ...

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``."""
        ...


#: A path given where a policy (or its probability matrix) was expected (tests match it).
MSG_PATH_NOT_PROBS = ("{source}: got the path {path!r}, not a policy; load a policy file or model "
                      "folder first, e.g. equicare.policy.load_policy({path!r}).")


def check_probs(
    probs: Any, n_steps: int, n_actions: int, source: str = "policy"
) -> NDArray[np.float64]:
    """Check a probability matrix and return it as float64.

    Raises
    ------
    PolicyError
        A path instead of probabilities (:data:`MSG_PATH_NOT_PROBS`), values that are not
        numbers, wrong shape, negative or non-finite entries, or rows not summing to 1 within
        1e-6.
    """
    if isinstance(probs, (str, os.PathLike)):  # a path where a policy or its matrix belongs
        raise PolicyError(MSG_PATH_NOT_PROBS.format(source=source, path=str(probs)))
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:  # text, None in a list, a policy-like object
        raise PolicyError(f"{source}: expected a Policy or an array of action probabilities of "
                          f"shape ({n_steps}, {n_actions}); got {type(probs).__name__} that is "
                          f"not numbers ({exc}).") from None
    if p.shape != (n_steps, n_actions):
        raise PolicyError(
            f"{source}: action probabilities must have shape ({n_steps}, {n_actions}),"
            f" got {p.shape}."
        )
    bad = np.zeros(p.shape[0], dtype=bool)
    for sl in row_blocks(p.shape[0], p.shape[1]):  # no (n_steps, n_actions) masks
        block = p[sl]
        bad[sl] = ~np.isfinite(block).all(axis=1) | (block < 0).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise PolicyError(
            f"{source}: {rows.size} rows have negative or non-finite probabilities "
            f"(first rows: {rows[:5].tolist()})."
        )
    s = p.sum(axis=1)
    off = np.abs(s - 1.0) > PROB_TOL
    if off.any():
        rows = np.flatnonzero(off)
        raise PolicyError(
            f"{source}: probabilities of {rows.size} rows do not sum to 1 within "
            f"{PROB_TOL:g} (first rows: {rows[:5].tolist()}, sums "
            f"{np.round(s[rows[:5]], 6).tolist()})."
        )
    return p


def greedy_actions(probs: NDArray[np.float64]) -> NDArray[np.int64]:
    """Most likely action per row, shape ``(n,)``."""
    return np.argmax(probs, axis=1).astype(np.int64)


def sample_actions(probs: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.int64]:
    """Sample one action per row by inverse CDF (vectorised), shape ``(n,)``."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


@dataclass(frozen=True)
class CallablePolicy:
    """Wrap ``fn(states) -> probs`` (or ``fn(dataset) -> probs`` with ``takes_dataset=True``).

    Parameters
    ----------
    fn : callable
        Maps features of shape ``(n, d)`` to probabilities of shape ``(n, n_actions)``.
    n_actions : int
    takes_dataset : bool
        Pass the whole dataset instead of ``dataset.features()``.
    """

    fn: Callable[[Any], NDArray[np.float64]]
    n_actions: int
    takes_dataset: bool = False
    window: int = 1

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``."""
        arg = dataset if self.takes_dataset else dataset.features()
        return check_probs(self.fn(arg), dataset.n_steps, self.n_actions, "CallablePolicy")


@dataclass(frozen=True)
class TabularPolicy:
    """Probabilities per categorical state: ``table[state_code]`` is a distribution over actions.

    Parameters
    ----------
    table : ndarray of shape (n_states, n_actions)
    column : int
        Which categorical state column of the dataset indexes the table.
    """

    table: NDArray[np.float64]
    column: int = 0
    window: int = 1

    def __post_init__(self) -> None:
        t = np.asarray(self.table, dtype=np.float64)
        check_probs(t, t.shape[0], t.shape[1], "TabularPolicy table")
        object.__setattr__(self, "table", t)

    @property
    def n_actions(self) -> int:
        """Number of flat actions."""
        return int(self.table.shape[1])

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``."""
        if dataset.categorical is None:
            raise PolicyError("TabularPolicy needs a dataset with categorical_states.")
        codes = dataset.categorical[:, self.column]
        if codes.max() >= self.table.shape[0]:
            raise PolicyError(
                f"TabularPolicy has {self.table.shape[0]} states but the dataset has "
                f"code {int(codes.max())}."
            )
        return self.table[codes]


@dataclass(frozen=True)
class FixedActionPolicy:
    """Always take flat action ``action``."""

    action: int
    n_actions: int
    window: int = 1

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """One-hot rows, shape ``(n_steps, n_actions)``."""
        if not 0 <= self.action < self.n_actions:
            raise PolicyError(f"action {self.action} out of range [0, {self.n_actions}).")
        p = np.zeros((dataset.n_steps, self.n_actions))
        p[:, self.action] = 1.0
        return p


@dataclass(frozen=True)
class UniformPolicy:
    """Uniform over all actions, or over a support mask."""

    n_actions: int
    support: NDArray[np.bool_] | None = None
    window: int = 1

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Same distribution at every row, shape ``(n_steps, n_actions)``."""
        m = np.ones(self.n_actions) if self.support is None else np.asarray(self.support, float)
        return np.broadcast_to(m / m.sum(), (dataset.n_steps, self.n_actions)).copy()


@dataclass(frozen=True)
class MixturePolicy:
    """``sum_j w_j * policy_j``: e.g. an epsilon-mixture of a learned and the behaviour policy."""

    policies: Sequence[Any]
    weights: Sequence[float]
    window: int = field(default=1)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if len(self.policies) != w.size or (w < 0).any() or abs(w.sum() - 1) > 1e-9:
            raise InvalidParameterError(
                "MixturePolicy needs one non-negative weight per policy, summing to 1."
            )
        object.__setattr__(self, "window", max(int(getattr(p, "window", 1)) for p in self.policies))

    @property
    def n_actions(self) -> int:
        """Number of flat actions."""
        return int(self.policies[0].n_actions)

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Weighted average of the component policies, shape ``(n_steps, n_actions)``."""
        out = np.zeros((dataset.n_steps, self.n_actions))
        for p, w in zip(self.policies, self.weights, strict=True):
            if w:
                out += w * p.action_probs(dataset)
        return out
