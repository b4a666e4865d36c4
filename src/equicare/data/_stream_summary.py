"""The panel summary of ``equicare validate`` from chunks of whole episodes (``--chunk-rows``).

:meth:`TrajectoryDataset.summary` needs the whole panel; every key but ``table_cells`` is a sum,
a union or a tail of per-chunk quantities, so :class:`SummaryParts` collects them chunk by chunk
(they add up in any order, also across executor shards) and :func:`stream_summary` writes the
same dictionary. The propensities' published range (:func:`equicare.privacy.tail_range`) needs
only the ``k`` smallest and largest values, ``k`` set by the panel's row count
(:func:`tail_keep`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.utils import MIN_CELL

__all__ = ["SummaryParts", "stream_summary", "summary_dict", "tail_keep", "TABLE_CELLS_NOTE"]

TABLE_CELLS_NOTE = (
    "table_cells (which categorical columns the tables' cells keep) is not computed with "
    "--chunk-rows: choosing them needs the whole panel in memory; validate without --chunk-rows "
    "to see it."
)


def tail_keep(n_rows: int) -> int:
    """Values of each tail that :func:`equicare.privacy.tail_range` reads on ``n_rows`` values."""
    from equicare.privacy import tail_quantile

    return int(math.floor((max(int(n_rows), 1) - 1) * tail_quantile(n_rows))) + 2


def _smallest(v: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    return np.sort(v) if v.size <= k else np.sort(np.partition(v, k - 1)[:k])


def _largest(v: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    return np.sort(v) if v.size <= k else np.sort(np.partition(v, v.size - k)[v.size - k:])


@dataclass
class SummaryParts:
    """Per-chunk pieces of the panel summary that add up over chunks.

    Attributes
    ----------
    fixed : dict
        What every chunk shares (features, actions, levels, reward weights, gamma).
    n_episodes, terminal : int
        Episodes, and those ending in a terminal row.
    observed : dict of str to set of int
        Codes seen in each categorical state column.
    need_sum : float
        Sum of the episodes' need flags (None without a need column).
    bp_low, bp_high : ndarray of shape (<= k,)
        The ``k`` smallest and largest logged propensities, sorted (None without them).
    n_bp, k : int
        Propensities seen, and values kept per tail.
    extra : object, optional
        A caller's statistic of the chunks (``validate_stream``'s ``chunk_stat``), summed with
        ``+``; None when there is none.
    """

    fixed: dict[str, Any]
    n_episodes: int
    terminal: int
    observed: dict[str, set[int]] = field(default_factory=dict)
    need_sum: float | None = None
    bp_low: NDArray[np.float64] | None = None
    bp_high: NDArray[np.float64] | None = None
    n_bp: int = 0
    k: int = 2
    extra: Any = None

    @classmethod
    def of(cls, ds: Any, k: int, extra: Any = None) -> SummaryParts:
        """The pieces of one chunk (a :class:`TrajectoryDataset` of whole episodes)."""
        cat = ds.categorical
        fixed = {
            "n_features": ds.n_features,
            "categorical_levels": {str(n): len(lv) for n, lv in
                                   zip(ds.categorical_names, ds.categorical_levels, strict=True)}
            if cat is not None else None,
            "n_actions": ds.n_actions,
            "action_components": ds.action_space.to_dict(),
            "reward_weights": dict(zip(ds.reward_names, ds.reward_weights.tolist(), strict=True)),
            "gamma": ds.gamma,
        }
        observed = ({str(n): set(np.unique(cat[:, j]).tolist())
                     for j, n in enumerate(ds.categorical_names)} if cat is not None else {})
        bp = None if ds.behavior_prob is None else np.asarray(ds.behavior_prob, np.float64)
        if bp is not None:
            bp = bp[np.isfinite(bp)]
        return cls(fixed=fixed, n_episodes=int(ds.n_episodes),
                   terminal=int(ds.n_episodes - ds.censored.sum()), observed=observed,
                   need_sum=None if ds.need is None else float(np.sum(ds.need)),
                   bp_low=None if bp is None else _smallest(bp, k),
                   bp_high=None if bp is None else _largest(bp, k),
                   n_bp=0 if bp is None else int(bp.size), k=k, extra=extra)

    def __add__(self, o: SummaryParts) -> SummaryParts:
        def tails(a: NDArray[np.float64] | None, b: NDArray[np.float64] | None, low: bool
                  ) -> NDArray[np.float64] | None:
            if a is None or b is None:
                return a if b is None else b
            both = np.concatenate([a, b])
            return _smallest(both, self.k) if low else _largest(both, self.k)

        return SummaryParts(
            fixed=self.fixed, n_episodes=self.n_episodes + o.n_episodes,
            terminal=self.terminal + o.terminal,
            observed={n: self.observed.get(n, set()) | o.observed.get(n, set())
                      for n in dict.fromkeys([*self.observed, *o.observed])},
            need_sum=(None if self.need_sum is None and o.need_sum is None
                      else (self.need_sum or 0.0) + (o.need_sum or 0.0)),
            bp_low=tails(self.bp_low, o.bp_low, True), bp_high=tails(self.bp_high, o.bp_high,
                                                                     False),
            n_bp=self.n_bp + o.n_bp, k=self.k,
            extra=self.extra if o.extra is None else o.extra if self.extra is None
            else self.extra + o.extra)


def _quantile(low: NDArray[np.float64], high: NDArray[np.float64], n: int, q: float) -> float:
    """``np.quantile(v, q)`` (linear) of ``n`` values from their smallest and largest ones."""
    h = (n - 1) * q
    i = int(math.floor(h))
    t = h - i

    def at(j: int) -> float:
        return float(low[j]) if j < low.size else float(high[j - (n - high.size)])

    a, b = at(i), at(min(i + 1, n - 1))
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)  # numpy's _lerp


def _tail_range(parts: SummaryParts) -> dict[str, float | None]:
    from equicare.privacy import round_significant, tail_quantile, tail_range

    assert parts.bp_low is not None and parts.bp_high is not None
    n = parts.n_bp
    if n <= parts.bp_low.size:  # every value is kept
        return tail_range(parts.bp_low)
    p = tail_quantile(n)
    lo, hi = round_significant(np.array([_quantile(parts.bp_low, parts.bp_high, n, p),
                                         _quantile(parts.bp_low, parts.bp_high, n, 1.0 - p)]),
                               3)
    return {"p_bottom11": float(lo), "p_top11": float(hi)}


def summary_dict(*, n_episodes: int, n_steps: int, lengths: NDArray[np.int64],
                 n_features: int, categorical: dict[str, tuple[int, int]] | None,
                 terminal: int, n_actions: int, observed_actions: int,
                 action_components: dict[str, Any], reward_nonzero: dict[str, int],
                 reward_weights: dict[str, float], gamma: float,
                 group_counts: dict[str, dict[str, int]],
                 behavior_prob: dict[str, float | None] | None,
                 need_episodes: float | None,
                 withheld: Mapping[str, Collection[str]] | None = None) -> dict[str, Any]:
    """The summary's keys, in memory (:meth:`TrajectoryDataset.summary`) and streamed alike.

    ``categorical`` maps each categorical column to ``(levels, observed levels)``;
    ``group_counts`` are raw episode counts (small cells are suppressed here);
    ``behavior_prob`` is the published range (:func:`equicare.privacy.tail_range`).
    ``terminal`` (episodes), ``reward_nonzero`` (rows per reward component) and
    ``need_episodes`` are raw counts too: with the published episode and step counts a share
    gives its count back, so a count of 1 to 10 (or all but 1 to 10) is published as None
    (:func:`equicare.privacy.small_count`): the terminal and censored episodes, a reward
    component's non-zero share of the steps, the share of episodes with need.
    """
    from equicare.privacy import small_count, suppress_counts, tail_range

    def pct(count: float, total: int) -> float | None:
        shown = small_count(int(round(count)), int(total))
        return None if shown is None else float(100.0 * count / max(int(total), 1))

    out: dict[str, Any] = {
        "n_episodes": int(n_episodes),
        "n_steps": int(n_steps),
        "episode_length": {"median": float(np.median(lengths)), **tail_range(lengths)},
        "n_features": n_features,
        "categorical_states": {n: {"levels": lv, "observed": obs}
                               for n, (lv, obs) in categorical.items()}
        if categorical is not None else {},
        "episode_ends": {"terminal": small_count(int(terminal), int(n_episodes)),
                         "censored": small_count(int(n_episodes - terminal), int(n_episodes))},
        "n_actions": n_actions,
        "observed_actions": int(observed_actions),
        "action_components": action_components,
        "reward_nonzero_pct": {k: pct(v, n_steps) for k, v in reward_nonzero.items()},
        "reward_weights": reward_weights,
        "gamma": gamma,
        "groups": {g: suppress_counts(c, withheld=(withheld or {}).get(g, ()))
                   for g, c in group_counts.items()},
    }
    if behavior_prob is not None:
        out["behavior_prob"] = behavior_prob
    if need_episodes is not None:
        out["need_pct"] = pct(need_episodes, n_episodes)
    return out


def stream_summary(parts: SummaryParts, counts: Any, scan: Any) -> dict[str, Any]:
    """:meth:`TrajectoryDataset.summary` of the whole panel, from the summed chunk pieces.

    Parameters
    ----------
    parts : SummaryParts
        Summed over every chunk.
    counts : PanelCounts
        Summed over every chunk (actions, non-zero rewards, episodes per group level).
    scan : PanelScan
        The panel scan (episode lengths).
    """
    f = parts.fixed
    return summary_dict(
        n_episodes=parts.n_episodes, n_steps=int(counts.n_rows), lengths=scan.lengths,
        n_features=f["n_features"],
        categorical=None if f["categorical_levels"] is None else {
            n: (lv, len(parts.observed.get(n, ()))) for n, lv in f["categorical_levels"].items()},
        terminal=parts.terminal, n_actions=f["n_actions"],
        observed_actions=int((counts.action_counts > 0).sum()),
        action_components=f["action_components"],
        reward_nonzero={n: int(counts.reward_nonzero.get(n, 0)) for n in f["reward_weights"]},
        reward_weights=f["reward_weights"], gamma=f["gamma"],
        group_counts={g: dict(sorted(c.items())) for g, c in counts.group_counts.items()},
        behavior_prob=None if parts.bp_low is None else _tail_range(parts),
        need_episodes=parts.need_sum,
        # levels of fewer than 11 people (the manifest's member; the chunks' member sets
        # summed), as the in-memory summary withholds them
        withheld={g: {lv for lv, who in levels.items() if 0 < len(who) < MIN_CELL}
                  for g, levels in getattr(counts, "group_members", {}).items()})
