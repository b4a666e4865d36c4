from __future__ import annotations

import numpy as np
import pytest

from equicare.exceptions import SmallCellWarning
from equicare.fairness import audit, plot_allocation, plot_parity_gaps

from .conftest import random_panel


@pytest.fixture(scope="module")
def result():
    # r3 has < 11 episodes; r2, the smallest other group, is suppressed with it (complementary)
    ds = random_panel(300, seed=31, shares=(0.4, 0.37, 0.2, 0.03), rate_by_group=(0.1,) * 4)
    probs = np.full((ds.n_steps, ds.n_actions), 1.0 / ds.n_actions)
    with pytest.warns(SmallCellWarning):
        return audit(ds, {"uniform": probs}, group="race", n_boot=50, n_permutations=20,
                     estimator=None, random_state=0)


def _bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches]


def test_allocation_figure_applies_suppression(result) -> None:
    fig = plot_allocation(result)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["r0", "r1"]  # the suppressed groups r2 and r3 are never drawn
    expected = [100 * r for name in ("behavior", "uniform")
                for r in result[name].allocation.rates]
    np.testing.assert_allclose(_bar_heights(ax), expected)
    assert ax.get_legend() is not None
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_parity_gap_figure(result) -> None:
    fig = plot_parity_gaps(result)
    a0, a1 = fig.axes[:2]
    widths = [p.get_width() for p in a0.patches]
    np.testing.assert_allclose(widths, [100 * result[n].allocation.difference()
                                        for n in ("behavior", "uniform")])
    assert [t.get_text() for t in a1.get_xticklabels()] == ["r0", "r1"]
    texts = [t.get_text() for t in a0.texts]
    assert any(t.startswith("p=") for t in texts)


def test_frames_with_a_cell_below_min_cell_are_not_drawn(result) -> None:
    from dataclasses import replace

    f = result["behavior"].allocation
    small = replace(f, counts=np.array([f.counts[0], 5]))  # as if a frame held a small cell
    fig = plot_allocation(small)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["r0"]
