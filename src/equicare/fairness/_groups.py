"""Group labels of episodes (single or intersectional) and small-cell suppression."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from equicare.data import TrajectoryDataset
from equicare.data._labels import check_group_labels
from equicare.data.validate import _lead, _led_by
from equicare.exceptions import DataValidationError, InvalidParameterError, SmallCellWarning
from equicare.privacy import few_members, suppressed_labels
from equicare.utils import MIN_CELL

__all__ = ["GroupIndex", "group_index", "dataset_group_index", "require_comparison",
           "withheld_cells", "table_index", "joined_labels", "SUPPRESSED", "FEW_GROUPS_MESSAGE",
           "NO_GROUP_MESSAGE"]

#: What a suppressed cell looks like in every result JSON (Contract 7).
SUPPRESSED: dict[str, Any] = {"suppressed": True}

#: Error of a parity audit with a single publishable group (:func:`require_comparison`);
#: ``source`` is ``"{panel file}: "`` or empty.
FEW_GROUPS_MESSAGE = ("{source}group {name!r}: only 1 group can be published ({label}{detail}); a "
                      "parity audit needs at least 2.")
#: Error of a grouping whose groups are all suppressed (:func:`group_index`).
NO_GROUP_MESSAGE = (
    "{source}no group of the group column{s} {name!r} (manifest dataset.groups) can be "
    "published, nothing can be published: its groups with fewer than {min_cell} episodes are "
    "suppressed, and so are the groups that would reveal them by difference from the total "
    "(with one small group and one other, both). Expected at least 2 groups of {min_cell} or "
    "more episodes: audit a panel with more episodes, or a coarser group column.")


@dataclass(frozen=True, eq=False)
class GroupIndex:
    """Episodes coded by group, with the groups too small to publish set aside.

    Attributes
    ----------
    name : str
        Grouping, e.g. ``"race_ethnicity"`` or ``"race_ethnicity x sex"``.
    labels : tuple of str
        Published group labels (sorted), ``n_groups`` of them.
    suppressed : tuple of str
        Labels of the suppressed groups (primary and complementary suppression); they are left
        out of every number.
    codes : ndarray of shape (n_episodes,), int64
        Index into ``labels`` per episode, ``-1`` for episodes of suppressed groups.
    counts : ndarray of shape (n_groups,), int64
        Episodes per published group.
    min_cell : int
    small : tuple of str
        The suppressed labels with fewer than ``min_cell`` episodes (primary suppression); the
        other ones of :attr:`suppressed` are suppressed so that these cannot be recovered by
        difference (complementary suppression).
    source : str, optional
        The panel file the labels came from (named by the errors).
    """

    name: str
    labels: tuple[str, ...]
    suppressed: tuple[str, ...]
    codes: NDArray[np.int64]
    counts: NDArray[np.int64]
    min_cell: int
    small: tuple[str, ...] = ()
    source: str | None = None

    @property
    def n_groups(self) -> int:
        """Number of published groups."""
        return len(self.labels)

    @property
    def kept(self) -> NDArray[np.bool_]:
        """Episodes in published groups, shape ``(n_episodes,)``."""
        return self.codes >= 0

    @property
    def n_kept(self) -> int:
        """Number of audited episodes (in published groups)."""
        return int(self.counts.sum())

    def one_hot(self) -> NDArray[np.float64]:
        """Membership matrix, shape ``(n_episodes, n_groups)`` (suppressed episodes: rows of 0)."""
        h = np.zeros((self.codes.shape[0], self.n_groups), dtype=np.float64)
        k = self.kept
        h[np.flatnonzero(k), self.codes[k]] = 1.0
        return h


def group_index(labels: ArrayLike, *, name: str = "group", min_cell: int = MIN_CELL,
                warn: bool = True, components: Sequence[ArrayLike] | None = None,
                withheld: Collection[str] = (), source: str | None = None) -> GroupIndex:
    """Code episode labels by group and suppress groups with fewer than ``min_cell`` episodes.

    Suppression is primary and complementary (:func:`equicare.privacy.suppressed_cells`): groups
    under ``min_cell`` episodes, and further groups wherever the suppressed ones of a line of the
    table (the whole table; for an intersection each row and column too) would otherwise be
    recoverable by difference.

    Parameters
    ----------
    labels : array-like of shape (n_episodes,)
        Group label of each episode (turned into strings). A missing label (None, NaN, ``pd.NA``
        or a blank string) is an error, not a group: label such episodes explicitly (e.g.
        ``"unknown"``) to audit them as one.
    name : str
        Name of the grouping, used in messages and results.
    min_cell : int
        Minimum number of episodes of a published group (default ``equicare.utils.MIN_CELL``).
    warn : bool
        Emit a :class:`~equicare.exceptions.SmallCellWarning` naming how many groups were
        suppressed (never their labels' sizes).
    components : sequence of array-like of shape (n_episodes,), optional
        For intersectional ``labels`` (``"black x female"``), each attribute's labels, so that
        the rows and columns of the intersection are protected too.
    withheld : collection of str, optional
        Groups suppressed from outside whatever their size (e.g. held-out cells whose training
        complement is small, :func:`equicare.privacy.split_withheld`); complementary
        suppression completes them as it does small groups. Labels not present are ignored.
    source : str, optional
        The panel file the labels came from, named first in the errors.

    Returns
    -------
    GroupIndex

    Raises
    ------
    DataValidationError
        If an episode has no label, or no group has at least ``min_cell`` episodes.
    """
    lab = np.asarray(labels).astype(str)
    if lab.ndim != 1:
        raise DataValidationError(f"Group labels of {name!r} must be one label per episode.")
    check_group_labels(labels, name, "group_index")  # before str() makes None a group "None"
    for j, comp in enumerate(components or ()):
        check_group_labels(comp, f"{name} (component {j})", "group_index")
    uniq, inv, cnt = np.unique(lab, return_inverse=True, return_counts=True)
    comps = [lab] if components is None else list(components)
    keep = ~np.isin(uniq, np.array(sorted(suppressed_labels(comps, min_cell, withheld)),
                                   dtype=str))
    if not keep.any():
        raise DataValidationError(_led_by(source, NO_GROUP_MESSAGE.format(
            source=_lead(source), s="s" if components is not None and len(components) > 1
            else "", name=name, min_cell=min_cell)))
    new_code = np.full(uniq.size, -1, dtype=np.int64)
    new_code[keep] = np.arange(int(keep.sum()))
    suppressed = tuple(str(u) for u in uniq[~keep])
    if suppressed and warn:
        primary = int((cnt[~keep] < int(min_cell)).sum())
        outside = int(np.isin(uniq[~keep & (cnt >= int(min_cell))],
                              np.array(sorted(map(str, withheld)), dtype=str)).sum())
        extra = len(suppressed) - primary - outside
        reasons = ([f"{primary} group(s) of {name!r} have fewer than {min_cell} episodes"]
                   if primary else [])
        if outside:
            reasons.append(f"{outside} group(s) of {name!r} would give back a cell of fewer "
                           f"than {min_cell} episodes of another published table by "
                           "difference (withheld by the caller)")
        warnings.warn(
            " and ".join(reasons) + " and are suppressed (left out of every table, figure "
            "and summary)"
            + (f"; {extra} more are suppressed so that they cannot be recovered by difference "
               "from the totals" if extra else "") + ".",
            SmallCellWarning, stacklevel=3)
    small = tuple(str(u) for u in uniq[~keep & (cnt < int(min_cell))])
    return GroupIndex(name=name, labels=tuple(str(u) for u in uniq[keep]), suppressed=suppressed,
                      codes=new_code[inv].astype(np.int64), counts=cnt[keep].astype(np.int64),
                      min_cell=int(min_cell), small=small, source=source)


def require_comparison(gi: GroupIndex) -> GroupIndex:
    """Check that a parity audit has at least two published groups to compare.

    With one published group (a one-level attribute, or the others suppressed) every gap would
    be 0, every ratio 1 and every Gini 0: perfect parity that was never measured.

    Parameters
    ----------
    gi : GroupIndex

    Returns
    -------
    GroupIndex
        ``gi`` itself.

    Raises
    ------
    DataValidationError
        If fewer than two groups are published (the message names the published one and how
        many were suppressed, never their sizes).
    """
    if gi.n_groups >= 2:
        return gi
    detail = ""
    if gi.suppressed:
        n_small = len(gi.small)
        extra = len(gi.suppressed) - n_small
        parts = []
        if n_small:
            parts.append(f"{n_small} with fewer than {gi.min_cell} episodes")
        if extra:
            parts.append(f"{extra} so that {'it' if n_small == 1 else 'they'} cannot be "
                         "recovered by difference from the total")
        detail = f"; {len(gi.suppressed)} suppressed: " + ", ".join(parts)
    label = gi.labels[0] if gi.labels else ""
    raise DataValidationError(FEW_GROUPS_MESSAGE.format(source=_lead(gi.source), name=gi.name,
                                                        label=label, detail=detail))


def dataset_groups(dataset: TrajectoryDataset, group: str | None = None,
                   intersect: Sequence[str] = ()) -> tuple[str, NDArray[np.str_]]:
    """Labels per episode for ``group`` (default: the first attribute), crossed with ``intersect``.

    Returns
    -------
    name : str
        ``"race_ethnicity"`` or ``"race_ethnicity x sex"``.
    labels : ndarray of shape (n_episodes,)
    """
    if not dataset.groups:
        raise DataValidationError("The dataset has no group attributes (manifest dataset.groups); "
                                  "a fairness audit needs at least one.")
    attrs = [group or dataset.group_attrs[0], *intersect]
    unknown = [a for a in attrs if a not in dataset.groups]
    if unknown:
        raise DataValidationError(f"Unknown group attribute(s) {unknown}; the dataset has "
                                  f"{list(dataset.group_attrs)}.")
    if len(set(attrs)) != len(attrs):
        raise DataValidationError(f"Group attributes must be distinct, got {attrs}.")
    for a in attrs:  # checked when the dataset was built; its dict may have changed since
        check_group_labels(dataset.group_labels(a), a, "fairness audit", dataset.episode_ids)
    labels = (dataset.group_labels(attrs[0]).astype(str) if len(attrs) == 1
              else dataset.intersect_groups(attrs))
    return " x ".join(attrs), np.asarray(labels, dtype=str)


def dataset_group_index(dataset: TrajectoryDataset, group: str | None = None,
                        intersect: Sequence[str] = (), *, min_cell: int = MIN_CELL,
                        warn: bool = True, withheld: Collection[str] = ()) -> GroupIndex:
    """:func:`group_index` of :func:`dataset_groups`, intersections protected line by line."""
    dataset_groups(dataset, group, intersect)  # the attributes and labels checked
    attrs = [group or dataset.group_attrs[0], *intersect]
    if dataset.members is not None:  # cells of fewer than 11 people (members who re-enrol)
        withheld = {*withheld, *few_members(joined_labels(dataset.groups, attrs),
                                            dataset.members, min_cell)}
    return table_index(dataset.groups, attrs, min_cell=min_cell, warn=warn, withheld=withheld,
                       source=dataset.source)


def joined_labels(groups: Mapping[str, ArrayLike], attrs: Sequence[str]) -> NDArray[np.str_]:
    """Each episode's cell of the table of ``attrs``: a label, or ``"black x female"``.

    As :meth:`~equicare.data.TrajectoryDataset.intersect_groups` joins them, from any
    mapping of attributes to per-episode labels (a dataset's ``groups``, a panel's scan).
    """
    out = np.asarray(groups[attrs[0]]).astype(str).astype(object)
    for a in attrs[1:]:
        out = out + " x " + np.asarray(groups[a]).astype(str).astype(object)
    return np.asarray(out.astype(str))


def table_index(groups: Mapping[str, ArrayLike], attrs: Sequence[str], *,
                min_cell: int = MIN_CELL, warn: bool = True,
                withheld: Collection[str] = (), source: str | None = None) -> GroupIndex:
    """:func:`group_index` of the table of ``attrs`` (one attribute or an intersection).

    The one place where an audit's published cells are decided, in memory
    (:func:`dataset_group_index`) and streamed (:func:`~equicare.fairness.audit_stream`, from
    the panel's scan), so both suppress the same cells: small ones, those ``withheld`` by the
    caller, and their complements line by line.

    Parameters
    ----------
    groups : mapping of str to array-like of shape (n_episodes,)
        Each attribute's label of every episode.
    attrs : sequence of str
        The table's attributes (the audited group, then the intersected ones).
    min_cell, warn, withheld, source
        As :func:`group_index`.

    Returns
    -------
    GroupIndex
    """
    comps = [np.asarray(groups[a]).astype(str) for a in attrs]
    return group_index(joined_labels(groups, attrs), name=" x ".join(attrs), min_cell=min_cell,
                       warn=warn, components=comps, withheld=withheld, source=source)


def withheld_cells(dataset: TrajectoryDataset | Mapping[str, ArrayLike], attrs: Sequence[str],
                   withheld: Mapping[str, Collection[str]]) -> set[str]:
    """Cells of the table of ``attrs`` that hold a level withheld from outside.

    ``withheld`` maps attributes to levels another published table would reveal by difference
    (``equicare run``: the held-out levels of :func:`equicare.privacy.split_withheld`). With
    one attribute the cells are its withheld levels; with an intersection (``"black x
    female"``) every cell in the row or column of a withheld level, so that the level's total
    is never the sum of published cells. Pass the result as ``withheld`` / ``suppress`` to
    the table's suppression.

    Parameters
    ----------
    dataset : TrajectoryDataset or mapping of str to array-like of shape (n_episodes,)
        The episodes the table is made of, or their labels by attribute (a panel's scan, for
        :func:`~equicare.fairness.audit_stream`).
    attrs : sequence of str
        The table's group attributes (one, or an intersection's).
    withheld : mapping of str to collection of str
        Levels per attribute; an attribute the dataset lacks is an error.

    Returns
    -------
    set of str
        Those cells, and (a dataset with ``members``: people who re-enrol) the cells of
        fewer than 11 people.
    """
    groups = dataset.groups if isinstance(dataset, TrajectoryDataset) else dataset
    bad = sorted(set(withheld) - set(groups))
    if bad:
        raise InvalidParameterError(f"withheld_cells: unknown group attribute(s) {bad}; the "
                                    f"dataset has {list(groups)}.")
    labels = joined_labels(groups, attrs)
    hit = np.zeros(labels.shape[0], dtype=bool)
    for a in attrs:
        hit |= np.isin(np.asarray(groups[a]).astype(str),
                       np.array(sorted(map(str, withheld.get(a, ()))), dtype=str))
    out = {str(v) for v in np.unique(labels[hit])}
    if isinstance(dataset, TrajectoryDataset) and dataset.members is not None:
        out |= few_members(labels, dataset.members)  # cells of fewer than 11 people
    return out
