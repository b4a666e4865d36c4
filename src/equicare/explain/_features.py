"""The candidate features of a distilled tree (records of :func:`equicare.policy.tree_features`)."""

from __future__ import annotations

from typing import Any

from equicare.data import TrajectoryDataset

__all__ = ["feature_records"]


def feature_records(dataset: TrajectoryDataset, window: int = 1) -> list[dict[str, Any]]:
    """The candidate features of the tree for a dataset and a history window.

    Parameters
    ----------
    dataset : TrajectoryDataset
    window : int
        Rows of history (1: current row; 2: also the previous row; more: also counts of each
        action level over the previous ``window - 1`` rows).

    Returns
    -------
    list of dict
        Feature records of :func:`equicare.policy.tree_features`.
    """
    recs: list[dict[str, Any]] = [{"kind": "state", "name": n} for n in dataset.state_names]
    for name, levels in zip(dataset.categorical_names, dataset.categorical_levels, strict=True):
        recs += [{"kind": "categorical", "name": name, "level": str(lv)} for lv in levels]
    if window > 1:
        recs += [{"kind": "prev_state", "name": n} for n in dataset.state_names]
        for c in dataset.action_space.components:
            recs += [{"kind": "prev_action", "component": c.name, "level": lv}
                     for lv in c.levels]
        recs.append({"kind": "prev_reward"})
    if window > 2:
        for c in dataset.action_space.components:
            recs += [{"kind": "recent_action", "component": c.name, "level": lv,
                      "rows": window - 1} for lv in c.levels]
    return recs
