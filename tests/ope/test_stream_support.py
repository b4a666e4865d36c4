"""Support diagnostics of streamed evaluate: the in-memory report, from sums over chunks."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest

from equicare.data import Chunk
from equicare.exceptions import SupportWarning
from equicare.ope import evaluate, evaluate_stream
from equicare.ope._stream_support import HIST_WIDTH

from ._garnet import TablePolicy, make

EXACT = ("share_pct", "practice_share_pct", "threshold", "uses_categorical", "n_rows",
         "episodes_over_warn_pct", "warning", "biased_estimators", "extrapolating_estimators",
         "message")


def _chunks(ds, n=3):
    cuts = np.linspace(0, ds.n_episodes, n + 1).astype(int)
    return [Chunk(index=i, dataset=ds.subset(np.arange(a, b)), first_row=0)
            for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]


def _both(ds, table, keys=("is", "wis", "fqe"), **kw):
    """In-memory and streamed (3 chunks) results of the same policy, and their warnings."""
    with warnings.catch_warnings(record=True) as mem_w:
        warnings.simplefilter("always")
        mem = evaluate(ds, table[ds.categorical[:, 0]], estimators=list(keys), bootstrap=20,
                       random_state=3, q_model="tabular_stationary")
    with warnings.catch_warnings(record=True) as str_w:
        warnings.simplefilter("always")
        st = evaluate_stream(_chunks(ds), TablePolicy(table), estimators=keys, n_boot=20,
                             random_state=3, q_model="tabular_stationary", **kw)
    sup = [str(w.message) for w in mem_w if w.category is SupportWarning]
    sst = [str(w.message) for w in str_w if w.category is SupportWarning]
    return mem.to_dict()["support"], st.to_dict()["support"], sup, sst


def _agree(a, b, exact_quantiles=False):
    for k in EXACT:
        if isinstance(a[k], float):
            assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12), k
        else:
            assert b[k] == a[k], k
    assert b["per_episode_pct"]["mean"] == pytest.approx(a["per_episode_pct"]["mean"],
                                                         rel=1e-12)  # exact sums
    for k in ("median", "p90", "p_top11"):  # from the histogram: within half a bin
        tol = 1e-12 if exact_quantiles else HIST_WIDTH / 2 + 1e-12
        assert abs(b["per_episode_pct"][k] - a["per_episode_pct"][k]) <= tol, k


def test_streamed_support_is_the_in_memory_report_and_warning():
    """Logged propensities, 50 categorical states: the empirical cell support, exactly."""
    _, ds, pols = make("s50_a5_g1", 400, seed=3)
    a, b, sup, sst = _both(ds, pols["unsupported"])
    assert a["share_pct"] > 5 and a["warning"]
    _agree(a, b)
    assert sup and sst == sup  # the same SupportWarning text
    assert b["extrapolating_estimators"] == ["fqe"] and b["biased_estimators"] == ["is", "wis"]


def test_supported_policy_draws_no_support_warning():
    _, ds, pols = make("s50_a5_g1", 400, seed=3)
    a, b, sup, sst = _both(ds, pols["soft_optimal"])
    assert not sup and not sst and not b["warning"]
    _agree(a, b)


def test_estimated_propensities_use_the_streamed_behaviour_model():
    """No logged propensities: the streamed behaviour model's probabilities (the whole panel
    sampled: the in-memory model), out-of-fold as in memory, and the cell counts."""
    _, ds, pols = make("s50_a5_g1", 300, seed=3)
    ds = dataclasses.replace(ds, behavior_prob=None, _cache={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the estimated-propensity warnings of both
        a, b, sup, sst = _both(ds, pols["unsupported"], keys=("is", "wis"))
    _agree(a, b)
    assert a["warning"] and sst == sup


def test_fast_numeric_model_is_fitted_on_sampled_episodes():
    """Numeric states only, twice the fast model's 20,000 rows: the model is fitted on other
    episodes than in memory (the sample-based part), the share within a stated tolerance.
    Action 4 is logged at high severity only, so the model gives it probabilities below the
    1e-3 threshold at low severity, and the target puts 30% of its mass on it."""
    _, ds, pols = make("s50_a5_g1", 3000, seed=3)
    actions = ds.actions.copy()
    sev = ds.states[:, 0]
    actions[(actions == 4) & (sev < np.quantile(sev, 0.7))] = 3
    numeric = dataclasses.replace(ds, actions=actions, categorical=None, categorical_names=(),
                                  categorical_levels=(),
                                  extras={"row": np.arange(ds.n_steps)}, _cache={})
    assert numeric.n_steps > 40_000
    target = np.tile([0.2, 0.2, 0.2, 0.1, 0.3], (ds.n_steps, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = evaluate(numeric, target, estimators="is", bootstrap=20, random_state=3)
        st = evaluate_stream(_chunks(numeric), _RowPolicy(target), estimators=("is",),
                             n_boot=20, random_state=3)
    a, b = mem.to_dict()["support"], st.to_dict()["support"]
    assert not a["uses_categorical"] and not b["uses_categorical"]
    assert "fast numeric behaviour model" in st.settings["support_check"]
    assert 1 < a["share_pct"] < 30
    # the in-memory check's own spread over seeds 0-4 is 1.13 to 1.50 points
    assert b["share_pct"] == pytest.approx(a["share_pct"], abs=0.75)


@dataclasses.dataclass(frozen=True)
class _RowPolicy:
    """Target probabilities by storage row (the chunks keep the ``row`` extra)."""

    probs: np.ndarray

    def action_probs(self, ds):
        return self.probs[ds.extras["row"]]


def test_support_rides_on_the_passes_without_extra_reads():
    """IS with percentile intervals makes one pass; the support check adds one (the mass
    needs the counts), and its sums never grow with the chunks."""
    from equicare.ope import _stream

    _, ds, pols = make("s50_a5_g1", 200, seed=3)
    calls = []
    orig = _stream.ChunkSource._map_chunks

    def counting(self, fn, progress):
        calls.append(fn)
        return orig(self, fn, progress)

    pol = TablePolicy(pols["unsupported"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupportWarning)
        mp = pytest.MonkeyPatch()
        mp.setattr(_stream.ChunkSource, "_map_chunks", counting)
        try:
            res = evaluate_stream(_chunks(ds, 4), pol, estimators=("is",), n_boot=10,
                                  ci_method="percentile", random_state=1)
        finally:
            mp.undo()
    assert len(calls) == 2 and res.support is not None
    from equicare.ope._stream_support import SupportSums

    one = SupportSums.of_rows(np.zeros(10), np.array([0, 4, 10]))
    assert one.hist.shape == (one + one).hist.shape


def test_support_message_matches_the_in_memory_template():
    from equicare.ope._support import SUPPORT_MESSAGE

    _, ds, pols = make("s50_a5_g1", 200, seed=3)
    _, b, _, sst = _both(ds, pols["unsupported"], keys=("is", "wis", "fqe", "dr"))
    head = SUPPORT_MESSAGE.split("{biased}")[0].format(
        pct=b["share_pct"], thr=1e-3, cat=", or never logged in that categorical state")
    assert sst[0].startswith(head) and re.search(r"fqe, dr rely on", sst[0])


def test_support_threshold_and_diagnose_support_as_in_memory():
    """The two in-memory options: a higher threshold flags more of the fast model's actions
    (the panel is under the fast model's 20,000 rows, so both fit it on the whole panel and
    agree exactly), and ``diagnose_support=False`` skips the check with logged propensities."""
    _, ds, pols = make("s50_a5_g1", 600, seed=3)
    numeric = dataclasses.replace(ds, categorical=None, categorical_names=(),
                                  categorical_levels=(),
                                  extras={"row": np.arange(ds.n_steps)}, _cache={})
    assert numeric.n_steps < 20_000
    target = np.tile([0.2, 0.2, 0.2, 0.1, 0.3], (ds.n_steps, 1))
    shares = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for thr in (1e-3, 0.15):
            mem = evaluate(numeric, target, estimators="is", bootstrap=20, random_state=3,
                           support_threshold=thr)
            st = evaluate_stream(_chunks(numeric), _RowPolicy(target), estimators=("is",),
                                 n_boot=20, random_state=3, support_threshold=thr)
            a, b = mem.to_dict()["support"], st.to_dict()["support"]
            assert a["threshold"] == b["threshold"] == thr
            assert b["share_pct"] == pytest.approx(a["share_pct"], abs=1e-9)
            shares.append(b["share_pct"])
        off = evaluate_stream(_chunks(numeric), _RowPolicy(target), estimators=("is",),
                              n_boot=20, random_state=3, diagnose_support=False)
    assert shares[1] > shares[0] + 1
    assert off.support is None and off.to_dict()["support"] is None
    assert off.settings["support_check"] is None
    assert off.estimates["is"].value == st.estimates["is"].value
    for bad, msg in (({"support_threshold": 2.0}, "support_threshold"),
                     ({"diagnose_support": "no"}, "diagnose_support")):
        with pytest.raises(ValueError, match=msg):
            evaluate_stream(_chunks(numeric), _RowPolicy(target), estimators=("is",),
                            n_boot=20, **bad)
