"""Small-cell suppression that differencing cannot undo (primary and complementary suppression).

A group with fewer than :data:`~equicare.utils.MIN_CELL` (11) episodes is never published. That
alone is not enough: when a table publishes its total (the panel's episodes, or a group's
margin published elsewhere) and every other cell, the suppressed cell is the total minus the
others, and so is its sum of returns (``n * value`` of the total minus those of the other
cells). An audit of a 600-member run recovered three single members' returns that way. The
standard remedy of statistical disclosure control is *complementary* suppression (Hundepool et
al., *Statistical Disclosure Control*, Wiley 2012, ch. 4): within every line of a table whose
total is published, the suppressed cells must hold no episode or at least ``min_cell`` of them
together, so the difference only ever reveals a union of at least ``min_cell`` episodes.

:func:`suppressed_cells` applies it to a table of one or more group attributes. Its lines are
the whole table (the panel's total is always published) and, for an intersection, every row and
column (each attribute's margins are published by the single-attribute tables): cells under
``min_cell`` first, then, in any line whose suppressed cells hold between 1 and ``min_cell - 1``
episodes, its smallest published cells until they hold ``min_cell``, repeated until no line
changes. Every table of subgroups (``evaluate``'s, the fairness audit's, the policy card's, the
run report's episode counts) takes its suppressed cells from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.utils import MIN_CELL

__all__ = ["suppressed_cells", "suppressed_labels", "suppressed_levels", "suppress_counts",
           "small_cells_message"]


def _complete_line(n: NDArray[np.int64], sup: NDArray[np.bool_], min_cell: int) -> bool:
    """Suppress the smallest published cells of one line in place; True when any was added."""
    held = int(n[sup].sum())
    if held == 0 or held >= min_cell or sup.all():
        return False
    order = np.flatnonzero(~sup)[np.argsort(n[~sup], kind="stable")]
    need = np.cumsum(n[order]) + held
    take = order[: int(np.searchsorted(need, min_cell)) + 1]
    sup[take] = True
    return True


def suppressed_cells(components: Sequence[Any], min_cell: int = MIN_CELL
                     ) -> tuple[pd.DataFrame, NDArray[np.bool_]]:
    """The cells of a table of group attributes that must not be published.

    Parameters
    ----------
    components : sequence of array-like of shape (n_episodes,)
        Each attribute's label of every episode (one array: a single attribute; several: their
        intersection).
    min_cell : int
        Smallest number of episodes a published cell (or a union revealed by differencing) has.

    Returns
    -------
    cells : pandas.DataFrame
        One row per cell present, columns ``0..k-1`` (the labels, as str) and ``n``.
    suppressed : ndarray of shape (n_cells,), bool
        Primary and complementary suppression.
    """
    frame = pd.DataFrame({j: np.asarray(c).astype(str) for j, c in enumerate(components)})
    cells = frame.value_counts(sort=False).rename("n").reset_index()
    n = cells["n"].to_numpy(dtype=np.int64)
    sup = n < int(min_cell)
    k = len(components)
    lines: list[NDArray[np.int64]] = [np.arange(n.size)]
    if k > 1:
        for j in range(k):
            others = [c for c in range(k) if c != j]
            codes = cells.groupby(others, sort=False).ngroup().to_numpy()
            lines += [np.flatnonzero(codes == g) for g in range(int(codes.max()) + 1)]
    changed = True
    while changed:  # every pass adds cells; a table has finitely many
        changed = False
        for idx in lines:
            part = sup[idx]
            if _complete_line(n[idx], part, int(min_cell)):
                sup[idx] = part
                changed = True
    return cells, sup


def suppressed_labels(components: Sequence[Any], min_cell: int = MIN_CELL) -> set[str]:
    """Labels of the suppressed cells of :func:`suppressed_cells`.

    A single attribute's levels, or intersections joined as
    :meth:`~equicare.data.TrajectoryDataset.intersect_groups` joins them (``"black x female"``).
    """
    cells, sup = suppressed_cells(components, min_cell)
    cols = list(range(len(components)))
    return set(cells.loc[sup, cols].astype(str).agg(" x ".join, axis=1))


def suppressed_levels(labels: Any, min_cell: int = MIN_CELL) -> set[str]:
    """Levels of one attribute that must not be published (primary and complementary).

    Parameters
    ----------
    labels : array-like of shape (n_episodes,)
        Each episode's level.
    min_cell : int
    """
    return suppressed_labels([labels], min_cell)


def suppress_counts(counts: dict[str, int], min_cell: int = MIN_CELL) -> dict[str, int | None]:
    """A table of episodes per level with the suppressed levels' counts set to None.

    Parameters
    ----------
    counts : dict of str to int
        Episodes per level of one attribute (the partition of a published total).
    """
    labels = np.repeat(np.array(list(counts), dtype=object).astype(str),
                       np.asarray(list(counts.values()), dtype=np.int64))
    hide = suppressed_levels(labels, min_cell) if labels.size else set()
    return {k: (None if k in hide else int(v)) for k, v in counts.items()}


def small_cells_message(cells: Sequence[str], min_cell: int = MIN_CELL) -> str:
    """The warning for suppressed subgroup cells (``"race=pacific"``, ...), sizes not named."""
    shown = ", ".join(cells[:10]) + (f" and {len(cells) - 10} more" if len(cells) > 10 else "")
    return (f"{len(cells)} group cells were suppressed: {shown}. A cell with fewer than "
            f"{min_cell} episodes is never published, nor are the cells that would reveal it by "
            "difference from the totals (complementary suppression).")
