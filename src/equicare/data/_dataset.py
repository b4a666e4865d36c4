"""TrajectoryDataset: a panel as contiguous NumPy arrays with cheap episode and group views."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from equicare.data._labels import check_group_labels
from equicare.exceptions import InvalidParameterError, UnknownNameError
from equicare.spaces import FactoredActionSpace
from equicare.utils import MIN_CELL, RandomState, check_random_state

__all__ = ["TrajectoryDataset", "Episode"]


class Episode(NamedTuple):
    """Zero-copy view of one episode's arrays (slices of the dataset arrays)."""

    id: Any
    states: NDArray[np.float32]
    actions: NDArray[np.int64]
    rewards: NDArray[np.float64]
    terminals: NDArray[np.bool_]
    times: NDArray[np.int64]
    behavior_prob: NDArray[np.float64] | None


@dataclass(frozen=True, eq=False)
class TrajectoryDataset:
    """A longitudinal panel: one row per decision step, an episode's rows contiguous, in time order.

    Build one with :func:`equicare.data.load_dataset`, :func:`equicare.data.from_frame` or directly
    from arrays. All arrays are indexed by row ``i`` (``n_steps`` rows) unless stated.

    Parameters
    ----------
    states : ndarray of shape (n_steps, n_features), float32
        Numeric state features.
    actions : ndarray of shape (n_steps,), int64
        Flat action index (mixed radix over ``action_space``).
    reward_components : ndarray of shape (n_steps, n_rewards), float64
        Raw reward components; the shaped reward is ``reward_components @ reward_weights``.
    terminals : ndarray of shape (n_steps,), bool
        True at a row after which the episode truly ends (death, discharge, disenrolment, an
        absorbing outcome). An episode whose last row is not terminal is *censored*: the
        observation window closed, the process went on. Without a ``terminal`` column in the
        manifest no row is terminal (every episode end is censored).
    episode_offsets : ndarray of shape (n_episodes + 1,), int64
        Rows of episode ``e`` are ``episode_offsets[e]:episode_offsets[e+1]``.
    episode_ids : ndarray of shape (n_episodes,)
        Original episode identifiers.
    times : ndarray of shape (n_steps,), int64
        Original time values (contiguous within an episode).
    action_space : FactoredActionSpace
    state_names : tuple of str
    reward_names : tuple of str
    reward_weights : ndarray of shape (n_rewards,)
    gamma : float
        Discount of values (Contract 1).
    groups : dict of str to ndarray of shape (n_episodes,)
        Protected attributes per episode; the first key is the default group attribute. Every
        episode needs a label: None, NaN or a blank string raises
        :class:`~equicare.exceptions.DataValidationError` (label such episodes explicitly, e.g.
        ``"unknown"``, to audit them as a group).
    categorical : ndarray of shape (n_steps, n_categorical), int64, optional
        Codes of categorical state columns; ``categorical_levels`` holds their labels.
    behavior_prob : ndarray of shape (n_steps,), float64, optional
        Logged probability of the logged action under current practice.
    behavior_prob_estimated : bool, default=False
        ``behavior_prob`` holds propensities an evaluation estimated (a streamed chunk's,
        :class:`~equicare.ope._stream_behavior.StreamBehavior`), not logged ones: policies are
        asked for their probabilities without them (:meth:`policy_view`), as in memory, where
        the estimates never enter the dataset.
    need : ndarray of shape (n_episodes,), float64, optional
        Clinical need flag per episode (for proportional parity).
    members : ndarray of shape (n_episodes,), optional
        The person each episode belongs to (the manifest's ``member``), when members re-enrol
        and one person has several episodes. Small-cell suppression then also counts people:
        a group level with fewer than 11 distinct members is never published, however many
        episodes they have (:meth:`few_member_levels`).
    mediators : ndarray of shape (n_steps, n_mediators), float64, optional
    extras : dict of str to ndarray of shape (n_steps,)
        Columns the manifest does not name, carried along untouched.
    manifest : Manifest, optional
        The manifest the panel was read with.
    source : str, optional
        The panel file (or table) the rows came from, as :func:`~equicare.data.load_dataset`
        was given it; errors about the data name it. Subsets and splits keep it.
    """

    states: NDArray[np.float32]
    actions: NDArray[np.int64]
    reward_components: NDArray[np.float64]
    terminals: NDArray[np.bool_]
    episode_offsets: NDArray[np.int64]
    episode_ids: NDArray[Any]
    times: NDArray[np.int64]
    action_space: FactoredActionSpace
    state_names: tuple[str, ...] = ()
    reward_names: tuple[str, ...] = ("reward",)
    reward_weights: NDArray[np.float64] = field(default_factory=lambda: np.ones(1))
    gamma: float = 0.99
    groups: dict[str, NDArray[Any]] = field(default_factory=dict)
    categorical: NDArray[np.int64] | None = None
    categorical_names: tuple[str, ...] = ()
    categorical_levels: tuple[tuple[Any, ...], ...] = ()
    behavior_prob: NDArray[np.float64] | None = None
    need: NDArray[np.float64] | None = None
    members: NDArray[Any] | None = None
    behavior_prob_estimated: bool = False
    mediators: NDArray[np.float64] | None = None
    mediator_names: tuple[str, ...] = ()
    extras: dict[str, NDArray[Any]] = field(default_factory=dict)
    manifest: Any = None  # equicare.data.Manifest it was read with, if any
    source: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = self.actions.shape[0]
        offs = np.asarray(self.episode_offsets, dtype=np.int64)
        object.__setattr__(self, "episode_offsets", offs)
        if offs.ndim != 1 or offs[0] != 0 or offs[-1] != n or np.any(np.diff(offs) <= 0):
            raise InvalidParameterError(
                "episode_offsets must start at 0, end at n_steps and increase strictly."
            )
        if self.states.shape[0] != n:
            raise InvalidParameterError(f"states has {self.states.shape[0]} rows, actions has {n}.")
        rc = np.asarray(self.reward_components, dtype=np.float64)
        if rc.ndim == 1:
            rc = rc[:, None]
        object.__setattr__(self, "reward_components", rc)
        object.__setattr__(
            self, "reward_weights", np.asarray(self.reward_weights, dtype=np.float64)
        )
        if rc.shape != (n, len(self.reward_weights)) or len(self.reward_names) != rc.shape[1]:
            raise InvalidParameterError(
                "reward_components, reward_names and reward_weights disagree in size.")
        for name, arr in (("terminals", self.terminals), ("times", self.times)):
            if arr.shape != (n,):
                raise InvalidParameterError(f"{name} must have shape ({n},), got {arr.shape}.")
        for k, v in self.groups.items():
            if v.shape[0] != self.n_episodes:
                raise InvalidParameterError(f"group {k!r} must have one label per episode.")
            check_group_labels(v, k, "TrajectoryDataset", self.episode_ids)

    # ------------------------------------------------------------------ sizes
    @property
    def n_steps(self) -> int:
        """Number of rows (decision steps)."""
        return int(self.actions.shape[0])

    def __len__(self) -> int:
        return self.n_steps

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.episode_offsets.shape[0] - 1)

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return self.action_space.n_actions

    @property
    def n_features(self) -> int:
        """Number of numeric state features."""
        return int(self.states.shape[1])

    @property
    def episode_lengths(self) -> NDArray[np.int64]:
        """Rows per episode, shape ``(n_episodes,)``."""
        return np.diff(self.episode_offsets)

    @property
    def group_attrs(self) -> tuple[str, ...]:
        """Names of the group attributes (first = default)."""
        return tuple(self.groups)

    # ------------------------------------------------------------------ derived row arrays
    def _cached(self, key: str, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def rewards(self) -> NDArray[np.float64]:
        """Shaped reward ``sum_k w_k R_k``, shape ``(n_steps,)``."""
        return self._cached("rewards", lambda: self.reward_components @ self.reward_weights)

    @property
    def episode_index(self) -> NDArray[np.int64]:
        """Episode number of each row, shape ``(n_steps,)``."""
        return self._cached(
            "episode_index",
            lambda: np.repeat(np.arange(self.n_episodes, dtype=np.int64), self.episode_lengths),
        )

    @property
    def step(self) -> NDArray[np.int64]:
        """Position of each row within its episode (0 at the first row), shape ``(n_steps,)``."""
        return self._cached(
            "step",
            lambda: (
                np.arange(self.n_steps, dtype=np.int64)
                - np.repeat(self.episode_offsets[:-1], self.episode_lengths)
            ),
        )

    @property
    def is_first(self) -> NDArray[np.bool_]:
        """True at the first row of each episode, shape ``(n_steps,)``."""
        return self.step == 0

    @property
    def is_last(self) -> NDArray[np.bool_]:
        """True at the last row of each episode, shape ``(n_steps,)``."""

        def make() -> NDArray[np.bool_]:
            out = np.zeros(self.n_steps, dtype=bool)
            out[self.episode_offsets[1:] - 1] = True
            return out

        return self._cached("is_last", make)

    @property
    def censored(self) -> NDArray[np.bool_]:
        """True for episodes whose last row is not terminal, shape ``(n_episodes,)``.

        A censored episode's process continues after its last row; its end carries no
        information about the future value (learners never treat it as zero).
        """
        return ~self.terminals[self.episode_offsets[1:] - 1]

    @property
    def next_index(self) -> NDArray[np.int64]:
        """Row of the next step in the same episode, or -1 at an episode's last row.

        Shape ``(n_steps,)``.
        """

        def make() -> NDArray[np.int64]:
            nxt = np.arange(1, self.n_steps + 1, dtype=np.int64)
            nxt[self.is_last] = -1
            return nxt

        return self._cached("next_index", make)

    @property
    def discounts(self) -> NDArray[np.float64]:
        """``gamma ** step`` per row, shape ``(n_steps,)``."""
        return self._cached("discounts", lambda: self.gamma ** self.step.astype(np.float64))

    @property
    def action_codes(self) -> NDArray[np.int64]:
        """Per-component action codes, shape ``(n_steps, n_components)``."""
        return self._cached("action_codes", lambda: self.action_space.from_flat(self.actions))

    def features(self, one_hot: bool = True) -> NDArray[np.float32]:
        """Model input: numeric states plus one-hot categorical states.

        Returns
        -------
        ndarray of shape (n_steps, n_features + sum of categorical levels), float32
        """
        if self.categorical is None or not one_hot or self.categorical.shape[1] == 0:
            return self.states

        def make() -> NDArray[np.float32]:
            blocks = [self.states]
            assert self.categorical is not None
            for j, levels in enumerate(self.categorical_levels):
                blocks.append(np.eye(len(levels), dtype=np.float32)[self.categorical[:, j]])
            return np.ascontiguousarray(np.concatenate(blocks, axis=1))

        return self._cached("features", make)

    def feature_names(self, one_hot: bool = True) -> list[str]:
        """Names of the columns of :meth:`features`."""
        names = list(self.state_names)
        if one_hot:
            for n, levels in zip(self.categorical_names, self.categorical_levels, strict=True):
                names += [f"{n}={lv}" for lv in levels]
        return names

    # ------------------------------------------------------------------ per-episode sums
    def episode_sum(self, values: NDArray[Any], discount: bool = True) -> NDArray[np.float64]:
        """Sum a per-row quantity within each episode, optionally discounted by ``gamma ** step``.

        Parameters
        ----------
        values : ndarray of shape (n_steps,) or (n_steps, k)
        discount : bool

        Returns
        -------
        ndarray of shape (n_episodes,) or (n_episodes, k)
        """
        v = np.asarray(values, dtype=np.float64)
        if discount:
            v = v * (self.discounts if v.ndim == 1 else self.discounts[:, None])
        return np.add.reduceat(v, self.episode_offsets[:-1], axis=0)

    def returns(self, discount: bool = True) -> NDArray[np.float64]:
        """Return of each episode of the shaped reward, shape ``(n_episodes,)``."""
        return self.episode_sum(self.rewards, discount)

    def component_returns(self, discount: bool = True) -> NDArray[np.float64]:
        """Return of each episode per reward component, shape ``(n_episodes, n_rewards)``."""
        return self.episode_sum(self.reward_components, discount)

    def episode_rows(self, values: NDArray[Any]) -> NDArray[Any]:
        """Broadcast a per-episode array to rows, shape ``(n_steps, ...)``."""
        return np.asarray(values)[self.episode_index]

    # ------------------------------------------------------------------ views
    def episode(self, e: int) -> Episode:
        """Zero-copy view of episode ``e`` (0-based position, not the id)."""
        if not -self.n_episodes <= e < self.n_episodes:
            raise IndexError(f"episode {e} out of range for {self.n_episodes} episodes.")
        e %= self.n_episodes
        s = slice(int(self.episode_offsets[e]), int(self.episode_offsets[e + 1]))
        bp = None if self.behavior_prob is None else self.behavior_prob[s]
        return Episode(
            self.episode_ids[e],
            self.states[s],
            self.actions[s],
            self.rewards[s],
            self.terminals[s],
            self.times[s],
            bp,
        )

    def iter_episodes(self) -> Iterator[Episode]:
        """Iterate over episode views (for inspection; never on a hot path)."""
        for e in range(self.n_episodes):
            yield self.episode(e)

    def group_labels(self, attr: str | None = None) -> NDArray[Any]:
        """Label of each episode for a group attribute (default: the first).

        Shape ``(n_episodes,)``.
        """
        if not self.groups:
            raise UnknownNameError(
                "This dataset has no group attributes (manifest dataset.groups).")
        key = attr or next(iter(self.groups))
        if key not in self.groups:
            raise UnknownNameError(f"Unknown group attribute {key!r}; known: {list(self.groups)}.")
        return self.groups[key]

    def intersect_groups(self, attrs: Sequence[str]) -> NDArray[np.str_]:
        """Intersectional labels such as ``"black x female"``, shape ``(n_episodes,)``."""
        parts = [self.group_labels(a).astype(str) for a in attrs]
        out = parts[0].astype(object)
        for p in parts[1:]:
            out = out + " x " + p.astype(object)
        return out.astype(str)

    def subset(self, episodes: Sequence[int] | NDArray[Any]) -> TrajectoryDataset:
        """Dataset of the given episodes, in that order.

        Episodes are given as positions or as a boolean mask over episodes.
        """
        ep = np.asarray(episodes)
        if ep.dtype == bool:
            ep = np.flatnonzero(ep)
        ep = ep.astype(np.int64)
        if ep.size == 0:
            raise InvalidParameterError("Cannot take a subset with no episodes.")
        lengths = self.episode_lengths[ep]
        starts = self.episode_offsets[ep]
        offsets = np.zeros(ep.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)

        def take(a: NDArray[Any] | None) -> NDArray[Any] | None:
            return None if a is None else a[rows]

        return replace(
            self,
            states=self.states[rows],
            actions=self.actions[rows],
            reward_components=self.reward_components[rows],
            terminals=self.terminals[rows],
            episode_offsets=offsets,
            episode_ids=self.episode_ids[ep],
            times=self.times[rows],
            groups={k: v[ep] for k, v in self.groups.items()},
            categorical=take(self.categorical),
            behavior_prob=take(self.behavior_prob),
            need=None if self.need is None else self.need[ep],
            members=None if self.members is None else self.members[ep],
            mediators=take(self.mediators),
            extras={k: v[rows] for k, v in self.extras.items()},
            _cache={},
        )

    def episode_blocks(self, max_rows: int) -> Iterator[tuple[int, int, TrajectoryDataset]]:
        """Consecutive blocks of whole episodes of at most ``max_rows`` rows each.

        An episode longer than ``max_rows`` forms its own block. Use it to bound the memory of a
        row-wise pass whose output is wide (a policy's ``(rows, n_actions)`` probabilities) while
        letting the policy read each episode's history.

        Yields
        ------
        (row_start, row_stop, TrajectoryDataset)
            The block's rows in this dataset and the block itself (the dataset itself when it
            fits in one block).
        """
        n = self.n_steps
        if n <= max_rows:
            yield 0, n, self
            return
        offs = self.episode_offsets
        e = 0
        while e < self.n_episodes:
            stop = int(np.searchsorted(offs, offs[e] + max_rows, side="right")) - 1
            stop = min(max(stop, e + 1), self.n_episodes)
            yield int(offs[e]), int(offs[stop]), self.subset(np.arange(e, stop))
            e = stop

    def by_group(self, attr: str | None = None) -> dict[Any, TrajectoryDataset]:
        """Split into one dataset per label of a group attribute (sorted by label)."""
        labels = self.group_labels(attr)
        return {lv: self.subset(labels == lv) for lv in np.unique(labels)}

    def _units(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """What splits deal: ``(unit of each episode, lead episode of each unit)``.

        Each episode is its own unit, unless :attr:`members` says which person it belongs to:
        then a person's episodes (re-enrolments) form one unit, so that no person is in both
        parts of a split (a held-out evaluation of episodes whose person also trained the
        policy is not held out). The lead episode (a unit's first) gives its stratum.
        """
        if self.members is None:
            ep = np.arange(self.n_episodes, dtype=np.int64)
            return ep, ep
        _, first, unit = np.unique(np.asarray(self.members).astype(str), return_index=True,
                                   return_inverse=True)
        return unit.astype(np.int64).ravel(), first.astype(np.int64)

    def _stratum_ranks(self, rng: np.random.Generator, stratify: str | None,
                       lead: NDArray[np.int64] | None = None
                       ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Episodes (or the units of ``lead``) shuffled within strata: ``(order, sizes, rank)``.

        ``order`` lists the episodes stratum by stratum, in random order within each;
        ``sizes`` are the strata's sizes in that order; ``rank[i]`` is the position of
        ``order[i]`` within its stratum. One ``rng.random(n)`` draw. With ``lead`` (one episode
        per unit, :meth:`_units`) the units are shuffled, each in its lead episode's stratum.
        """
        idx = np.arange(self.n_episodes) if lead is None else lead
        keys = (
            np.zeros(idx.size, dtype=np.int64)
            if stratify is None
            else np.unique(self.group_labels(stratify)[idx], return_inverse=True)[1]
        )
        order = np.lexsort((rng.random(idx.size), keys))
        ks = keys[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.r_[starts, ks.size])
        rank = np.arange(ks.size) - np.repeat(starts, sizes)
        return order, sizes, rank

    def split(
        self,
        valid_fraction: float = 0.2,
        random_state: RandomState = None,
        stratify: str | None = None,
    ) -> tuple[TrajectoryDataset, TrajectoryDataset]:
        """Split episodes into (train, validation), optionally stratified by a group attribute.

        Parameters
        ----------
        valid_fraction : float in (0, 1)
        random_state : int, Generator or None
        stratify : str, optional
            Group attribute whose proportions both parts keep.
        """
        if not 0 < valid_fraction < 1:
            raise InvalidParameterError(f"valid_fraction must be in (0, 1), got {valid_fraction}.")
        if self.n_episodes < 2:
            raise InvalidParameterError("Need at least 2 episodes to split.")
        rng = check_random_state(random_state)
        # within each stratum, the lowest-ranked fraction goes to validation: of the episodes,
        # or of the members when members re-enrol (a person's episodes stay together)
        unit, lead = self._units()
        order, sizes, rank = self._stratum_ranks(rng, stratify,
                                                 None if self.members is None else lead)
        is_valid = np.zeros(lead.size, dtype=bool)
        n_valid = np.maximum(1, np.round(sizes * valid_fraction)).astype(np.int64)
        n_valid = np.minimum(n_valid, np.maximum(sizes - 1, 1))
        is_valid[order] = rank < np.repeat(n_valid, sizes)
        if is_valid.all():
            is_valid[order[-1]] = False
        is_valid = is_valid[unit]
        return self.subset(~is_valid), self.subset(is_valid)

    def kfold(
        self,
        n_folds: int,
        random_state: RandomState = None,
        stratify: str | None = None,
    ) -> list[tuple[TrajectoryDataset, TrajectoryDataset]]:
        """Split episodes into ``n_folds`` folds: one (train, held-out) pair per fold.

        Every episode is held out exactly once. Within each stratum the episodes are shuffled
        and dealt to the folds in turn, so fold sizes differ by at most one per stratum.

        Parameters
        ----------
        n_folds : int >= 2
        random_state : int, Generator or None
        stratify : str, optional
            Group attribute whose proportions every fold keeps.

        Returns
        -------
        list of (TrajectoryDataset, TrajectoryDataset)
            ``n_folds`` pairs; the held-out parts partition the episodes.
        """
        if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) \
                or n_folds < 2:
            raise InvalidParameterError(f"n_folds must be an int >= 2, got {n_folds!r}.")
        if self.n_episodes < n_folds:
            raise InvalidParameterError(
                f"Need at least {n_folds} episodes for {n_folds} folds, got {self.n_episodes}.")
        rng = check_random_state(random_state)
        unit, lead = self._units()  # members who re-enrol: a person's episodes in one fold
        if lead.size < n_folds:
            raise InvalidParameterError(
                f"Need at least {n_folds} members for {n_folds} folds, got {lead.size}.")
        order, sizes, rank = self._stratum_ranks(rng, stratify,
                                                 None if self.members is None else lead)
        # deal each stratum from a random fold on, so small strata do not all start at fold 0
        shift = np.repeat(rng.integers(0, n_folds, size=sizes.size), sizes)
        fold = np.empty(lead.size, dtype=np.int64)
        fold[order] = (rank + shift) % n_folds
        fold = fold[unit]
        return [(self.subset(fold != k), self.subset(fold == k)) for k in range(n_folds)]

    def with_reward_weights(self, weights: dict[str, float]) -> TrajectoryDataset:
        """Same data with other reward-component weights (unknown names raise ``KeyError``)."""
        w = self.reward_weights.copy()
        for k, v in weights.items():
            if k not in self.reward_names:
                raise UnknownNameError(
                    f"Unknown reward component {k!r}; known: {list(self.reward_names)}.")
            w[self.reward_names.index(k)] = float(v)
        return replace(self, reward_weights=w, _cache={})

    def with_behavior_prob(self, prob: NDArray[np.float64] | None,
                           estimated: bool = False) -> TrajectoryDataset:
        """Same data with the given logged-action propensities, shape ``(n_steps,)``.

        ``None``: the same data without logged propensities (estimated wherever needed).
        ``estimated``: ``prob`` are an evaluation's estimates (:attr:`behavior_prob_estimated`).
        """
        if prob is None:
            return replace(self, behavior_prob=None, behavior_prob_estimated=False, _cache={})
        p = np.asarray(prob, dtype=np.float64)
        if p.shape != (self.n_steps,):
            raise InvalidParameterError(f"prob must have shape ({self.n_steps},), got {p.shape}.")
        return replace(self, behavior_prob=p, behavior_prob_estimated=bool(estimated),
                       _cache={})

    def policy_view(self) -> TrajectoryDataset:
        """The data as a policy reads it: without propensities that were estimated, not logged.

        A policy that defers to current practice reads the logged propensities (a
        :class:`~equicare.policy._cells.CellPolicy` keeps the clinicians' own probability of a
        deferred logged action); an evaluation's estimates are not the panel's, and the same
        policy must give the same probabilities in memory and streamed.
        """
        return self.with_behavior_prob(None) if self.behavior_prob_estimated else self

    # ------------------------------------------------------------------ summaries
    def few_member_levels(self, min_cell: int = MIN_CELL) -> dict[str, set[str]]:
        """The group levels held by 1 to ``min_cell - 1`` distinct members, per attribute.

        Members who re-enrol have several episodes each: 5 members with 12 episodes are a cell
        of 5 people, which no published table may show (the episode counts alone would publish
        it). Empty without ``members``. Pass the result as the ``suppress`` / ``withheld``
        levels of a table (:func:`equicare.privacy.few_members`); complementary suppression then
        completes them.

        Returns
        -------
        dict of str to set of str
            Each group attribute's levels to withhold (absent: none).
        """
        if self.members is None:
            return {}
        from equicare.privacy import few_members

        out = {k: few_members(v, self.members, min_cell) for k, v in self.groups.items()}
        return {k: v for k, v in out.items() if v}

    def _group_counts(self) -> dict[str, dict[str, int]]:
        """Episodes per level of each group attribute, unsuppressed: never to be published.

        For code that needs the exact sizes (e.g. to tell a small level from its complement);
        :meth:`summary` publishes them with :func:`equicare.privacy.suppress_counts`.
        """
        return {k: {str(lv): int(c) for lv, c in zip(*np.unique(v, return_counts=True),
                                                    strict=True)}
                for k, v in self.groups.items()}

    def summary(self) -> dict[str, Any]:
        """Plain-data summary used by ``equicare validate`` and the report (no row-level data).

        Safe to publish: ``groups`` gives the episodes per level of each group attribute with
        the small levels (fewer than 11 episodes) and the levels that would reveal them by
        difference set to None (:func:`equicare.privacy.suppress_counts`); the episode lengths
        and the logged propensities give no minimum or maximum (one member's value) but the
        quantiles with at least 11 episodes (rows) beyond them, ``p_bottom11`` and ``p_top11``
        (:func:`equicare.privacy.tail_range`); the terminal and censored episode counts, the
        rewards' non-zero shares of the steps and the share of episodes with need are None
        when they would give back a count of 1 to 10 (or all but 1 to 10).
        """
        from equicare.data._stream_summary import summary_dict
        from equicare.privacy import tail_range

        out = summary_dict(
            n_episodes=self.n_episodes, n_steps=self.n_steps, lengths=self.episode_lengths,
            n_features=self.n_features,
            categorical=None if self.categorical is None else {
                str(n): (len(lv), int(np.unique(self.categorical[:, j]).size))
                for j, (n, lv) in enumerate(zip(self.categorical_names,
                                                self.categorical_levels, strict=True))},
            terminal=int(self.n_episodes - self.censored.sum()), n_actions=self.n_actions,
            observed_actions=int((self.action_space.counts(self.actions) > 0).sum()),
            action_components=self.action_space.to_dict(),
            reward_nonzero={n: int(np.count_nonzero(self.reward_components[:, j]))
                            for j, n in enumerate(self.reward_names)},
            reward_weights=dict(zip(self.reward_names, self.reward_weights.tolist(),
                                    strict=True)),
            gamma=self.gamma, group_counts=self._group_counts(),
            withheld=self.few_member_levels(),
            behavior_prob=None if self.behavior_prob is None else tail_range(self.behavior_prob),
            need_episodes=None if self.need is None else float(np.sum(self.need)))
        if self.categorical is not None and self.categorical.shape[1] > 1:
            from equicare.data._cells import choose_cells

            # which columns the tables' cells keep (what evaluate's auto, SPIBB and PVI use)
            choice = choose_cells(self, random_state=0)
            out["table_cells"] = {"columns": list(choice.columns),
                                  "dropped": list(choice.dropped)}
        return out
