"""Policies that leave whole rows to current practice, valued as deployed.

Exception rules (:class:`~equicare.policy.TreePolicy` with *usual care* leaves) read "where to
deviate from current practice; otherwise as current practice". The model folder stores an
*estimate* of practice for those rows (``action_probs`` gives it, and ``predict`` outputs it),
but once the rules are deployed the clinicians decide there as they do. Valued **as deployed**,
such a row keeps its logged action with target probability 1 and behaviour probability 1
(:func:`deferred_target`): its importance ratio is exactly 1, whatever the clinicians saw, and
FQE's Bellman target at its state uses the Q-value of the action actually taken (an unbiased draw
of the clinicians' expected value), so no estimate of practice enters the value and the rows
need no behaviour probability at all. On the Garnet test bed (``s700_a25_g1``, 2,000 episodes)
the card's depth-3 rules are worth exactly 0.801 as deployed, 0.711 as stored, practice 0.800.

A policy that defers whole rows says so with ``deferred_rows(dataset)`` (bool per row, or None).
:func:`as_deployed` wraps it in a :class:`DeployedPolicy` for ``usual_care="deployed"`` (the
default of ``evaluate``, ``audit`` and ``frontier``); ``"stored"`` values the stored estimate.

Cell policies (:class:`~equicare.policy.CellPolicy`) defer *part* of a row's mass (the actions
never logged in the cell) and handle it themselves in ``action_probs`` (module docstring of
:mod:`equicare.policy._cells`); they have no ``deferred_rows`` and are valued as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError

__all__ = ["USUAL_CARE", "UsualCare", "DeployedPolicy", "as_deployed", "deferred_target",
           "deployed_rows", "can_defer", "deferred_rows_of", "deferred_share", "deferred_counts",
           "deployed_propensities", "exempt_rows", "check_usual_care", "usual_care_settings"]

#: How rows a policy leaves to current practice are valued: as deployed (the clinicians decide,
#: the default) or with the estimate of practice stored in the model folder.
USUAL_CARE: tuple[str, ...] = ("deployed", "stored")
UsualCare = Literal["deployed", "stored"]
MSG_USUAL_CARE = ("The 'usual_care' parameter of {owner} must be 'deployed' (rows a policy "
                  "leaves to current practice keep the clinicians' logged action) or 'stored' "
                  "(they follow the estimate of practice stored with the policy). Got {got!r} "
                  "instead.")


def check_usual_care(usual_care: Any, owner: str) -> UsualCare:
    """Return ``usual_care`` or raise :class:`InvalidParameterError` naming ``owner``."""
    if usual_care not in USUAL_CARE:
        raise InvalidParameterError(MSG_USUAL_CARE.format(owner=owner, got=usual_care))
    return usual_care  # type: ignore[no-any-return]


def deferred_target(probs: NDArray[np.float64], props: NDArray[np.float64],
                    actions: NDArray[np.int64], deferred: NDArray[np.bool_]
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Target and behaviour probabilities of a policy that defers to the clinicians on some rows.

    Where a policy follows current practice (``deferred``), its action distribution *is* the
    clinicians': the importance ratio of the logged action is exactly 1, whatever the
    clinicians saw, and the logged action is a draw from the target policy there. So those
    rows get the logged action with probability 1 as the target and 1 as the behaviour
    probability: ratio-based estimators weight them by 1, and FQE's Bellman target at such a
    row's state uses the Q-value of the action actually taken (an unbiased draw of the
    clinicians' expected value), so no estimate of practice enters the value.

    Parameters
    ----------
    probs : ndarray of shape (n_steps, n_actions)
        The policy's probabilities (used where it does not defer).
    props : ndarray of shape (n_steps,)
        Behaviour probabilities of the logged actions (any value on deferred rows).
    actions : ndarray of shape (n_steps,)
    deferred : ndarray of shape (n_steps,), bool

    Returns
    -------
    probs, props : ndarray of shape (n_steps, n_actions) and (n_steps,)
    """
    pe = np.array(probs, dtype=np.float64, copy=True)
    b = np.array(props, dtype=np.float64, copy=True)
    rows = np.flatnonzero(deferred)
    pe[rows] = 0.0
    pe[rows, np.asarray(actions)[rows]] = 1.0
    b[rows] = 1.0
    return pe, b


@dataclass(frozen=True, eq=False)
class DeployedPolicy:
    """A policy that defers whole rows to current practice, as deployed.

    ``action_probs`` gives the wrapped policy's probabilities where it decides and the logged
    action with probability 1 where it leaves the row to the clinicians
    (:func:`deferred_target`); the OPE engine and the audit give those rows behaviour
    probability 1 (:meth:`deployed_rows`). Any subset of whole episodes of a panel may be
    asked (a chunk, a block of rows).

    Parameters
    ----------
    policy : Policy
        A policy with ``deferred_rows(dataset)`` (e.g. a :class:`~equicare.policy.TreePolicy`
        of exception rules).
    """

    policy: Any

    @property
    def action_space(self) -> Any:
        """The wrapped policy's action space."""
        return self.policy.action_space

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return int(self.policy.n_actions)

    @property
    def window(self) -> int:
        """Rows of history the wrapped policy reads."""
        return int(getattr(self.policy, "window", 1))

    @property
    def source(self) -> str:
        """The wrapped policy's name in messages."""
        return str(getattr(self.policy, "source", type(self.policy).__name__))

    def check_compatible(self, dataset: Any) -> None:
        """The wrapped policy's check of ``dataset``'s action space (when it has one)."""
        check = getattr(self.policy, "check_compatible", None)
        if callable(check):
            check(dataset)

    def deployed_rows(self, dataset: Any) -> NDArray[np.bool_]:
        """Rows left to the clinicians, shape ``(n_steps,)``."""
        rows = self.policy.deferred_rows(dataset)
        return (np.zeros(dataset.n_steps, dtype=bool) if rows is None
                else np.asarray(rows, dtype=bool))

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``."""
        probs = np.asarray(self.policy.action_probs(dataset), dtype=np.float64)
        rows = self.deployed_rows(dataset)
        if not rows.any():
            return probs
        return deferred_target(probs, np.ones(dataset.n_steps), dataset.actions, rows)[0]


def as_deployed(policy: Any, usual_care: str = "deployed") -> Any:
    """``policy`` as deployed when it defers rows and ``usual_care="deployed"``, else itself."""
    if (usual_care == "deployed" and can_defer(policy)
            and not isinstance(policy, DeployedPolicy)):
        return DeployedPolicy(policy)
    return policy


def deployed_rows(policy: Any, dataset: Any) -> NDArray[np.bool_] | None:
    """Rows a policy valued as deployed leaves to the clinicians (None for any other policy).

    A :class:`DeployedPolicy`'s, or those of any wrapper around one that passes them on with a
    ``deployed_rows(dataset)`` method (e.g. a subgroup level's streamed target policy).
    """
    rows = getattr(policy, "deployed_rows", None)
    return None if not callable(rows) else rows(dataset)


def can_defer(policy: Any) -> bool:
    """Whether a policy may leave whole rows to current practice (has ``deferred_rows``).

    A policy whose ``may_defer`` is False cannot (a policy file without a
    ``follows_practice`` column).
    """
    inner = policy.policy if isinstance(policy, DeployedPolicy) else policy
    return (callable(getattr(inner, "deferred_rows", None))
            and bool(getattr(inner, "may_defer", True)))


def deferred_rows_of(policy: Any, dataset: Any) -> NDArray[np.bool_] | None:
    """Rows a policy leaves to current practice, valued as deployed or not (None: it never can).

    For a policy with ``deferred_rows`` (wrapped in :class:`DeployedPolicy` or not); all False
    when it has usual-care leaves that no row of ``dataset`` reaches.
    """
    if not can_defer(policy):
        return None
    inner = policy.policy if isinstance(policy, DeployedPolicy) else policy
    rows = inner.deferred_rows(dataset)
    return (np.zeros(dataset.n_steps, dtype=bool) if rows is None
            else np.asarray(rows, dtype=bool))


def deferred_share(policy: Any, dataset: Any) -> float | None:
    """Share of ``dataset``'s rows a policy leaves to current practice (None: it never can)."""
    rows = deferred_rows_of(policy, dataset)
    return None if rows is None else float(rows.mean()) if rows.size else 0.0


def deferred_counts(dataset: Any, policy: Any) -> NDArray[np.float64] | None:
    """``[rows left to practice, rows]`` of a chunk (additive over chunks; None: never)."""
    rows = deferred_rows_of(policy, dataset)
    return None if rows is None else np.array([float(rows.sum()), float(rows.size)])


def deployed_propensities(policy: Any, dataset: Any, b: NDArray[np.float64]
                          ) -> NDArray[np.float64]:
    """Behaviour probabilities ``b`` with 1 on the rows a deployed policy leaves to practice."""
    rows = deployed_rows(policy, dataset)
    return b if rows is None else np.where(rows, 1.0, b)


def exempt_rows(probs: NDArray[np.float64], rows: NDArray[np.bool_] | None
                ) -> NDArray[np.float64]:
    """``probs`` with the rows left to the clinicians zeroed, for the support check.

    A deferred row's mass is on the action the clinicians took: none of it is unsupported.
    """
    if rows is None or not rows.any():
        return probs
    out = np.array(probs, dtype=np.float64, copy=True)
    out[rows] = 0.0
    return out


def usual_care_settings(usual_care: str, share: Any) -> dict[str, Any]:
    """Result entries: how rows left to practice were valued, and their share.

    ``share`` is a float (one policy: ``evaluate``) or a dict of policy name to float
    (``audit``: the policies that can defer). ``{"usual_care": None, "deferred_share": None}``
    when no policy can defer a row.
    """
    return {"usual_care": None if share is None else usual_care, "deferred_share": share}
