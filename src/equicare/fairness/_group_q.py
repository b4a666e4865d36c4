r"""The audit's group values of FQE, DR and WDR with ``evaluate``'s check of the Q-model by group.

The Q-model of ``fqe``, ``dr`` and ``wdr`` is fitted on every audited episode. When the groups
differ in a way the state does not carry (a latent HbA1c level that reverts to the group's own
mean), the pooled ``Q`` is right on average and wrong within each group, and every group's FQE
is pulled towards the panel's value: the outcome gap between groups is biased towards zero
exactly when the groups differ. On a three-group panel built outside equicare (latent levels
0, 0.8 and 1.6, true values 1.26, -3.91 and -8.80, a true gap of 10.06) the audit's FQE group
values were -1.71, -2.89 and -4.07, a gap of 2.36 [2.19, 2.54].

The audit now makes ``evaluate``'s check (:mod:`equicare.ope._group_check`, whose functions it
calls) on each published group: the logged actions' TD residuals of the pooled Q-model within
the group, against those of the other groups (:func:`~equicare.ope._group_check.plan_checks`).
A group whose residuals stand out gets the same Q-model class and cells fitted on its own
episodes (in memory :func:`~equicare.ope._group_check.own_prepared`; streamed the Q-model's
passes over the group's episodes, :mod:`equicare.fairness._stream`), and its value and its
bootstrap replicates (the same replicate weights, with the own Q-model's refit linearised in
each) replace the pooled ones, so the value gap, the worst group and the Ginis are built from
the corrected values. A group whose DR - FQE is significantly non-zero gets FQE's interval
joined with the bias-aware interval of that bias. The audit JSON says what was done per group
(``value_by_group[g]["q_check"]``, ``evaluate``'s form); DR - FQE is published only where the
group's DR weights have an effective sample size of ``min_cell`` or more (DR would otherwise be
given back by difference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from equicare.ope._group_check import GroupQCheck, biased_groups_message, refitted_check

if TYPE_CHECKING:
    from equicare.data import TrajectoryDataset
    from equicare.fairness._groups import GroupIndex
    from equicare.fairness._outcome import OutcomeFrame
    from equicare.ope._prepare import Prepared

__all__ = ["OwnValues", "corrected_frame", "memory_checks", "own_values", "refit_message",
           "dr_withheld", "value_of_sums"]


@dataclass(frozen=True)
class OwnValues:
    """A group's value with the Q-model fitted on its own episodes.

    Attributes
    ----------
    value : float
    reps : ndarray of shape (n_boot,) or None
        Its bootstrap replicates (the audit's replicate weights of the group's episodes, the
        own Q-model's refit linearised in each).
    gaps : ndarray of shape (2, 2) or None
        The own Q-model's summed check statistics
        (:func:`~equicare.ope._group_check.gap_sums`).
    """

    value: float
    reps: NDArray[np.float64] | None
    gaps: NDArray[np.float64] | None


def value_of_sums(parts: Any, key: str, point: NDArray[np.float64],
                  reps: NDArray[np.float64] | None) -> tuple[float, NDArray[np.float64] | None]:
    """The value of ``key`` from a group's sums of ``[parts, 1]``, and of its replicates.

    ``point`` has shape ``(n_parts + 1,)`` and ``reps`` ``(n_boot, n_parts + 1)`` (the sums
    weighted by each replicate's weights), summed in memory or over a streamed panel's chunks.
    """
    from equicare.ope import combine

    value = float(combine(parts, point[:-1], np.asarray(point[-1]))[key])
    if reps is None:
        return value, None
    return value, np.asarray(combine(parts, reps[:, :-1], reps[:, -1])[key], dtype=np.float64)


def own_values(prep: Prepared, dataset: TrajectoryDataset, episodes: NDArray[np.int64], key: str,
               weights: NDArray[np.float64] | None, truncate: float | None, seed: int
               ) -> OwnValues:
    """A group's value of ``key`` with the Q-model refitted on its ``episodes`` (in memory).

    Parameters
    ----------
    prep : Prepared
        The policy's prepared inputs over every episode (the pooled Q-model).
    dataset : TrajectoryDataset
    episodes : ndarray of shape (n_group,)
    key : {"fqe", "dr", "wdr"}
    weights : ndarray of shape (n_boot, n_episodes), optional
        The audit's replicate weights of every episode.
    truncate : float, optional
    seed : int
        Of the refit (:func:`~equicare.ope._group_check.own_prepared`).
    """
    from equicare.ope._core import episode_parts
    from equicare.ope._evaluate import refit_effects
    from equicare.ope._group_check import episode_gaps, gap_sums, own_prepared

    own = own_prepared(prep, dataset, episodes, seed)
    parts = episode_parts(own.inputs, [key], truncate=truncate)
    cols = np.concatenate([parts.matrix, np.ones((parts.matrix.shape[0], 1))], axis=1)
    w = None if weights is None else weights[:, episodes]
    value, reps = value_of_sums(parts, key, cols.sum(axis=0), None if w is None else w @ cols)
    if reps is not None and w is not None and own.q_linearised:  # the own Q-model's refit
        every = np.arange(own.inputs.n_episodes)
        reps = reps + (w - 1.0) @ refit_effects(own, every, [key], truncate)[:, 0]
    gaps = episode_gaps(own.inputs, truncate)
    return OwnValues(value=value, reps=reps, gaps=None if gaps is None else gap_sums(gaps))


def memory_checks(prep: Prepared, dataset: TrajectoryDataset, key: str, gi: GroupIndex,
                  weights: NDArray[np.float64] | None, truncate: float | None, seed: int
                  ) -> tuple[dict[str, GroupQCheck], dict[str, OwnValues]]:
    """Each published group's check of the pooled Q-model, and the refitted groups' values.

    Every published group is checked, as ``evaluate`` checks every published level; those
    whose TD residuals stand out get their own Q-model when it can be refitted
    (:func:`~equicare.ope._levels.refits_per_level`).
    """
    from equicare.ope._group_check import episode_gaps, gap_sums, needs_own_fit, plan_checks
    from equicare.ope._levels import refits_per_level

    sets = {g: np.flatnonzero(gi.codes == j) for j, g in enumerate(gi.labels)}
    sums: dict[str, NDArray[np.float64] | None] = {}
    for g, ep in sets.items():
        gaps = episode_gaps(prep.inputs.subset(ep), truncate)
        sums[g] = None if gaps is None else gap_sums(gaps)
    checks = plan_checks(sums, {g: int(ep.size) for g, ep in sets.items()})
    own = {g: own_values(prep, dataset, sets[g], key, weights, truncate, seed)
           for g, chk in checks.items() if needs_own_fit(chk, refits_per_level(prep))}
    return checks, own


def dr_withheld(cells: Mapping[str, Any], min_cell: int) -> set[str]:
    """The groups whose DR weights have an ESS below ``min_cell`` (their DR - FQE withheld).

    ``cells`` maps each published group to its :class:`~equicare.ope._ess.WeightSums`.
    """
    from equicare.ope._ess import low_ess_groups

    return set(low_ess_groups(dict(cells), ("dr",), min_cell).get("dr", {}))


def corrected_frame(frame: OutcomeFrame, checks: Mapping[str, GroupQCheck],
                    own: Mapping[str, OwnValues], withheld: Collection[str] = ()
                    ) -> OutcomeFrame:
    """The frame with each refitted group's value and replicates, and every group's check.

    A group without a value (:attr:`OutcomeFrame.undefined`) keeps it undefined. ``withheld``:
    groups whose DR - FQE is not published (:func:`dr_withheld`); an undefined group's is not
    either. The gap, worst group and Ginis follow from the corrected values and replicates.
    """
    values = np.array(frame.values, dtype=np.float64)
    reps = None if frame.value_reps is None else np.array(frame.value_reps, dtype=np.float64)
    final: dict[str, GroupQCheck] = {}
    for g, chk in checks.items():
        i = frame.groups.index(g)
        if g in frame.undefined:
            final[g] = chk.without_weighted()
            continue
        mine = own.get(g)
        if mine is not None:
            values[i] = mine.value
            if reps is not None and mine.reps is not None:
                reps[:, i] = mine.reps
            chk = refitted_check(mine.gaps, int(frame.counts[i]), chk)
        final[g] = chk.without_weighted() if g in withheld else chk
    return dataclasses.replace(frame, values=values, value_reps=reps, q_checks=final)


@dataclass(frozen=True)
class _Checked:
    q_check: GroupQCheck


def refit_message(policy: str, frame: OutcomeFrame, q_name: str | None) -> str | None:
    """``evaluate``'s warning on refitted groups and biased FQE, naming the policy, or None."""
    msg = biased_groups_message({frame.group: {g: _Checked(c)
                                               for g, c in frame.q_checks.items()}}, q_name)
    return None if msg is None else f"policy {policy!r}: {msg}"
