"""Fairness audits of panels larger than memory: group sums added up chunk by chunk.

Every audit metric is a function of *group sums* of per-episode columns (allocation numerators
and denominators, need, the OPE parts of each policy's value) for the data and for each bootstrap
replicate. A chunk of whole episodes contributes ``H^T x`` and ``W (H * x)`` (``H`` the episodes'
group one-hot rows, ``W`` Poisson(1) bootstrap weights keyed by episode id,
:mod:`equicare.ope._resample`), so the chunks' contributions add up and the audit equals the
in-memory :meth:`FairnessAudit.run` given the same weights (tests check 1e-9). What is kept per
episode is a handful of numbers (for the permutation test and the level-rate table), never rows.

Group values use the importance-sampling estimators (``is``, ``wis``, ``pdis``, ``wpdis``) with the
logged propensities; estimators that need a Q-model fitted on the whole panel are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import DataValidationError
from equicare.fairness._allocation import build_frames, level_table
from equicare.fairness._audit import (
    BEHAVIOR,
    AuditResult,
    FairnessAudit,
    PolicyAudit,
    _mean_combine,
    _outcome_frame,
)
from equicare.fairness._bootstrap import split_random_state
from equicare.fairness._groups import GroupIndex, group_index
from equicare.fairness._rows import action_set, episode_totals, level_matrix, need_rows, row_pass
from equicare.utils import PARAM_MESSAGE

__all__ = ["audit_stream", "STREAM_ESTIMATORS"]

#: Estimators of the group values that stream.
STREAM_ESTIMATORS = ("is", "wis", "pdis", "wpdis")


def _labels(groups: Mapping[str, NDArray[Any]], attrs: list[str]) -> NDArray[np.str_]:
    out = np.asarray(groups[attrs[0]]).astype(str).astype(object)
    for a in attrs[1:]:
        out = out + " x " + np.asarray(groups[a]).astype(str).astype(object)
    return out.astype(str)


class _Acc:
    """Running group sums of one block of columns (point and replicates)."""

    def __init__(self) -> None:
        self.point: NDArray[np.float64] | None = None
        self.reps: NDArray[np.float64] | None = None

    def add(self, h: NDArray[np.float64], x: NDArray[np.float64],
            w: NDArray[np.float64] | None) -> None:
        e, g = h.shape
        m = x.shape[1]
        hx = (h[:, :, None] * x[:, None, :]).reshape(e, g * m)
        p = hx.sum(axis=0).reshape(g, m)
        self.point = p if self.point is None else self.point + p
        if w is not None:
            r = (w @ hx).reshape(w.shape[0], g, m)
            self.reps = r if self.reps is None else self.reps + r

    def sums(self) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        assert self.point is not None
        return self.point, self.reps


def audit_stream(
    source: str | os.PathLike[str],
    policies: Mapping[str, Any] | None = None,
    *,
    manifest: Any,
    config: FairnessAudit | None = None,
    chunk_rows: int = 500_000,
    random_state: int = 42,
) -> AuditResult:
    """Audit the logged behaviour and each policy on a panel read in chunks of whole episodes.

    Parameters
    ----------
    source : path-like
        Parquet file or folder, CSV or DuckDB file.
    policies : mapping of name to Policy, optional
        Each must serve any subset of the panel's rows (a policy file, a model folder).
    manifest : Manifest, dict or path to a TOML manifest
    config : FairnessAudit, optional
        Settings (default ``FairnessAudit()``); ``estimator`` must be one of ``is, wis, pdis,
        wpdis`` or None.
    chunk_rows : int
        Rows per chunk.
    random_state : int
        Seed of the Poisson bootstrap weights (keyed by episode id) and of the permutation test.

    Returns
    -------
    AuditResult
        The same result as ``config.run(dataset, policies, weights=W, random_state=seed)`` on the
        whole panel in memory with ``W = poisson_weights(episode_keys(ids), n_boot, seed)``.
    """
    from equicare.data import iter_chunks, scan_panel
    from equicare.data._io import _manifest_of
    from equicare.ope import OPEInputs, combine, episode_keys, episode_parts, poisson_weights

    cfg = config if config is not None else FairnessAudit()
    if cfg.estimator not in (*STREAM_ESTIMATORS, None):
        raise ValueError(PARAM_MESSAGE.format(
            name="estimator", owner="audit_stream",
            expected="one of 'is', 'wis', 'pdis', 'wpdis' or None (estimators with a Q-model "
                     "need a fit on the whole panel)", got=cfg.estimator))
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise ValueError(PARAM_MESSAGE.format(name="random_state", owner="audit_stream",
                                              expected="an int seed", got=random_state))
    pols = dict(policies or {})
    if BEHAVIOR in pols:
        raise ValueError(f"The policy name {BEHAVIOR!r} is reserved for the logged behaviour.")
    man = _manifest_of(manifest)
    scan = scan_panel(source, man)
    if not man.groups:
        raise DataValidationError("The panel has no group attributes (manifest dataset.groups); "
                                  "a fairness audit needs at least one.")
    attrs = [cfg.group or man.groups[0], *cfg.intersect]
    unknown = [a for a in attrs if a not in man.groups]
    if unknown:
        raise DataValidationError(f"Unknown group attribute(s) {unknown}; the panel has "
                                  f"{list(man.groups)}.")
    gname = " x ".join(attrs)
    gi_all = group_index(_labels(scan.episode_groups, attrs), name=gname, min_cell=cfg.min_cell)
    published = pd.Index(gi_all.labels)
    horizon = scan.max_len
    seed = int(random_state)
    _, rng = split_random_state(seed)
    names = [BEHAVIOR, *pols]
    n_boot = cfg.n_boot
    spec: str | None = None
    level_names: list[str] = []
    alloc_acc, out_acc = _Acc(), {n: _Acc() for n in names}
    ep_num: list[NDArray[np.float64]] = []
    ep_den: list[NDArray[np.float64]] = []
    ep_lnum: list[NDArray[np.float64]] = []
    ep_codes: list[NDArray[np.int64]] = []
    has_need = False
    layouts: dict[str, Any] = {}
    for chunk in iter_chunks(source, man, chunk_rows=chunk_rows, scan=scan):
        ds: TrajectoryDataset = chunk.dataset
        spec, mask = action_set(ds.action_space, cfg.action)
        level_names, lmat = level_matrix(ds.action_space)
        cols = mask[:, None].astype(np.float64)
        if cfg.with_level_rates:
            cols = np.concatenate([cols, lmat], axis=1)
        codes = published.get_indexer(_labels(ds.groups, attrs)).astype(np.int64)
        h = np.zeros((ds.n_episodes, len(published)))
        k = codes >= 0
        h[np.flatnonzero(k), codes[k]] = 1.0
        w = (poisson_weights(episode_keys(ds.episode_ids), n_boot, seed) if n_boot > 0
             else None)
        nums, lnums, p_logged = [], [], {}
        den = np.zeros(ds.n_episodes)
        for name in names:
            pol = None if name == BEHAVIOR else pols[name]
            alloc, pl, _, _ = row_pass(ds, pol, cols, source=name)
            num, den = episode_totals(ds, alloc, cfg.level)
            nums.append(num[:, 0])
            lnums.append(num[:, 1:])
            p_logged[name] = pl
        nr = need_rows(ds, cfg.need)
        has_need = nr is not None
        block = [np.stack(nums, axis=1), den[:, None]]
        if nr is not None:
            block.append(episode_totals(ds, nr, cfg.level)[0][:, None])
        alloc_acc.add(h, np.concatenate(block, axis=1), w)
        ep_num.append(np.stack(nums, axis=1))
        ep_den.append(den)
        ep_lnum.append(np.stack(lnums))
        ep_codes.append(codes)
        if cfg.estimator is not None:
            ones = np.ones((ds.n_episodes, 1))
            out_acc[BEHAVIOR].add(h, np.concatenate([ds.returns(discount=True)[:, None], ones],
                                                    axis=1), w)
            b = ds.behavior_prob
            for name in pols:
                if b is None or not bool(np.all(np.isfinite(b) & (b > 0) & (b <= 1 + 1e-9))):
                    raise DataValidationError(
                        "A streamed audit values policies by importance sampling with the logged "
                        "propensities: name them as dataset.behavior_prob in the manifest (values "
                        "in (0, 1]).")
                inputs = OPEInputs(rewards=ds.rewards, episode_offsets=ds.episode_offsets,
                                   gamma=ds.gamma, rho=p_logged[name] / b, horizon=horizon)
                parts = episode_parts(inputs, [cfg.estimator], truncate=cfg.truncate)
                layouts[name] = parts
                out_acc[name].add(h, np.concatenate([parts.matrix, ones], axis=1), w)
    assert spec is not None
    gi = GroupIndex(name=gname, labels=gi_all.labels, suppressed=gi_all.suppressed,
                    codes=np.concatenate(ep_codes), counts=gi_all.counts, min_cell=cfg.min_cell)
    num_all = np.concatenate(ep_num)
    den_all = np.concatenate(ep_den)
    # the need column's sums are in alloc_acc; a zero placeholder tells build_frames it exists
    frames = build_frames(names, num_all, den_all, np.zeros_like(den_all) if has_need else None,
                          gi, None, action=spec, level=cfg.level, alpha=cfg.alpha,
                          ci_method=cfg.ci_method, n_permutations=cfg.n_permutations,
                          random_state=rng, sums=alloc_acc.sums())
    outcomes: dict[str, Any] = dict.fromkeys(names)
    if cfg.estimator is not None:
        outcomes[BEHAVIOR] = _outcome_frame(BEHAVIOR, "on_policy", np.zeros((0, 1)),
                                            _mean_combine, gi, None, cfg.alpha, cfg.ci_method,
                                            sums=out_acc[BEHAVIOR].sums())
        key = cfg.estimator
        for name in pols:
            parts = layouts[name]

            def comb(s: NDArray[np.float64], c: NDArray[np.float64], parts: Any = parts
                     ) -> NDArray[np.float64]:
                return np.asarray(combine(parts, s, np.asarray(c))[key])

            outcomes[name] = _outcome_frame(name, key, np.zeros((0, 1)), comb, gi, None,
                                            cfg.alpha, cfg.ci_method, sums=out_acc[name].sums())
    levels = None
    if cfg.with_level_rates:
        levels = level_table(names, np.concatenate(ep_lnum, axis=1), den_all, gi, level_names)
    return AuditResult(group=gname, action=spec, n_episodes=gi.n_kept,
                       policies={k: PolicyAudit(k, frames[k], outcomes[k]) for k in names},
                       settings=cfg.to_dict(), level_rates=levels)
