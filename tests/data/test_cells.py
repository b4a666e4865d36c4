"""Choosing the categorical columns of the tables' cells (equicare.data._cells.choose_cells)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from equicare.data._cells import CellChoice, choose_cells
from tests.ope._garnet import make, two_site_panel, with_site


@pytest.fixture(scope="module")
def garnet():
    return make("s50_a25_g1", 2000, seed=7)


def test_a_site_that_does_not_drive_outcomes_is_pooled_over(garnet):
    """A 30-level site drawn at random per episode changes nothing the dynamics do: the
    tables pool over it; the state column, which drives the outcomes, is kept."""
    _, ds, _ = garnet
    two = with_site(ds, np.random.default_rng(0).integers(0, 30, ds.n_episodes))
    choice = choose_cells(two, random_state=0)
    assert choice.columns == ("state",) and choice.dropped == ("site",)
    assert choice.tests["site"]["gain"] + 2 * choice.tests["site"]["se"] < 0
    assert choice.tests["state"]["kept"] and not choice.tests["site"]["kept"]
    assert choice.tests["state"]["gain"] > 2 * choice.tests["state"]["se"]
    d = choice.to_dict()
    assert d["columns"] == ["state"] and d["dropped"] == ["site"] and d["n_folds"] == 5


def test_the_panel_summary_says_which_columns_the_tables_keep(garnet):
    """``validate``'s summary (``TrajectoryDataset.summary``): ``table_cells`` with several
    categorical columns, nothing with one."""
    _, ds, _ = garnet
    two = with_site(ds, np.random.default_rng(0).integers(0, 30, ds.n_episodes))
    assert two.summary()["table_cells"] == {"columns": ["state"], "dropped": ["site"]}
    assert "table_cells" not in ds.summary()


def test_a_site_with_its_own_dynamics_is_kept():
    """Two sites whose episodes come from different Garnet MDPs: both columns are kept."""
    two, _, _ = two_site_panel("s50_a25_g1", 1000, seed=3, family="soft_optimal")
    choice = choose_cells(two, random_state=0)
    assert choice.columns == ("state", "site") and choice.dropped == ()
    assert all(t["kept"] for t in choice.tests.values())


def test_backward_elimination_drops_every_irrelevant_column(garnet):
    """Three columns, two of them noise (a site per episode, a code per row): both are
    dropped, and the same seed gives the same choice."""
    _, ds, _ = garnet
    rng = np.random.default_rng(1)
    two = with_site(ds, rng.integers(0, 5, ds.n_episodes))
    three = replace(two, categorical=np.c_[two.categorical, rng.integers(0, 4, two.n_steps)],
                    categorical_names=(*two.categorical_names, "code"),
                    categorical_levels=(*two.categorical_levels, tuple(range(4))), _cache={})
    a = choose_cells(three, random_state=3)
    assert a.columns == ("state",) and set(a.dropped) == {"site", "code"}
    assert a == choose_cells(three, random_state=3)


def test_one_column_or_no_outcome_is_left_as_it_is(garnet):
    """One column; or episodes of one censored row each (no next state, no end: nothing to
    test) keep every column."""
    _, ds, _ = garnet
    assert choose_cells(ds) == CellChoice(columns=("state",), dropped=(), tests={}, n_folds=0)
    starts = ds.episode_offsets[:-1]
    first = ds.subset(np.arange(ds.n_episodes))  # a copy, then one censored row per episode
    one_row = replace(first, states=first.states[starts], actions=first.actions[starts],
                      reward_components=first.reward_components[starts],
                      terminals=np.zeros(starts.size, bool),
                      episode_offsets=np.arange(starts.size + 1), times=first.times[starts],
                      categorical=first.categorical[starts],
                      behavior_prob=first.behavior_prob[starts], _cache={})
    two = with_site(one_row, np.random.default_rng(0).integers(0, 3, one_row.n_episodes))
    assert choose_cells(two) == CellChoice(columns=("state", "site"), dropped=(), tests={},
                                           n_folds=0)


@pytest.mark.parametrize("spans", [(4, 3, 4), (1, 7), (2**31, 2**31, 2**31)])
def test_row_codes_are_the_combinations_in_lexicographic_order(spans):
    """_codes gives np.unique(axis=0)'s inverse: negative codes, a constant column, and keys too
    large for one int64 (the fallback) included."""
    from equicare.data._cells import _codes

    rng = np.random.default_rng(5)
    cat = np.stack([rng.integers(-1, s - 1, 5000) for s in spans], axis=1).astype(np.int64)
    for cols in ([0], list(range(cat.shape[1])), list(range(cat.shape[1]))[::-1]):
        _, want = np.unique(cat[:, cols], axis=0, return_inverse=True)
        assert np.array_equal(_codes(cat, cols), np.asarray(want).ravel())


def test_row_codes_do_not_sort_the_rows_as_records():
    """choose_cells codes the rows' combinations for every test; np.unique(axis=0) sorted them as
    structured records: 23 of the 83 s of `equicare run`'s data stage on a 2.4M-row daily panel
    (three categorical columns), 42x slower than sorting one mixed-radix key. Relative to that
    sort on the same rows (best of 3), so the bound holds on a loaded host."""
    import time

    from equicare.data._cells import _codes

    rng = np.random.default_rng(0)
    n = 400_000
    cat = np.stack([rng.integers(0, k, n) for k in (4, 3, 4)], axis=1).astype(np.int64)

    def best(f):
        out = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
        return min(out)

    records = best(lambda: np.unique(cat, axis=0, return_inverse=True))
    ours = best(lambda: _codes(cat, [0, 1, 2]))
    assert ours < records / 4, (ours, records)
