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
column whose margin the single-attribute table publishes (a margin it suppresses is no line; the
union of its suppressed margins is one), and likewise the published cells of every smaller
intersection (:func:`_margin_lines`): cells under
``min_cell`` first, then, in any line whose suppressed cells hold between 1 and ``min_cell - 1``
episodes, its smallest published cells until they hold ``min_cell``, repeated until no line
changes. For an intersection, lines share cells, so a chain across lines can still pin a small
cell down (a column's single suppressed cell of 30 is its total minus the others, and its row
then gives the 3 beside it): while :func:`determined_cells` finds a small cell determined by
the published cells and totals, the smallest published cell sharing a line with it is
suppressed too. Every table of subgroups (``evaluate``'s, the fairness audit's, the policy
card's, the run report's episode counts) takes its suppressed cells from here.

Saved models must not carry row-level values either (a model folder is shared, a panel holds
health data): :func:`coarse_bounds`, :func:`tail_quantile` and :func:`round_significant` give
the summaries a model needs (clipping ranges, interpolation knots, a typical state) as
interpolated quantiles with at least ``min_cell`` rows beyond them, rounded to a coarse grid,
instead of a column's minimum, maximum or any single row's value; :func:`quantile_edges` gives
quantile bins whose edges lie between observed values.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError, SmallCellWarning
from equicare.utils import MIN_CELL

__all__ = ["suppressed_cells", "suppressed_labels", "suppressed_levels", "split_withheld",
           "determined_cells",
           "suppress_counts", "small_count", "few_members",
           "share_suppressed", "share_table_suppressed",
           "small_cells_message", "round_significant", "tail_quantile", "coarse_bounds",
           "quantile_edges", "gap_edges",
           "pooled_level_shares",
           "MSG_LOW_MIN_CELL", "low_min_cell_message", "warn_low_min_cell", "MSG_LOW_ESS",
           "MSG_LOW_ESS_COMPLEMENT", "sums_ess", "low_ess_cells", "tail_range"]

#: The warning when a caller lowers ``min_cell`` below :data:`~equicare.utils.MIN_CELL` (tests
#: match it).
MSG_LOW_MIN_CELL = ("{owner}: min_cell={min_cell} is below {floor}: groups of fewer than {floor} "
                    "episodes are published, so this output is not privacy-safe; do not share it "
                    "outside the team allowed to see row-level data.")


def low_min_cell_message(min_cell: int, owner: str) -> str | None:
    """:data:`MSG_LOW_MIN_CELL` when ``min_cell`` is below 11, else None."""
    if int(min_cell) >= MIN_CELL:
        return None
    return MSG_LOW_MIN_CELL.format(owner=owner, min_cell=int(min_cell), floor=MIN_CELL)


def warn_low_min_cell(min_cell: int, owner: str, stacklevel: int = 3) -> None:
    """Emit a :class:`~equicare.exceptions.SmallCellWarning` when ``min_cell`` is below 11.

    Lowering ``min_cell`` (``--min-cell``) is allowed (an analyst inside the data's trust
    boundary may want every group), but the output then holds cells the product's privacy rule
    suppresses; the result JSON records the ``min_cell`` used.
    """
    msg = low_min_cell_message(min_cell, owner)
    if msg is not None:
        warnings.warn(msg, SmallCellWarning, stacklevel=stacklevel)


def _complete_line(n: NDArray[np.int64], sup: NDArray[np.bool_], min_cell: int,
                   outside: NDArray[np.bool_] | None = None) -> bool:
    """Suppress the smallest published cells of one line in place; True when any was added.

    The suppressed cells must hold 0 or at least ``min_cell`` episodes together, and a cell
    withheld from outside (``outside``) is never the line's only suppressed cell (its value
    would be the total minus the published cells).
    """
    if sup.all():
        return False
    held = int(n[sup].sum())
    alone = outside is not None and int(sup.sum()) == 1 and bool(outside[sup].any())
    if not alone and (held == 0 or held >= min_cell):
        return False
    order = np.flatnonzero(~sup)[np.argsort(n[~sup], kind="stable")]
    need = np.cumsum(n[order]) + held
    take = order[: max(int(np.searchsorted(need, min_cell)) + 1, 1)]
    sup[take] = True
    return True


def suppressed_cells(components: Sequence[Any], min_cell: int = MIN_CELL,
                     withheld: Collection[str] = ()
                     ) -> tuple[pd.DataFrame, NDArray[np.bool_]]:
    """The cells of a table of group attributes that must not be published.

    Parameters
    ----------
    components : sequence of array-like of shape (n_episodes,)
        Each attribute's label of every episode (one array: a single attribute; several: their
        intersection).
    min_cell : int
        Smallest number of episodes a published cell (or a union revealed by differencing) has.
    withheld : collection of str, optional
        Cells suppressed from outside, whatever their size (labels as
        :func:`suppressed_labels` writes them: ``"black"``, ``"black x female"``), e.g. the
        held-out cells of :func:`split_withheld`. They count as primary suppressions: the lines
        holding them are completed like those of small cells, and a line whose only suppressed
        cell is withheld gets its smallest other cell suppressed too (alone, the withheld value
        is the line's total minus its published cells). Labels the table lacks are ignored.

    Returns
    -------
    cells : pandas.DataFrame
        One row per cell present, columns ``0..k-1`` (the labels, as str) and ``n``.
    suppressed : ndarray of shape (n_cells,), bool
        Primary and complementary suppression.
    """
    cells, sup, _ = _suppress(components, min_cell, withheld)
    return cells, sup


def _suppress(components: Sequence[Any], min_cell: int, withheld: Collection[str]
              ) -> tuple[pd.DataFrame, NDArray[np.bool_], list[NDArray[np.int64]]]:
    """:func:`suppressed_cells` with the lines (cell indices) whose totals are published."""
    frame = pd.DataFrame({j: np.asarray(c).astype(str) for j, c in enumerate(components)})
    cells = frame.value_counts(sort=False).rename("n").reset_index()
    n = cells["n"].to_numpy(dtype=np.int64)
    sup = n < int(min_cell)
    k = len(components)
    outside = np.zeros(n.size, dtype=bool)
    if withheld:
        names = cells[list(range(k))].astype(str).agg(" x ".join, axis=1).to_numpy(dtype=str)
        outside = np.isin(names, np.array(sorted(map(str, withheld)), dtype=str))
        sup |= outside
    lines = [np.arange(n.size)] + _margin_lines(frame, cells, min_cell)
    sensitive = (n < int(min_cell)) | outside
    while True:  # every pass adds cells; a table has finitely many
        changed = True
        while changed:
            changed = False
            for idx in lines[1:] + lines[:1]:  # the whole table last: its rows fill it first
                part = sup[idx]
                if _complete_line(n[idx], part, int(min_cell), outside[idx]):
                    sup[idx] = part
                    changed = True
        if k == 1 or not _break_determined(lines, n, sup, sensitive):
            return cells, sup, lines


def _margin_lines(frame: pd.DataFrame, cells: pd.DataFrame, min_cell: int
                  ) -> list[NDArray[np.int64]]:
    """Lines of an intersection whose totals the tables of fewer attributes publish.

    Each proper subset of the attributes has its own table (``race``, ``sex``; ``race x sex``
    within ``race x sex x age``), protected by this same suppression with ``min(min_cell,
    MIN_CELL)`` (what every other table publishes). Its published cells are lines of the
    intersection, and so is, within each of its own lines, the union of its suppressed cells
    (their total is the line's minus its published cells). A suppressed margin is no line:
    three members of sex X, suppressed in every table of sex, gave a column ``X`` whose total
    pinned its single cell ``white x X``, and completing it suppressed every cell of
    ``race x sex`` (8,000 members: the audit refused to run).
    """
    k = frame.shape[1]
    out: dict[bytes, NDArray[np.int64]] = {}
    for size in range(1, k):
        for sub in itertools.combinations(range(k), size):
            m_cells, m_sup, m_lines = _suppress([frame[j] for j in sub],
                                                min(int(min_cell), MIN_CELL), ())
            at = cells.groupby(list(sub), sort=False).indices
            keys = [tuple(r) if size > 1 else r[0]
                    for r in m_cells[list(range(size))].itertuples(index=False)]
            for line in [np.array([i]) for i in np.flatnonzero(~m_sup)] + [
                    m[m_sup[m]] for m in m_lines]:
                if line.size:
                    idx = np.sort(np.concatenate([at[keys[i]] for i in line]))
                    out.setdefault(idx.tobytes(), idx)
    return list(out.values())


def determined_cells(lines: Sequence[NDArray[np.int64]], sup: NDArray[np.bool_]
                     ) -> NDArray[np.bool_]:
    """Suppressed cells whose value the published cells and line totals determine exactly.

    Each line's total is published, and so is every cell outside ``sup``; a suppressed cell is
    determined when its indicator lies in the row space of the lines restricted to the
    suppressed cells, i.e. when every null-space vector of that matrix is 0 at the cell.
    (In a two-way table: when the cell is a bridge of the graph whose edges are the
    suppressed cells between their row and column.)

    Parameters
    ----------
    lines : sequence of ndarray of int
        Cell indices of each line whose total is published.
    sup : ndarray of shape (n_cells,), bool

    Returns
    -------
    ndarray of shape (n_cells,), bool
    """
    a = np.zeros((len(lines), sup.size))
    for i, line in enumerate(lines):
        a[i, line] = 1.0
    return _determined(a, sup)


def _break_determined(lines: Sequence[NDArray[np.int64]], n: NDArray[np.int64],
                      sup: NDArray[np.bool_], sensitive: NDArray[np.bool_]) -> bool:
    """Suppress, in place, one more cell next to a determined sensitive cell; True if any.

    Line-wise completion leaves, in a table of several attributes, a chain across lines: a
    column whose only suppressed cell is 30 gives it back, and then its row gives back the
    small cell beside it. The smallest published cell sharing a line with the first
    determined small (or withheld) cell is suppressed; the caller completes the lines again.
    """
    bad = np.flatnonzero(determined_cells(lines, sup) & sensitive)
    if bad.size == 0:
        return False
    near = np.zeros(sup.size, dtype=bool)
    for line in lines[1:]:  # rows and columns (the whole table's total holds every cell)
        if np.isin(bad[0], line):
            near[line] = True
    near &= ~sup
    if not near.any():
        near = ~sup  # no published neighbour: the smallest published cell anywhere
        if not near.any():
            return False
    cand = np.flatnonzero(near)
    sup[cand[np.argmin(n[cand])]] = True
    return True


def suppressed_labels(components: Sequence[Any], min_cell: int = MIN_CELL,
                      withheld: Collection[str] = ()) -> set[str]:
    """Labels of the suppressed cells of :func:`suppressed_cells`.

    A single attribute's levels, or intersections joined as
    :meth:`~equicare.data.TrajectoryDataset.intersect_groups` joins them (``"black x female"``);
    ``withheld`` as in :func:`suppressed_cells`.
    """
    cells, sup = suppressed_cells(components, min_cell, withheld)
    cols = list(range(len(components)))
    # row by row: with no suppressed cell, ``agg(..., axis=1)`` of the empty frame is a frame,
    # and ``set`` of it was its column names, {0}: a group labelled "0" (sex or race coded
    # 0/1/...) was suppressed from every audit whenever nothing else was
    return {" x ".join(map(str, row)) for row in cells.loc[sup, cols].itertuples(index=False)}


def suppressed_levels(labels: Any, min_cell: int = MIN_CELL,
                      withheld: Collection[str] = ()) -> set[str]:
    """Levels of one attribute that must not be published (primary and complementary).

    Parameters
    ----------
    labels : array-like of shape (n_episodes,)
        Each episode's level.
    min_cell : int
    withheld : collection of str, optional
        Levels suppressed from outside (:func:`suppressed_cells`).
    """
    return suppressed_labels([labels], min_cell, withheld)


def split_withheld(labels: Any, part: Any, min_cell: int = MIN_CELL) -> set[str]:
    """Levels whose count within one part of a split must not be published with the whole's.

    A run publishes each level's episodes in the whole panel and tables of one part of it (the
    held-out half). The table group x {part, rest} then has published margins, and a published
    part cell gives its rest cell by difference: a level of 18 with 12 held-out episodes
    publishes its 6 training episodes (and, with a value of the whole panel, their mean
    return). :func:`suppressed_cells` on that table does not prevent it: it completes each line
    so that its suppressed cells hold ``min_cell`` episodes, but a line's single suppressed
    cell of 12 is still its total minus the others, and gives back the 6 across the other line.

    The rule here: a level is withheld from the part's tables when its part cell or its rest
    cell holds 1 to ``min_cell - 1`` episodes (primary); then, while the withheld levels' part
    cells or rest cells hold 1 to ``min_cell - 1`` episodes together, the level with the
    smallest part cell joins them (complementary). So no level is withheld alone (one alone has
    a small cell, which makes a sum small): each withheld part cell is unknown together with
    its rest cell, and the differences of the part's and the rest's totals give only the
    withheld levels' sums, each 0 or at least ``min_cell``. Levels absent from the part (no
    cell to publish) are never withheld; a level with no rest episode has nothing to reveal.

    Parameters
    ----------
    labels : array-like of shape (n_episodes,)
        Each episode's level in the whole panel.
    part : array-like of shape (n_episodes,), bool
        Whether the episode is in the published part (the held-out half).
    min_cell : int

    Returns
    -------
    set of str
        The levels whose cells the part's tables must show as suppressed (pass them as
        ``withheld`` / ``suppress`` to the tables of the part).
    """
    lab = np.asarray(labels).astype(str).ravel()
    inside = np.asarray(part, dtype=bool).ravel()
    if lab.shape != inside.shape:
        raise InvalidParameterError(f"split_withheld: labels and part must have one entry per "
                                    f"episode; got {lab.size} and {inside.size}.")
    levels, code = np.unique(lab, return_inverse=True)
    a = np.bincount(code[inside], minlength=levels.size)  # in the part
    b = np.bincount(code[~inside], minlength=levels.size)  # in the rest
    small = ((a > 0) & (a < min_cell)) | ((b > 0) & (b < min_cell))
    hide = small & (a > 0)
    order = np.flatnonzero(a > 0)[np.argsort(a[a > 0], kind="stable")]
    for nxt in order:  # the smallest part cells join until both sums are 0 or >= min_cell
        if not any(0 < int(x[hide].sum()) < min_cell for x in (a, b)):
            break
        hide[nxt] = True
    return {str(v) for v in levels[hide]}


def suppress_counts(counts: dict[str, int], min_cell: int = MIN_CELL,
                    withheld: Collection[str] = ()) -> dict[str, int | None]:
    """A table of episodes per level with the suppressed levels' counts set to None.

    Parameters
    ----------
    counts : dict of str to int
        Episodes per level of one attribute (the partition of a published total).
    withheld : collection of str, optional
        Levels suppressed from outside (held by fewer than ``min_cell`` members,
        :func:`few_members`); the levels that would give them back by difference are too.
    """
    labels = np.repeat(np.array(list(counts), dtype=object).astype(str),
                       np.asarray(list(counts.values()), dtype=np.int64))
    hide = suppressed_levels(labels, min_cell, withheld) if labels.size else set()
    return {k: (None if k in hide else int(v)) for k, v in counts.items()}


def few_members(labels: Any, members: Any, min_cell: int = MIN_CELL) -> set[str]:
    """Levels held by 1 to ``min_cell - 1`` distinct members (people, not episodes).

    A member who re-enrols has several episodes: 5 members with 12 episodes pass a count of
    episodes but are 5 people. Withhold these levels (``withheld`` / ``suppress``) from every
    table of episodes.

    Parameters
    ----------
    labels : array-like of shape (n_episodes,)
        Each episode's level.
    members : array-like of shape (n_episodes,)
        Each episode's member.
    min_cell : int
    """
    frame = pd.DataFrame({"level": np.asarray(labels).astype(str).ravel(),
                          "member": np.asarray(members).astype(str).ravel()})
    n = frame.drop_duplicates().groupby("level", sort=True).size()
    return {str(k) for k, v in n.items() if 0 < int(v) < min_cell}


def small_count(count: int, total: int, min_cell: int = MIN_CELL) -> int | None:
    """``count`` of ``total`` episodes (or rows) with something, or None when it is a small cell.

    :func:`suppress_counts` of the two-cell table (with it, without it) whose total is
    published: None when either cell holds 1 to ``min_cell - 1``.
    """
    return suppress_counts({"with": int(count), "without": int(total) - int(count)},
                           min_cell)["with"]


def share_suppressed(labels: Sequence[str], some: Any, not_all: Any,
                     min_cell: int = MIN_CELL) -> tuple[tuple[str, ...], bool]:
    """Groups whose rate of a per-episode share must not be published, and whether the total's.

    A group's rate of something its episodes do some of the time (a logged action: the share of
    an episode's rows, or of its episodes, with the action; a clinical need) rests on the
    episodes where the share is above 0, and its complement (one minus the rate) on those where
    it is below 1. When either count is 1 to ``min_cell - 1``, the rate is a statistic of fewer
    than ``min_cell`` members: with its episode count it gives back how many members got the
    action (exactly, for one-row episodes or 0/1 shares), and which group the few who did belong
    to. Each of the two columns (``some``, ``not_all``) is a table of the groups whose total is
    published (the overall rate), so it is protected as :func:`suppress_counts` protects a table
    (primary, then complementary suppression); a group hidden in either column has no published
    rate. An empty cell (no episode with the action, or every one always with it) holds no
    member and is not suppressed. The overall rate is not published either when a column's total
    is 1 to ``min_cell - 1`` (every group is then hidden too).

    Parameters
    ----------
    labels : sequence of str
        Published groups (``n_groups``).
    some : array-like of shape (n_groups,), int
        Episodes per group whose share is above 0.
    not_all : array-like of shape (n_groups,), int
        Episodes per group whose share is below 1.
    min_cell : int

    Returns
    -------
    hidden : tuple of str
        The groups whose rate is not published, in ``labels`` order.
    total_hidden : bool
        Whether the overall rate is not published.
    """
    hidden: set[str] = set()
    total_hidden = False
    for column in (some, not_all):
        k = np.rint(np.asarray(column, dtype=np.float64)).astype(np.int64).ravel()
        shown = suppress_counts(dict(zip(map(str, labels), map(int, k), strict=True)),
                                int(min_cell))
        hidden |= {g for g, v in shown.items() if v is None}
        total_hidden |= 0 < int(k.sum()) < int(min_cell)
    return tuple(str(g) for g in labels if str(g) in hidden), total_hidden


def _determined(a: NDArray[np.float64], sup: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Suppressed cells fixed by lines ``a`` (n_lines, n_cells) with published totals."""
    from scipy.linalg import null_space

    idx = np.flatnonzero(sup)
    out = np.zeros(sup.size, dtype=bool)
    if idx.size == 0:
        return out
    free = null_space(a[:, idx])
    out[idx] = np.abs(free).max(axis=1, initial=0.0) < 1e-9
    return out


def share_table_suppressed(num: Any, den: Any, codes: Any, n_groups: int,
                           blocks: Sequence[Any], hidden: Any, total_hidden: Any,
                           min_cell: int = MIN_CELL, sums: Sequence[tuple[Any, Any]] = ()
                           ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Complete the suppression of a table of shares whose levels sum to one within each group.

    A table of each group's rate of every level of an action component (the audit's level
    rates) has two kinds of lines: a level's rates over the groups and the overall rate (the
    suppression of :func:`share_suppressed`), and a group's rates over the levels of one
    component, which sum to one. A group's single hidden level is one minus its published
    levels: a rate of 5 members' urgent weeks hidden beside published routine and semi-urgent
    rates was given back exactly that way. So, as :func:`suppressed_cells` completes a table of
    counts, every line here is completed: within a group's (or the overall's) component, the
    hidden levels' union (episodes with any of them, and episodes not always in them) holds 0
    or at least ``min_cell`` episodes, else the published level of the fewest episodes is
    hidden too; within a level, the hidden groups' counts hold 0 or at least ``min_cell``
    when the overall rate is published. Chains across lines are broken as
    :func:`suppressed_cells` breaks them: while a hidden cell with a count of 1 to
    ``min_cell - 1`` is determined by the published cells and the lines' totals (the group's
    episode count, the overall rate; worst case: a group's rows taken as known), the published
    level of the fewest episodes beside it is hidden too.

    Parameters
    ----------
    num : array-like of shape (n_episodes, n_levels)
        Each episode's numerator of each level (rows with it, or its share).
    den : array-like of shape (n_episodes,)
        Each episode's denominator (rows, or 1).
    codes : array-like of shape (n_episodes,), int
        Each episode's group in ``[0, n_groups)``; -1 for episodes of no published group.
    n_groups : int
    blocks : sequence of array-like of int
        The levels of each component (their shares sum to one).
    hidden : array-like of shape (n_groups, n_levels), bool
        Group rates already hidden (:func:`share_suppressed` of each level).
    total_hidden : array-like of shape (n_levels,), bool
        Overall rates already hidden.
    min_cell : int
    sums : sequence of (array-like of int, array-like of shape (n_groups + 1,), bool)
        Sums of levels published elsewhere: the levels, and which groups' (last: the
        overall's) sum of them is published (the audit's rate of an action set that is a union
        of levels). Each is one more line of those groups, completed like a component's: a hidden
        level of the set is otherwise the set's rate minus its published levels.

    Returns
    -------
    hidden : ndarray of shape (n_groups, n_levels), bool
    total_hidden : ndarray of shape (n_levels,), bool
    """
    x = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64).reshape(-1, 1)
    c = np.asarray(codes, dtype=np.int64).ravel()
    n_lv, rows = x.shape[1], n_groups + 1               # row n_groups: the overall
    member = np.zeros((c.size, rows), dtype=bool)
    ok = c >= 0
    member[np.flatnonzero(ok), c[ok]] = True
    member[:, n_groups] = ok
    m = member.astype(np.float64)
    some, not_all = m.T @ (x > 0), m.T @ (x < d)         # (rows, n_levels)
    sup = np.vstack([np.asarray(hidden, dtype=bool).reshape(n_groups, n_lv),
                     np.asarray(total_hidden, dtype=bool).reshape(1, n_lv)])
    small = ((some > 0) & (some < min_cell)) | ((not_all > 0) & (not_all < min_cell))
    sensitive = (sup & small).ravel()
    cell = np.arange(rows * n_lv).reshape(rows, n_lv)
    lines: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = []
    for b in blocks:
        lv = np.asarray(b, dtype=np.int64)
        lines += [(cell[r, lv], np.ones(lv.size)) for r in range(rows)]
    for b, known in sums:
        lv = np.asarray(b, dtype=np.int64)
        lines += [(cell[r, lv], np.ones(lv.size))
                  for r in np.flatnonzero(np.asarray(known, dtype=bool))]
    lines += [(cell[:, j], np.r_[np.ones(n_groups), -1.0]) for j in range(n_lv)]
    a = np.zeros((len(lines), cell.size))
    for i, (idx, coef) in enumerate(lines):
        a[i, idx] = coef
    flat, cnt = sup.ravel(), some.ravel()

    seen: dict[tuple[int, bytes], bool] = {}
    rows_of = [np.flatnonzero(member[:, r]) for r in range(rows)]

    def revealing(i: int, eff: NDArray[np.bool_]) -> bool:
        """Whether line ``i``'s unknown cells are a union of 1 to min_cell - 1 episodes."""
        idx = lines[i][0]
        part = eff[idx]
        if not part.any() or part.all():
            return False
        key = (i, np.packbits(part).tobytes())
        if key not in seen:   # a pass changes few lines: the others' answers are kept
            seen[key] = union_small(i, idx, part)
        return seen[key]

    def union_small(i: int, idx: NDArray[np.int64], part: NDArray[np.bool_]) -> bool:
        """The union's counts (episodes with any of ``part``'s cells, or not always)."""
        if i >= len(lines) - n_lv:                      # a level over the groups
            if part[-1]:
                return False                            # no known total to subtract from
            k = [int(some[:n_groups, i - len(lines) + n_lv][part[:-1]].sum()),
                 int(not_all[:n_groups, i - len(lines) + n_lv][part[:-1]].sum())]
        else:                                           # a row's levels of one component
            r, lv = np.divmod(idx[part], n_lv)
            rows_r = rows_of[int(r[0])]
            u = x[np.ix_(rows_r, lv)].sum(axis=1)
            k = [int((u > 0).sum()), int((u < d[rows_r, 0]).sum())]
        return any(0 < v < min_cell for v in k)

    def near(cells: NDArray[np.int64]) -> NDArray[np.int64]:
        """Published cells sharing a line with any of ``cells``."""
        mask = np.zeros(flat.size, dtype=bool)
        for idx, _ in lines:
            if np.isin(cells, idx).any():
                mask[idx] = True
        return np.flatnonzero(mask & ~flat)

    while True:  # every pass hides one more cell; a table has finitely many
        det = _determined(a, flat)
        eff = flat & ~det                               # hidden and not worked out
        bad = np.flatnonzero(det & sensitive)
        cand = near(bad[:1]) if bad.size else np.zeros(0, dtype=np.int64)
        if not bad.size:
            for i, (idx, _) in enumerate(lines):
                if revealing(i, eff):
                    cand = idx[~flat[idx]]
                    if cand.size == 0:                  # break a determined cell of the line
                        cand = near(idx[det[idx]])
                    break
            else:
                break
        if cand.size == 0:
            cand = np.flatnonzero(~flat)                # the smallest published cell anywhere
            if cand.size == 0:
                break
        flat[cand[np.argmin(cnt[cand])]] = True
    out = flat.reshape(rows, n_lv)
    return out[:n_groups], out[n_groups]


def small_cells_message(cells: Sequence[str], min_cell: int = MIN_CELL) -> str:
    """The warning for suppressed subgroup cells (``"race=pacific"``, ...), sizes not named."""
    shown = ", ".join(cells[:10]) + (f" and {len(cells) - 10} more" if len(cells) > 10 else "")
    return (f"{len(cells)} group cells were suppressed: {shown}. A cell with fewer than "
            f"{min_cell} episodes is never published, nor are the cells that would reveal it by "
            "difference from the totals (complementary suppression).")


def round_significant(x: Any, digits: int = 4) -> NDArray[np.float64]:
    """Round to ``digits`` significant digits (elementwise; zeros and non-finite values kept).

    Parameters
    ----------
    x : array-like
    digits : int

    Returns
    -------
    ndarray of float64
    """
    v = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(v) & (v != 0)
    mag = np.floor(np.log10(np.abs(np.where(ok, v, 1.0))))
    factor = 10.0 ** (digits - 1 - mag)
    out: NDArray[np.float64] = np.where(ok, np.round(v * factor) / factor, v)
    return out


def tail_quantile(n_rows: int, min_cell: int = MIN_CELL, floor: float = 0.001) -> float:
    """Quantile level with at least ``min_cell`` of ``n_rows`` rows beyond it in each tail.

    ``p = max(floor, min_cell / n_rows)``, at most 0.5: at least ``min_cell`` rows lie below the
    quantile at ``p`` and above the one at ``1 - p``, so neither is a single row's extreme value.
    """
    return float(min(0.5, max(floor, min_cell / max(int(n_rows), 1))))


def coarse_bounds(x: Any, *, margin: float = 0.1, min_cell: int = MIN_CELL
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-column lower and upper bounds that are no row's value: a replacement of min and max.

    Each column's interpolated quantiles at ``p`` and ``1 - p`` (:func:`tail_quantile`: at least
    ``min_cell`` rows beyond each), widened by ``margin`` times their distance, then rounded
    outward to a grid of about a hundredth of the range (one significant digit below its order of
    magnitude: steps of 10 for a range of 150, of 0.01 for 0.5). A column that is never negative
    (never positive) keeps 0 as its lower (upper) bound at most. A column whose quantiles
    coincide (constant, or nearly so) gets its grid step from its magnitude.

    Parameters
    ----------
    x : array-like of shape (n_rows, n_columns)
        Finite values (NaNs are ignored).
    margin : float
        Widening on each side, as a fraction of the distance between the quantiles.
    min_cell : int

    Returns
    -------
    low, high : ndarray of shape (n_columns,)
    """
    v = np.asarray(x, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    p = tail_quantile(v.shape[0], min_cell)
    lo_q, hi_q = np.nanquantile(v, [p, 1.0 - p], axis=0)
    span = hi_q - lo_q
    lo, hi = lo_q - margin * span, hi_q + margin * span
    size = np.where(span > 0, hi - lo, np.maximum(np.abs(lo_q), np.abs(hi_q)))
    size = np.where(size > 0, size, 1.0)
    step = 10.0 ** (np.floor(np.log10(size)) - 1)
    low = round_significant(np.floor(lo / step) * step, 12)
    high = round_significant(np.ceil(hi / step) * step, 12)
    nonneg = np.nanmin(v, axis=0) >= 0
    nonpos = np.nanmax(v, axis=0) <= 0
    low = np.where(nonneg, np.maximum(low, 0.0), low)
    high = np.where(nonpos, np.minimum(high, 0.0), high)
    return low, high


def quantile_edges(x: Any, n_bins: int, digits: int = 4) -> NDArray[np.float64]:
    """Inner edges cutting a numeric column into about ``n_bins`` quantile bins, no row's value.

    The one rule of every quantile bin the library publishes (a SPIBB model folder's numeric
    bins, the binned numeric states in ``q_model`` names such as ``"risk@0.88395/1.14115"``). A
    row's bin is the number of edges at or below its value (``searchsorted(side="right")``).
    Every edge lies strictly inside a gap between two adjacent observed values, so the rows at a
    repeated value (a 0/1 flag, a count: a point mass) stay in one bin and no edge is a row's
    value:

    * an inner quantile ``q`` at level ``p`` (``np.quantile``, linear interpolation) strictly
      between two observed values is kept;
    * a quantile that falls on an observed value ``v`` moves to the midpoint of the gap on the
      side of ``v`` nearer to ``p``: below ``v`` (``v`` opens the upper bin) when ``p`` is nearer
      the share of rows below ``v`` than the share at or below it, else above ``v`` (``v``
      closes the lower bin); at the column's minimum always above, at its maximum always below.
      A 0/1 flag with 6% ones (or 6% zeros) gets the edge 0.5; counts 0, 1, 2, 3 held by 30%,
      30%, 25% and 15% of the rows get the tertile edges 0.5 and 1.5 (0 / 1 / 2+);
    * each edge is rounded to the fewest significant digits, at least ``digits``, that keep it
      inside its gap (a model folder or a published name keeps no row's exact value,
      :mod:`equicare.privacy`), and a gap keeps one edge (two would leave an empty bin).

    Parameters
    ----------
    x : array-like of shape (n_rows,)
        The column's values (finite). A float32 column's edges are strictly between its values
        as float32 numbers too.
    n_bins : int
        Quantile bins asked for (>= 2); point masses can leave fewer.
    digits : int, default=4
        The fewest significant digits of an edge.

    Returns
    -------
    ndarray of shape (n_edges,), float64
        Increasing, distinct edges strictly between the column's minimum and maximum (empty
        for a constant column), at most ``n_bins - 1`` of them.

    Examples
    --------
    >>> quantile_edges([0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 4).tolist()
    [0.5]
    >>> quantile_edges([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 2).tolist()
    [2.5]
    """
    raw = np.asarray(x)
    # "between two observed values" at the column's own precision: a float32 column's 0.8839
    # is 0.88389998... in float64, so the float64 0.8839 would pass as between it and 0.8840
    kind = raw.dtype if raw.dtype.kind == "f" else np.dtype(np.float64)
    v = raw.astype(np.float64).ravel()
    vals, counts = np.unique(v, return_counts=True)
    if vals.size < 2 or n_bins < 2:
        return np.zeros(0)
    p = np.arange(1, n_bins) / n_bins
    q = np.quantile(v, p)
    pos = np.minimum(np.searchsorted(vals, q, side="left"), vals.size - 1)  # vals[pos] >= q
    at = vals[pos] == q
    share = np.cumsum(counts) / v.size
    below = np.where(pos > 0, share[np.maximum(pos - 1, 0)], 0.0)  # rows < v
    # the gap (vals[g], vals[g + 1]) of each edge
    opens = ((p - below < share[pos] - p) & (pos > 0)) | (pos == vals.size - 1)
    gap = np.where(at & ~opens, pos, pos - 1)
    lo, hi = vals[gap], vals[gap + 1]
    target = np.where(at, (lo + hi) / 2.0, q)
    return _round_into_gaps(target, gap, lo, hi, kind, digits)


def _round_into_gaps(target: NDArray[np.float64], gap: NDArray[np.int64],
                     lo: NDArray[np.float64], hi: NDArray[np.float64], kind: Any,
                     digits: int) -> NDArray[np.float64]:
    """Each ``target`` rounded to the fewest digits (>= ``digits``) inside its gap ``(lo, hi)``.

    ``gap`` numbers the gaps; a gap keeps one edge. Sorted, distinct edges.
    """
    edge, done = target.copy(), np.zeros(target.size, dtype=bool)
    for d in range(digits, 18):  # fewest digits inside the gap (a loop over digits, not rows)
        r = round_significant(target, d)
        r_kind = r.astype(kind)
        ok = ~done & (r_kind > lo.astype(kind)) & (r_kind < hi.astype(kind))
        edge, done = np.where(ok, r, edge), done | ok
    inside = (edge.astype(kind) > lo.astype(kind)) & (edge.astype(kind) < hi.astype(kind))
    _, first = np.unique(gap[inside], return_index=True)
    return np.asarray(np.sort(edge[inside][first]), dtype=np.float64)


def gap_edges(x: Any, cuts: Any, digits: int = 4) -> NDArray[np.float64]:
    """Edges near ``cuts`` that are no row's value: :func:`quantile_edges`' rule for given cuts.

    Each cut (a split point a tree chose, say) moves into the gap between the two observed
    values of ``x`` around it (a cut on an observed value ``v`` takes the gap above ``v``, as a
    row's bin is the number of edges at or below its value) and is rounded to the fewest
    significant digits, at least ``digits``, that keep it there; a gap keeps one edge, and cuts
    outside the column's range are dropped.

    Parameters
    ----------
    x : array-like of shape (n_rows,)
        The column's values (finite).
    cuts : array-like of shape (m,)
    digits : int, default=4

    Returns
    -------
    ndarray of shape (n_edges,), float64
        Increasing, distinct edges strictly between the column's minimum and maximum.

    Examples
    --------
    >>> gap_edges([10.0, 20.0, 59.9, 60.0, 61.0], [59.95, 20.0]).tolist()
    [39.95, 59.95]
    """
    raw = np.asarray(x)
    kind = raw.dtype if raw.dtype.kind == "f" else np.dtype(np.float64)
    vals = np.unique(raw.astype(np.float64).ravel())
    c = np.asarray(cuts, dtype=np.float64).ravel()
    if vals.size < 2 or c.size == 0:
        return np.zeros(0)
    gap = np.searchsorted(vals, c, side="right") - 1  # vals[gap] <= cut < vals[gap + 1]
    ok = (gap >= 0) & (gap < vals.size - 1)
    gap = gap[ok]
    lo, hi = vals[gap], vals[gap + 1]
    target = np.where(c[ok] > lo, c[ok], (lo + hi) / 2.0)
    return _round_into_gaps(target, gap, lo, hi, kind, digits)


def pooled_level_shares(codes: Any, episodes: Any, n_levels: int,
                        min_cell: int = MIN_CELL) -> NDArray[np.float64]:
    """Share of the rows at each level, levels of fewer than ``min_cell`` episodes pooled.

    A network's input statistics (a one-hot column's mean, the weights of an embedding's
    unknown vector) are the levels' row shares, from which a level's row count is recovered
    (share times the training rows). Levels logged in fewer than ``min_cell`` episodes share one
    value, the mean of their shares; when they hold fewer than ``min_cell`` episodes together,
    the smallest other levels join the pool until it does (complementary pooling, as
    :func:`suppressed_cells` completes a line). So each published share is a level's of at least
    ``min_cell`` episodes or a pool's mean over a union of at least ``min_cell`` episodes; the
    shares still sum to one.

    Parameters
    ----------
    codes : array-like of shape (n_rows,), int
        Level of each row in ``[0, n_levels)``; other values (unknown) are ignored.
    episodes : array-like of shape (n_rows,), int
        Episode of each row.
    n_levels : int
    min_cell : int

    Returns
    -------
    ndarray of shape (n_levels,)
        Uniform when no row has a level.
    """
    c = np.asarray(codes, dtype=np.int64).ravel()
    e = np.asarray(episodes, dtype=np.int64).ravel()
    ok = (c >= 0) & (c < n_levels)
    c, e = c[ok], e[ok]
    if c.size == 0:
        return np.full(n_levels, 1.0 / max(n_levels, 1))
    share = np.bincount(c, minlength=n_levels).astype(np.float64) / c.size
    _, first = np.unique(np.stack([c, e]), axis=1, return_index=True)
    n_ep = np.bincount(c[first], minlength=n_levels)
    pool = (n_ep > 0) & (n_ep < min_cell)
    if not pool.any():
        return share
    rest = np.flatnonzero((n_ep > 0) & ~pool)
    order = rest[np.argsort(n_ep[rest], kind="stable")]
    for nxt in order:
        if np.unique(e[pool[c]]).size >= min_cell:
            break
        pool[nxt] = True
    share[pool] = share[pool].mean()
    return share


#: Why an importance-weighted group value is not published: its weights' effective sample size.
MSG_LOW_ESS = ("not published: the group's importance weights have an effective sample size "
               "below {min_cell} episodes, so its value rests on the outcomes of fewer than "
               "{min_cell} episodes (a small cell)")
#: Why a group value with enough weight is not published either (complementary suppression).
MSG_LOW_ESS_COMPLEMENT = ("not published: with the overall value it would reveal by difference "
                          "the value of groups whose importance weights have an effective sample "
                          "size below {min_cell} episodes (complementary suppression)")


def sums_ess(s1: NDArray[np.float64], s2: NDArray[np.float64], n: NDArray[np.float64]) -> float:
    r"""Kish's effective sample size from summed weights, per step, of some episodes.

    ``s1[t]`` and ``s2[t]`` are the sums of the weights and of their squares over the episodes
    alive at step ``t``, ``n[t]`` their number: the mean over steps with an episode of
    :math:`(s_1^2 / s_2) / n_t`, times the episodes (``n[0]``). With one column (the trajectory
    weights ``W_e`` of ``n[0]`` episodes) it is plain Kish :math:`(\sum W)^2 / \sum W^2`;
    with one column per step it is the per-decision ESS of
    :class:`~equicare.ope.EffectiveSampleSize` (0 when every weight is 0).
    """
    s1, s2, n = (np.asarray(a, dtype=np.float64).ravel() for a in (s1, s2, n))
    steps = n > 0
    if not steps.any():
        return 0.0
    k = np.zeros_like(s1)
    np.divide(s1 * s1, s2, out=k, where=s2 > 0)
    return float(np.mean(k[steps] / n[steps]) * n[0])


def _lines(labels: Sequence[str]) -> list[NDArray[np.int64]]:
    """The lines of a table of group cells (as :func:`suppressed_cells`).

    The whole table and, for intersections (labels ``"a x b"``), every row and column.
    """
    idx = np.arange(len(labels))
    lines = [idx]
    parts = [str(g).split(" x ") for g in labels]
    k = len(parts[0]) if parts else 0
    if k > 1 and all(len(p) == k for p in parts):
        for j in range(k):
            keys = [" x ".join(p[:j] + p[j + 1:]) for p in parts]
            for key in dict.fromkeys(keys):
                lines.append(idx[[kk == key for kk in keys]])
    return lines


def low_ess_cells(labels: Sequence[str], s1: NDArray[np.float64], s2: NDArray[np.float64],
                  n: NDArray[np.float64], min_cell: int = MIN_CELL) -> dict[str, str]:
    """Published group cells whose importance-weighted value must not be published, with why.

    A weighted estimate (IS, WIS, PDIS, WPDIS, DR, WDR) of a group whose weights have a Kish
    effective sample size below ``min_cell`` is an average of fewer than ``min_cell`` episodes'
    outcomes, whatever the group's episode count (one weight holding 99.99% of the sum publishes
    one member's return). Such cells are suppressed (:data:`MSG_LOW_ESS`), and, since a
    published total minus the other cells gives back their union's value for the estimators that
    divide by the episode count, the smallest-ESS other cells of each line (as
    :func:`suppressed_cells`) are suppressed too until the suppressed cells' union has an ESS
    of at least ``min_cell`` (:data:`MSG_LOW_ESS_COMPLEMENT`; the union of cells that each
    reach ``min_cell`` always does) or no weight at all (every weight 0: the difference is 0
    and reveals no outcome).

    Parameters
    ----------
    labels : sequence of str
        The published cells (``"black"``, or ``"black x female"`` for intersections).
    s1, s2, n : ndarray of shape (n_cells, n_steps)
        Each cell's summed weights, squared weights and episodes per step (:func:`sums_ess`).
    min_cell : int

    Returns
    -------
    dict of str to str
        ``{label: reason}`` of the cells not to publish.
    """
    s1, s2, n = (np.asarray(a, dtype=np.float64) for a in (s1, s2, n))
    labels = [str(g) for g in labels]
    if not labels:
        return {}
    ess = np.array([sums_ess(s1[i], s2[i], n[i]) for i in range(len(labels))])
    primary = ess < min_cell
    hide = primary.copy()
    changed = bool(primary.any())
    while changed:  # every pass adds cells; a table has finitely many
        changed = False
        for line in _lines(labels):
            part = hide[line]
            while (part.any() and not part.all()
                   and 0 < sums_ess(s1[line[part]].sum(axis=0), s2[line[part]].sum(axis=0),
                                    n[line[part]].sum(axis=0)) < min_cell):
                free = np.flatnonzero(~part)
                part[free[np.argmin(ess[line[free]])]] = True
                changed = True
            hide[line] = part
    return {g: (MSG_LOW_ESS if primary[i] else MSG_LOW_ESS_COMPLEMENT).format(min_cell=min_cell)
            for i, g in enumerate(labels) if hide[i]}


def tail_range(x: Any, digits: int = 3) -> dict[str, float | None]:
    """A column's published range: ``p_bottom11`` and ``p_top11`` instead of min and max.

    The interpolated quantiles at ``p`` and ``1 - p`` of :func:`tail_quantile` (at least
    :data:`~equicare.utils.MIN_CELL` values below the first and above the second), rounded to
    ``digits`` significant digits: a column's minimum and maximum are single rows' values
    (one member's propensity, the one member followed for a single week). NaNs are ignored;
    None when there is no value.

    Parameters
    ----------
    x : array-like
    digits : int

    Returns
    -------
    dict
        ``{"p_bottom11": float or None, "p_top11": float or None}``
    """
    v = np.asarray(x, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"p_bottom11": None, "p_top11": None}
    p = tail_quantile(v.size)
    lo, hi = round_significant(np.quantile(v, [p, 1.0 - p]), digits)
    return {"p_bottom11": float(lo), "p_top11": float(hi)}
