"""Bootstrap intervals of the fairness layer (fairness/_bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest


def test_intervals_contain_their_estimate_when_the_replicates_sit_above_it() -> None:
    # a max-minus-min gap over tied groups: every replicate gap exceeds the plug-in gap, so the
    # plain basic and percentile intervals both exclude the estimate (the README's "gap 0.25 with
    # CI [0.00, 0.17]"); the published interval is widened to reach it
    from equicare.fairness import bootstrap_ci

    reps = np.linspace(0.33, 0.60, 201)[:, None]
    est = np.array([0.25])
    for method in ("basic", "percentile"):
        plain = bootstrap_ci(reps, est, method=method, bounds=(0.0, 1.0),
                             contain_estimate=False)[:, 0]
        assert not plain[0] <= 0.25 <= plain[1]
        lo, hi = bootstrap_ci(reps, est, method=method, bounds=(0.0, 1.0))[:, 0]
        assert lo <= 0.25 <= hi
        assert (lo, hi) == pytest.approx((min(plain[0], 0.25), max(plain[1], 0.25)))
    # NaN where every replicate is NaN, whatever the estimate
    assert np.isnan(bootstrap_ci(np.full((5, 1), np.nan), np.array([0.1]))).all()


@pytest.mark.filterwarnings(  # its small care panel's need cells
    "ignore:Proportional parity is not published:equicare.exceptions.SmallCellWarning")
def test_audit_intervals_contain_every_estimate() -> None:
    from equicare.fairness import audit
    from equicare.sim.care import CareManagementSim

    # 26 weeks: at 12, 8 of the 19 asian members had a home visit, a rate not published
    ds = CareManagementSim().generate(n_members=300, n_weeks=26, random_state=3).dataset()
    res = audit(ds, action="modality=home_visit", group="race_ethnicity", n_boot=200,
                n_permutations=0, random_state=0)
    a, o = res["behavior"].allocation, res["behavior"].outcome
    assert a.rate_suppressed == ()
    pairs = [(a.difference(), a.difference_ci()), (a.ratio(), a.ratio_ci()),
             (o.overall, o.overall_ci), (o.gini(), o.gini_ci())]
    pairs += [(r, tuple(ci)) for r, ci in zip(a.rates, a.by_group_ci.to_numpy(), strict=True)]
    finite = [(est, lo, hi) for est, (lo, hi) in pairs if np.isfinite(est)]
    assert len(finite) >= 5
    for est, lo, hi in finite:
        assert lo - 1e-12 <= est <= hi + 1e-12, (est, lo, hi)


def test_bootstrap_weights_by_member_draw_people():
    from equicare.fairness import bootstrap_weights
    from equicare.ope import bootstrap_counts, cluster_counts

    members = np.array([3, 1, 3, 2, 1, 3])
    w = bootstrap_weights(6, 40, random_state=5, members=members)
    np.testing.assert_array_equal(w, cluster_counts(members, 40, random_state=5))
    np.testing.assert_array_equal(w[:, 0], w[:, 2])  # one person, one count
    np.testing.assert_array_equal(w[:, 1], w[:, 4])
    np.testing.assert_array_equal(bootstrap_weights(6, 40, random_state=5),
                                  bootstrap_counts(6, 40, 5))  # without members: as before
    with pytest.raises(ValueError, match=r"an array of shape \(6,\)"):
        bootstrap_weights(6, 4, members=members[:5])
