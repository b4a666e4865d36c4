r"""Values within the levels of a column the Q-model pools over and the target policy reads.

A table pooled over a categorical column that does not change the dynamics (a care site,
:func:`equicare.data.choose_cells`) values every next state with the policy of the row that
reached it. When the target policy reads that column, the pooled ``Q(s, a)`` mixes the levels'
futures: the overall value stays right (the mixing errors cancel over the levels), the value
*within* a level does not (on 700-state Garnet panels -6% and +5% for sites that follow a good
and a poor policy).

The level's own value needs the dynamics pooled and the policy the level's members follow:
``Q_l = R + gamma P (pi_l Q_l)`` over all rows, with ``pi_l`` the target policy at level ``l``.
This module builds ``pi_l`` at every row of the panel:

* ``"counterfactual"``: the target is a policy object (a model folder), so it is asked at every
  row with the column set to the level (exact for any policy of the state);
* ``"empirical"``: the target is a policy file (probabilities at the logged rows only). Each
  kept cell takes the mean of the target probabilities over the level's rows in that cell, and a
  cell the level's episodes never visit the mean over all rows (the pooled policy); the share of
  rows so backed off is reported.

The level's own rows keep their own probabilities in both. Fitting the chosen Q-model with these
probabilities on all rows gives the level's ``Q_l`` (:func:`level_prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._cells import cell_means, column_positions
from equicare.ope._fqe import FQEConfig, _cells, fit_fqe_logged
from equicare.ope._prepare import Prepared

__all__ = ["LevelPolicy", "at_level", "level_target_probs", "level_prepared",
           "counterfactual_capable", "refits_per_level", "REFIT_MODELS"]

#: Q-models refitted per level (cheap sparse solves); gbm and mlp keep the pooled fit.
REFIT_MODELS = ("tabular", "linear")


@dataclass(frozen=True)
class LevelPolicy:
    """The target policy the members of one level follow, at every row of the panel.

    Attributes
    ----------
    probs : ndarray of shape (n_steps, n_actions)
    source : {"counterfactual", "empirical"}
    backed_off : float
        Share of the panel's rows whose cell the level's episodes never visit, valued with the
        pooled policy (``"empirical"`` only; 0 for ``"counterfactual"``).
    """

    probs: NDArray[np.float64]
    source: Literal["counterfactual", "empirical"]
    backed_off: float


def counterfactual_capable(policy: Any) -> bool:
    """Whether ``policy`` can be asked at states the panel did not log (not a policy file)."""
    from equicare.policy._file import FilePolicy

    return hasattr(policy, "action_probs") and not isinstance(policy, FilePolicy)


def _level_code(dataset: TrajectoryDataset, j: int, label: str) -> int | None:
    levels = [str(v) for v in dataset.categorical_levels[j]]
    return levels.index(label) if label in levels else None


def at_level(dataset: TrajectoryDataset, j: int, code: int) -> TrajectoryDataset:
    """``dataset`` with categorical column ``j`` set to the level ``code`` at every row."""
    assert dataset.categorical is not None
    cat = np.array(dataset.categorical, dtype=np.int64, copy=True)
    cat[:, j] = code
    return replace(dataset, categorical=cat, _cache={})


def level_target_probs(dataset: TrajectoryDataset, probs: NDArray[np.float64], column: str,
                       cells: tuple[str, ...], episodes: NDArray[np.int64], label: str,
                       policy: Any = None) -> LevelPolicy:
    """The target policy of the level ``label`` of ``column`` at every row.

    Parameters
    ----------
    dataset : TrajectoryDataset
    probs : ndarray of shape (n_steps, n_actions)
        The target policy at the logged rows.
    column : str
        The pooled categorical state column (also the subgroup attribute).
    cells : tuple of str
        The columns the Q-model's cells keep (the empirical means are per their combinations).
    episodes : ndarray of int
        The level's episodes (the subgroup).
    label : str
        The level, as the subgroup labels it.
    policy : Policy, optional
        The target policy object; when it is not a policy file and ``label`` is one of the
        column's levels, the probabilities are counterfactual.

    Returns
    -------
    LevelPolicy
    """
    p = np.asarray(probs, dtype=np.float64)
    own = np.zeros(dataset.n_episodes, dtype=bool)
    own[np.asarray(episodes, dtype=np.int64)] = True
    own_rows = own[dataset.episode_index]
    j = column_positions(dataset, (column,), "level_target_probs")[0]
    code = _level_code(dataset, j, label)
    if policy is not None and code is not None and counterfactual_capable(policy):
        from equicare.ope._prepare import target_probabilities

        out = np.where(own_rows[:, None], p,
                       target_probabilities(at_level(dataset, j, code), policy))
        return LevelPolicy(probs=out, source="counterfactual", backed_off=0.0)
    if cells:  # the Q-table's cells, compressed to the visited ones
        _, cell = np.unique(_cells(dataset, cells)[0], return_inverse=True)
    else:
        cell = np.zeros(dataset.n_steps, dtype=np.int64)
    cell = cell.astype(np.int64).ravel()
    pooled, _ = cell_means(p, cell)
    level, cnt_own = cell_means(p, cell, own_rows)
    table = np.where((cnt_own > 0)[:, None], level, pooled)
    out = np.where(own_rows[:, None], p, table[cell])
    backed = float(np.mean(cnt_own[cell] == 0))
    return LevelPolicy(probs=out, source="empirical", backed_off=backed)


def level_prepared(prep: Prepared, dataset: TrajectoryDataset, level: LevelPolicy,
                   random_state: int) -> Prepared:
    """``prep`` with the Q-model refitted on all rows under the level's policy.

    The importance ratios are unchanged (the level's own rows keep their probabilities); only
    ``Q`` at the logged actions and ``V`` change. Use the result for the level's episodes only.
    """
    cfg = prep.q_config
    if cfg is None or cfg.model not in REFIT_MODELS:
        raise ValueError(f"level_prepared needs a {' or '.join(REFIT_MODELS)} Q-model, got "
                         f"{None if cfg is None else cfg.model!r}.")
    qfit = fit_fqe_logged(dataset, level.probs, cfg, random_state=random_state)
    return replace(prep, inputs=prep.inputs.with_q(qfit.q_sa, qfit.v), qfit=qfit)


def refits_per_level(prep: Prepared) -> bool:
    """Whether the prepared Q-model can be refitted per level (:data:`REFIT_MODELS`)."""
    cfg: FQEConfig | None = prep.q_config
    return cfg is not None and cfg.model in REFIT_MODELS
