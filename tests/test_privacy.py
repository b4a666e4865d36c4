"""Primary and complementary small-cell suppression (equicare/privacy.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from equicare.privacy import suppress_counts, suppressed_cells, suppressed_labels


def _episodes(table: dict[tuple[str, ...], int]) -> list[np.ndarray]:
    keys = list(table)
    k = len(keys[0])
    return [np.repeat([key[j] for key in keys], list(table.values())) for j in range(k)]


def _lines(cells: pd.DataFrame) -> list[np.ndarray]:
    """The whole table and the lines whose totals the smaller tables publish.

    Each margin's published cells (its own suppression, ``suppressed_labels``), and the union
    of its suppressed cells (the total minus the published ones). A margin cell that is itself
    suppressed publishes no total: three members of sex X make no line ``X``.
    """
    k = cells.shape[1] - 1
    n = cells["n"].to_numpy()
    out = [np.arange(len(cells))]
    for size in range(1, k):
        for sub in itertools.combinations(range(k), size):
            comps = [np.repeat(cells[j].to_numpy(), n) for j in sub]
            hidden = suppressed_labels(comps)
            keys = cells[list(sub)].astype(str).agg(" x ".join, axis=1).to_numpy()
            for key in dict.fromkeys(keys):
                if key not in hidden:
                    out.append(np.flatnonzero(keys == key))
            union = np.flatnonzero(np.isin(keys, list(hidden)))
            if union.size:
                out.append(union)
    return out


def _no_line_reveals_a_small_union(cells: pd.DataFrame, sup: np.ndarray, min_cell: int) -> None:
    n = cells["n"].to_numpy()
    assert (n[~sup] >= min_cell).all()
    for idx in _lines(cells):
        held = int(n[idx][sup[idx]].sum())
        # a line whose cells are all suppressed totals its margin, itself suppressed if small
        assert held == 0 or held >= min_cell or sup[idx].all(), (cells.iloc[idx], sup[idx])


def test_no_suppression_when_every_cell_is_large():
    cells, sup = suppressed_cells(_episodes({("a",): 20, ("b",): 11, ("c",): 30}))
    assert not sup.any() and set(cells["n"]) == {20, 11, 30}


def test_one_small_level_takes_the_smallest_other_with_it():
    comps = _episodes({("a",): 40, ("b",): 15, ("c",): 30, ("d",): 3})
    assert suppressed_labels(comps) == {"b", "d"}
    # two small levels that together reach 11 need nothing more
    assert suppressed_labels(_episodes({("a",): 40, ("b",): 6, ("c",): 5})) == {"b", "c"}
    # with one other level, both go
    assert suppressed_labels(_episodes({("a",): 40, ("b",): 3})) == {"a", "b"}
    # several complements when the smallest other is not enough
    big = _episodes({("a",): 100, ("b",): 2, ("c",): 3, ("d",): 4})
    assert suppressed_labels(big) == {"a", "b", "c", "d"}
    assert suppress_counts({"a": 40, "b": 15, "c": 30, "d": 3}) == {
        "a": 40, "b": None, "c": 30, "d": None}


def test_the_auditors_differencing_attack_no_longer_recovers_a_member():
    """A 299-episode held-out set: sex female 175, male 120, nonbinary 4, with race black 66
    published as a margin and black x female 40, black x male 25 in the intersection table.
    Before, ``black - black x female - black x male`` gave the one black nonbinary member,
    and ``total - female - male`` the four nonbinary members."""
    table = {("black", "female"): 40, ("black", "male"): 25, ("black", "nonbinary"): 1,
             ("white", "female"): 90, ("white", "male"): 60, ("white", "nonbinary"): 2,
             ("hispanic", "female"): 45, ("hispanic", "male"): 35, ("hispanic", "nonbinary"): 1}
    comps = _episodes(table)
    assert suppressed_labels([comps[1]]) == {"male", "nonbinary"}  # the sex margins
    cells, sup = suppressed_cells(comps)
    _no_line_reveals_a_small_union(cells, sup, 11)
    hidden = suppressed_labels(comps)
    assert {"black x nonbinary", "black x male"} <= hidden
    # the published margins and cells now leave only unions of at least 11 episodes
    for race in ("black", "white", "hispanic"):
        held = sum(v for (r, s), v in table.items() if r == race and f"{r} x {s}" in hidden)
        assert held == 0 or held >= 11


@pytest.mark.parametrize("seed", range(30))
def test_random_tables_never_reveal_a_small_union_on_any_line(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    levels = [[f"l{j}{i}" for i in range(int(rng.integers(2, 5)))] for j in range(k)]
    table = {}
    for key in itertools.product(*levels):
        n = int(rng.choice([0, 1, 2, 5, 9, 12, 30, 80], p=[.1, .1, .1, .15, .1, .15, .15, .15]))
        if n:
            table[key] = n
    if not table:
        return
    cells, sup = suppressed_cells(_episodes(table), min_cell=11)
    _no_line_reveals_a_small_union(cells, sup, 11)
    # primary cells are always among the suppressed
    assert sup[cells["n"].to_numpy() < 11].all()


def test_small_cells_message_lists_ten_and_counts_the_rest():
    from equicare.privacy import small_cells_message

    msg = small_cells_message([f"g{i}" for i in range(12)])
    assert msg.startswith("12 group cells were suppressed: g0, g1, g2, g3, g4, g5, g6, g7, g8, "
                          "g9 and 2 more. A cell with fewer than 11 episodes is never published")


def test_coarse_bounds_are_no_rows_value_and_cover_the_bulk():
    from equicare.privacy import coarse_bounds, round_significant

    rng = np.random.default_rng(0)
    x = np.c_[rng.lognormal(4, 0.3, 5000), rng.normal(0, 1, 5000), np.full(5000, 3.0)]
    lo, hi = coarse_bounds(x)
    assert not np.isin(np.r_[lo, hi], x[:, :2]).any()
    inside = (x >= lo) & (x <= hi)
    assert inside[:, :2].mean() > 0.999 and inside[:, 2].all()
    assert lo[0] >= 0 and lo[1] < 0                          # never-negative column stays >= 0
    np.testing.assert_array_equal(round_significant(lo, 2), lo)  # on a coarse grid
    # a column's extreme value moves the bound only through the grid, never onto itself
    y = x.copy()
    y[0, 0] = 1e6
    assert coarse_bounds(y)[1][0] == hi[0]
    np.testing.assert_array_equal(round_significant([12.8625, -0.000123456, 0.0], 3),
                                  [12.9, -0.000123, 0.0])


def test_pooled_level_shares_pool_small_levels_and_complete_the_pool() -> None:
    import numpy as np

    from equicare.privacy import pooled_level_shares

    # levels: 0 one episode (20 rows), 1 250 episodes, 2 50 episodes, 3 two episodes (40 rows)
    codes = np.r_[np.zeros(20), np.ones(3681), np.full(855, 2), np.full(40, 3)].astype(int)
    eps = np.r_[np.zeros(20), np.arange(3681) % 250 + 1, np.arange(855) % 50 + 300,
                np.repeat([400, 401], 20)].astype(int)
    f = pooled_level_shares(codes, eps, 4)
    # 0 and 3 hold 3 episodes together: level 2 (the smallest other) joins their pool
    np.testing.assert_allclose(f, [(20 + 855 + 40) / 3 / 4596, 3681 / 4596,
                                   (20 + 855 + 40) / 3 / 4596, (20 + 855 + 40) / 3 / 4596])
    assert f.sum() == pytest.approx(1.0)
    # two small levels holding 12 episodes together: pooled alone
    eps2 = eps.copy()
    eps2[:20] = np.arange(20) % 6 + 500
    eps2[-40:] = np.arange(40) % 6 + 600
    f2 = pooled_level_shares(codes, eps2, 4)
    assert f2[0] == f2[3] == pytest.approx(30 / 4596) and f2[2] == pytest.approx(855 / 4596)
    # unknown codes ignored; no level: uniform
    assert pooled_level_shares(np.full(5, -1), np.arange(5), 4).tolist() == [0.25] * 4


def test_low_ess_cells_primary_complementary_and_zero_weight() -> None:
    from equicare.privacy import MSG_LOW_ESS, MSG_LOW_ESS_COMPLEMENT, low_ess_cells, sums_ess

    def traj(w):  # one cell's trajectory sums: sum W, sum W^2, episodes
        w = np.asarray(w, dtype=float)
        return [w.sum()], [(w * w).sum()], [w.size]

    cells = {"a": traj([1000.0] + [1.0] * 19),  # 20 episodes, ESS ~1.04
             "b": traj([1.0] * 15), "c": traj([1.0] * 40), "d": traj([0.0] * 12)}
    s1, s2, n = (np.array([c[i] for c in cells.values()]) for i in range(3))
    assert sums_ess(s1[0], s2[0], n[0]) == pytest.approx(1019.0**2 / (1e6 + 19))
    primary, comp = MSG_LOW_ESS.format(min_cell=11), MSG_LOW_ESS_COMPLEMENT.format(min_cell=11)
    got = low_ess_cells(list(cells), s1, s2, n)
    # a: primary; d (every weight 0, ESS 0) too, but adds nothing to a union; a with b still
    # has ESS ~1, so the complement takes the smallest-ESS cells until the union reaches 11
    assert got["a"] == primary and got["d"] == primary
    assert got == {"a": primary, "d": primary, "b": comp, "c": comp}
    # a cell with enough weight of its own and a zero-weight one: nothing to complete
    assert low_ess_cells(["c", "d"], s1[[2, 3]], s2[[2, 3]], n[[2, 3]]) == {"d": primary}
    # per-step sums (per-decision ESS): steps without an episode are left out
    assert sums_ess([4.0, 2.0, 0.0], [4.0, 2.0, 0.0], [4, 2, 0]) == pytest.approx(4.0)
    # intersections: every row and column is a line of its own
    labs = ["x x f", "x x m", "y x f", "y x m"]
    w = [traj([1.0] * 30), traj([500.0] + [1.0] * 29), traj([1.0] * 30), traj([1.0] * 30)]
    s1, s2, n = (np.array([c[i] for c in w]) for i in range(3))
    got = low_ess_cells(labs, s1, s2, n)
    assert got["x x m"] == primary and set(got) == {"x x m", "x x f", "y x m", "y x f"}


def _split_panel(cells: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Episode labels and held-out flags from ``{level: (held_out, training)}``."""
    labels = np.concatenate([np.repeat(lv, a + b) for lv, (a, b) in cells.items()])
    part = np.concatenate([np.r_[np.ones(a, bool), np.zeros(b, bool)]
                           for a, b in cells.values()])
    return labels.astype(str), part


def test_split_withheld_hides_a_held_out_cell_whose_training_cell_is_small():
    """A level of 18 with 12 held out: the whole panel's 18 minus the held-out 12 gave its 6
    training episodes. It is withheld with the smallest other held-out cell, since alone its
    12 is the held-out total minus the published levels."""
    from equicare.privacy import split_withheld, suppressed_levels

    cells = {"rare": (12, 6), "a": (20, 20), "b": (15, 15), "c": (30, 31)}
    labels, part = _split_panel(cells)
    assert split_withheld(labels, part) == {"rare", "b"}
    # the part's own table keeps exactly these (nothing more to complete)
    assert suppressed_levels(labels[part], withheld={"rare", "b"}) == {"rare", "b"}
    # the 2-D table group x {held-out, training} under suppressed_cells agrees (line-wise
    # completion alone hid 'rare' only, 12 >= 11 on its column: the held-out total minus the
    # other levels gave 12 back, and 18 - 12 the 6; see the next test)
    table, sup = suppressed_cells([labels, np.where(part, "held", "train")])
    assert set(table.loc[sup & (table[1] == "held"), 0]) == {"rare", "b"}
    # nothing to withhold when every cell is 0 or at least 11; a level absent from the
    # held-out half has no cell to withhold
    assert split_withheld(*_split_panel({"a": (11, 0), "b": (20, 11), "c": (0, 4)})) == set()
    # a small held-out cell is withheld too, with complements until both sums reach 11
    assert split_withheld(*_split_panel({"a": (5, 3), "b": (11, 2), "c": (40, 40),
                                         "d": (13, 13)})) == {"a", "b", "d"}


@pytest.mark.parametrize("seed", range(40))
def test_split_withheld_leaves_no_small_training_cell_derivable(seed):
    """Exact check on random tables: given every level's whole count, the published held-out
    cells and both halves' totals, each level's training cell lies in an interval; none that
    is determined (one value) is 1 to 10, and the withheld levels' sums are 0 or >= 11."""
    from equicare.privacy import split_withheld, suppressed_levels

    rng = np.random.default_rng(seed)
    sizes = rng.choice([0, 1, 3, 6, 9, 11, 12, 15, 25, 60], size=(int(rng.integers(2, 7)), 2))
    cells = {f"g{i}": (int(a), int(b)) for i, (a, b) in enumerate(sizes) if a + b}
    labels, part = _split_panel(cells)
    if len(cells) < 2 or part.sum() < 11 or (~part).sum() < 11:
        return
    hide = split_withheld(labels, part)
    assert all(cells[g][0] > 0 for g in hide)
    # the held-out table's own suppression adds nothing to a consistent withheld set
    shown = {g for g, (a, _) in cells.items() if a > 0} - suppressed_levels(labels[part],
                                                                            withheld=hide)
    t_sum = sum(cells[g][0] for g in cells if g not in shown)
    r_sum = sum(cells[g][1] for g in cells if g not in shown)
    assert not 0 < t_sum < 11 and not 0 < r_sum < 11
    for g, (a, b) in cells.items():
        if g in shown:
            assert not 0 < b < 11 and not 0 < a < 11, (g, cells)
        elif a > 0:  # its held-out cell t: sum over the hidden ones is t_sum, 0 <= t <= n
            others = sum(sum(cells[h]) for h in cells if h not in shown and h != g)
            lo, hi = max(0, t_sum - others, a + b - r_sum), min(a + b, t_sum)
            assert lo <= a <= hi
            assert lo < hi or not (0 < b < 11 or 0 < a < 11), (g, cells, hide)


def _cell_bounds(table: dict[tuple[str, str], int], hidden: set[tuple[str, str]]
                 ) -> dict[tuple[str, str], tuple[float, float]]:
    """Exact range of each hidden cell of a two-way table (linear programme, cells >= 0)
    given the published cells, the grand total and every row and column total that the
    table of its attribute publishes."""
    from scipy.optimize import linprog

    keys = sorted(hidden)
    margins = []
    for j in (0, 1):  # a row's or column's total is published unless its own table hides it
        sizes: dict[str, int] = {}
        for key, v in table.items():
            sizes[key[j]] = sizes.get(key[j], 0) + v
        shown = [lv for lv, v in suppress_counts(sizes).items() if v is not None]
        margins += [[k for k in table if k[j] == lv] for lv in shown]
    a_eq, b_eq = [], []
    for line in [list(table)] + margins:
        a_eq.append([1.0 if k in line else 0.0 for k in keys])
        b_eq.append(sum(table.get(k, 0) for k in line if k in hidden))
    out = {}
    for i, k in enumerate(keys):
        c = np.zeros(len(keys))
        c[i] = 1.0
        lo = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).fun
        hi = -linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).fun
        out[k] = (lo, hi)
    return out


def test_a_two_way_table_does_not_give_a_small_cell_back_across_lines():
    """race x sex: a x f = 3. Line-wise completion hid a x m (row a) and b x f (column f)
    and published b x m = 40: then row b (70) - 40 gave b x f = 30, and column f (33) - 30
    gave a x f = 3. A 2 x 2 table with a small cell and published margins is hidden whole."""
    from equicare.privacy import determined_cells

    table = {("a", "f"): 3, ("a", "m"): 20, ("b", "f"): 30, ("b", "m"): 40}
    cells, sup = suppressed_cells(_episodes(table))
    assert sup.all()
    hidden = {tuple(r) for r in cells.loc[sup, [0, 1]].itertuples(index=False)}
    lo, hi = _cell_bounds(table, hidden)[("a", "f")]
    assert hi - lo > 10
    # what line-wise completion left: a x f determined (its range is one value)
    line_wise = {("a", "f"), ("a", "m"), ("b", "f")}
    assert _cell_bounds(table, line_wise)[("a", "f")] == pytest.approx((3, 3))
    lines = [np.arange(4), np.array([0, 1]), np.array([2, 3]), np.array([0, 2]),
             np.array([1, 3])]  # cells in the order a f, a m, b f, b m
    assert determined_cells(lines, np.array([True, True, True, False])).tolist() == [
        True, True, True, False]


@pytest.mark.parametrize("seed", range(30))
def test_random_two_way_tables_leave_no_small_cell_determined(seed):
    """Exact ranges (linear programme) of the hidden small cells of random two-way tables
    given every published cell and total: none is a single value."""
    rng = np.random.default_rng(100 + seed)
    rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    table = {}
    for r in range(rows):
        for c in range(cols):
            n = int(rng.choice([0, 2, 5, 9, 12, 20, 40, 90],
                               p=[.1, .1, .1, .1, .15, .15, .15, .15]))
            if n:
                table[(f"r{r}", f"c{c}")] = n
    if len({r for r, _ in table}) < 2 or len({c for _, c in table}) < 2:
        return
    cells, sup = suppressed_cells(_episodes(table))
    hidden = {tuple(r) for r in cells.loc[sup, [0, 1]].itertuples(index=False)}
    if len(hidden) == len(table):
        return  # everything hidden: only the published margins remain
    for k, (lo, hi) in _cell_bounds(table, hidden).items():
        if table[k] < 11:
            assert hi - lo > 1e-6, (k, table, hidden)


def test_no_suppressed_cell_suppresses_no_label_not_one_named_0():
    """With no cell to suppress, the labels were the empty frame's column names, {0}: a group
    coded "0" (three Garnet groups of 319 to 343 episodes, labels "0", "1", "2") vanished from
    the audit with a warning that began " and are suppressed"."""
    labels = np.repeat(np.array(["0", "1", "2"]), [338, 343, 319])
    assert suppressed_labels([labels]) == set()
    assert suppressed_labels([labels, np.tile(np.array(["0", "1"]), 500)]) == set()
    with_small = np.concatenate([labels, np.array(["3"] * 4)])
    assert suppressed_labels([with_small]) == {"3", "2"}  # primary, then the smallest other


def test_quantile_edges_keep_point_masses_whole_and_no_rows_value() -> None:
    """One rule for SPIBB's numeric bins and auto's binned numeric states: every edge strictly
    inside a gap between observed values, on the side of a point mass nearer its quantile."""
    from equicare.privacy import quantile_edges

    def bins(x: np.ndarray, e: np.ndarray) -> list[int]:
        return np.bincount(np.searchsorted(e, x, side="right")).tolist()

    rare_one = np.r_[np.zeros(94), np.ones(6)]  # every inner decile is 0, the minimum
    assert quantile_edges(rare_one, 10).tolist() == [0.5]
    rare_zero = np.r_[np.zeros(6), np.ones(94)]  # every inner decile is 1, the maximum (the
    assert quantile_edges(rare_zero, 10).tolist() == [0.5]  # earlier SPIBB rule dropped them)
    e = quantile_edges(np.r_[np.zeros(10), np.ones(90)], 10)  # the 10% quantile interpolated
    assert e.size == 1 and 0.0 < e[0] < 1.0
    # tertiles 1/3 and 2/3 fall on the masses at 1 (rows < 1: 30%, <= 1: 60%) and at 2 (60%,
    # 85%): both nearer the share below, so 1 and 2 open their bins: 0 / 1 / 2+ (30/30/40)
    counts = np.repeat([0.0, 1.0, 2.0, 3.0], [30, 30, 25, 15])
    assert quantile_edges(counts, 3).tolist() == [0.5, 1.5]
    assert bins(counts, quantile_edges(counts, 3)) == [30, 30, 40]
    # quartiles interpolated between 0|1, 1|2 and 2|5: 0.75, 1.5, 2.75
    assert quantile_edges(np.repeat([0.0, 1.0, 2.0, 5.0], 25), 4).tolist() == [0.75, 1.5, 2.75]
    assert quantile_edges(np.full(50, 3.0), 10).size == 0
    # 4 significant digits, more only when needed to stay between the two values
    assert quantile_edges(np.repeat([1000.0, 1000.1], 50), 4).tolist() == [1000.05]
    x = 1.0 + np.random.default_rng(0).random(1000) * 1e-7
    e = quantile_edges(x, 3)
    assert e.size == 2 and not np.isin(e, x).any()
    np.testing.assert_allclose(e, np.quantile(x, [1 / 3, 2 / 3]), rtol=1e-9)
    y = np.random.default_rng(1).normal(size=2001) * 37.0 + 100.0
    e = quantile_edges(y, 10)
    assert e.size == 9 and not np.isin(e, y).any()
    assert np.all(np.abs(np.array(bins(y, e)) - 200.1) <= 2)


def test_quantile_edges_of_a_float32_column_are_no_rows_value_as_float32() -> None:
    """A panel loads numeric states as float32: 0.8839 is 0.88389998... in float64, so the
    float64 edge 0.8839 passed as between it and 0.8840 and published the row value 0.8839
    (the care panel's risk terciles: risk@0.8839/1.14115)."""
    from equicare.privacy import quantile_edges

    x = np.repeat(np.float32([0.8838, 0.8839, 0.8840]), [30, 40, 30])
    e = quantile_edges(x, 3)  # 0.8839's mass holds both terciles' levels: one edge each side
    assert e.tolist() == [0.88385, 0.88395]
    for seed in range(5):  # risk scores recorded to 4 decimals
        x = np.round(np.random.default_rng(seed).normal(1.0, 0.3, 3000), 4).astype(np.float32)
        e = quantile_edges(x, 3)
        assert e.size == 2 and not np.isin(e.astype(np.float32), x).any()


def test_a_level_its_own_table_suppresses_is_no_line_of_the_intersection():
    """race x sex with three members of sex X, all white: X is suppressed in every table of
    sex, so no column total X is published. Read as published, it pinned white x X = 3, and
    breaking that chain suppressed every cell: an 8,000-member audit of race x sex refused to
    run ("no group ... can be published"). Now white x X goes with white x M (its row) only,
    and its exact range given everything published is wide."""
    table = {("white", "F"): 60, ("white", "M"): 50, ("white", "X"): 3,
             ("black", "F"): 40, ("black", "M"): 30, ("asian", "F"): 25, ("asian", "M"): 20}
    comps = _episodes(table)
    assert suppressed_labels([comps[1]]) == {"M", "X"}  # the sex table hides X and M
    cells, sup = suppressed_cells(comps)
    hidden = {tuple(r) for r in cells.loc[sup, [0, 1]].itertuples(index=False)}
    assert hidden == {("white", "X"), ("white", "M")}
    _no_line_reveals_a_small_union(cells, sup, 11)
    lo, hi = _cell_bounds(table, hidden)[("white", "X")]
    assert hi - lo > 10
    # the same in three attributes: a margin cell of two of them that its table hides
    age = np.where(np.arange(comps[0].size) % 2 == 0, "young", "old")
    cells3, sup3 = suppressed_cells([comps[0], comps[1], age])
    assert not sup3.all()
    _no_line_reveals_a_small_union(cells3, sup3, 11)


def test_gap_edges_move_given_cuts_into_gaps_and_keep_one_per_gap() -> None:
    """A tree's split points become edges by quantile_edges' rule: strictly between two
    observed values (float32 too), rounded to 4 significant digits there, one per gap, none
    outside the column's range."""
    from equicare.privacy import gap_edges

    x = np.array([10.0, 20.0, 59.9, 60.0, 61.0, 61.00004])
    got = gap_edges(x, [59.95, 20.0, 59.97, 5.0, 70.0, 61.00001])
    assert got.tolist() == [39.95, 59.95, 61.00001]  # 20 (a value) takes the gap above it
    assert not np.isin(got, x).any()
    x32 = np.array([0.498, 0.5], dtype=np.float32)
    e = gap_edges(x32, [float(x32[0]) / 2 + float(x32[1]) / 2])
    assert e.tolist() == [0.499] and (e.astype(np.float32) > x32[0]).all()
    assert gap_edges([1.0, 1.0], [1.0]).size == 0 and gap_edges(x, []).size == 0
