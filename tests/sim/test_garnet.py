"""The Garnet test bed: exact values against Monte Carlo, shape of the panel, the writer."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError
from equicare.sim.garnet import (
    GARNET_PRESETS,
    GarnetConfig,
    GarnetMDP,
    garnet_panel,
    garnet_preset,
    garnet_state_index,
    garnet_target_policies,
)

SMALL = GarnetConfig(n_states=50, n_actions=5, n_successors=3)


def _z(mdp: GarnetMDP, pi: np.ndarray, n: int, seed: int) -> tuple[float, dict[str, float]]:
    pan = mdp.simulate(n, pi, random_state=seed)
    tv = mdp.value(pi)
    se = pan.returns.std(ddof=1) / np.sqrt(n)
    z_groups = {}
    for g, v in mdp.group_values(pi).items():
        r = pan.returns[pan.group == int(g[1:])]
        z_groups[g] = (r.mean() - v) / (r.std(ddof=1) / np.sqrt(r.size))
    return (pan.returns.mean() - tv) / se, z_groups


@pytest.mark.parametrize("gamma", [1.0, 0.99])
@pytest.mark.parametrize("family", ["behavior", "optimal", "tilted", "unsupported"])
def test_exact_value_matches_monte_carlo(gamma: float, family: str) -> None:
    # tolerance: 4 standard errors of the Monte-Carlo mean, overall and in every group
    mdp = GarnetMDP(replace(SMALL, gamma=gamma), random_state=3)
    pi = garnet_target_policies(mdp)[family]
    z, z_groups = _z(mdp, pi, 20_000, seed=11)
    assert abs(z) < 4, z
    assert all(abs(v) < 4 for v in z_groups.values()), z_groups


def test_untruncated_solve_is_the_long_horizon_limit() -> None:
    mdp = GarnetMDP(SMALL, random_state=0)
    pi = garnet_target_policies(mdp)["soft_optimal"]
    v_inf = mdp.state_values(pi, horizon=None)
    np.testing.assert_allclose(mdp.state_values(pi, horizon=5000), v_inf, atol=1e-9)
    assert mdp.value(pi) <= mdp.value(pi, horizon=None) + 1e-12
    # the optimal policy is optimal: no family beats it on the untruncated process
    fams = garnet_target_policies(mdp)
    v_opt = mdp.state_values(fams["optimal"], horizon=None)
    for name, p in fams.items():
        assert np.all(mdp.state_values(p, horizon=None) <= v_opt + 1e-9), name


def test_panel_shape_lengths_censoring_and_support() -> None:
    mdp, pan = garnet_panel(SMALL, 5000, seed=1)
    lengths = pan.lengths
    assert lengths.min() == 1 and lengths.max() > 100
    cens = pan.censored
    assert 0 < cens.mean() < 0.05
    assert np.all(lengths[cens] == SMALL.max_horizon)  # only the horizon censors
    # rows: contiguous per episode, t = 0..L-1, reward only on a terminal row
    assert np.all(pan.t == np.arange(pan.t.size) - np.repeat(np.cumsum(lengths) - lengths,
                                                             lengths))
    assert np.all(pan.terminal[pan.reward > 0])
    np.testing.assert_allclose(pan.propensity, mdp.behavior_policy[pan.state, pan.action])
    # clinicians: many near-deterministic states and many pairs never logged
    pb = mdp.behavior_policy
    assert (pb.max(axis=1) > 0.9).mean() > 0.2
    assert (pb == 0).mean() > 0.2
    n_sa = np.bincount(pan.state * 5 + pan.action, minlength=250)
    assert (n_sa == 0).mean() > 0.25
    # severity tracks the behaviour's probability of the bad outcome
    assert np.corrcoef(mdp.severity, mdp.p_bad_behavior)[0, 1] > 0.8
    # groups are blocks of the initial state
    first = np.r_[True, pan.episode[1:] != pan.episode[:-1]]
    np.testing.assert_array_equal(pan.group, mdp.state_group[pan.state[first]])


def test_deterministic_by_seed() -> None:
    _, a = garnet_panel(SMALL, 300, seed=7)
    _, b = garnet_panel(SMALL, 300, seed=7)
    _, c = garnet_panel(SMALL, 300, seed=8)
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.action, b.action)
    assert a.state.size != c.state.size or not np.array_equal(a.state, c.state)


def test_policy_families_are_valid_and_ordered() -> None:
    mdp = GarnetMDP(SMALL, random_state=2)
    fams = garnet_target_policies(mdp)
    sup = mdp.behavior_policy > 0
    for name, p in fams.items():
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
        if name != "optimal" and name != "unsupported":
            assert np.all(p[~sup] == 0), name
    assert (fams["unsupported"][~sup]).sum() > 0
    v = {k: mdp.value(p) for k, p in fams.items()}
    assert v["optimal_supported"] > v["behavior"]
    assert v["mixture_70"] > v["mixture_30"] > v["behavior"]


def test_presets_cover_the_grid() -> None:
    cfgs = list(GARNET_PRESETS.values())
    assert len(cfgs) >= 8
    assert {c.n_states for c in cfgs} == {50, 700, 5000}
    assert {c.n_actions for c in cfgs} == {5, 25, 100}
    assert {c.gamma for c in cfgs} == {1.0, 0.99}
    with pytest.raises(InvalidParameterError, match="Unknown Garnet preset"):
        garnet_preset("nope")


def test_config_checks_and_round_trip() -> None:
    msg = "The 'n_states' parameter of GarnetConfig must be an int >= 2. Got 1 instead."
    with pytest.raises(ValueError, match=re.escape(msg)):
        GarnetConfig(n_states=1)
    with pytest.raises(InvalidParameterError, match="Unknown GarnetConfig keys"):
        GarnetConfig.from_dict({"n_state": 3})
    assert GarnetConfig.from_dict(SMALL.to_dict()) == SMALL
    mdp = GarnetMDP(SMALL, random_state=0)
    with pytest.raises(ValueError, match="must have shape"):
        mdp.value(np.ones((3, 3)))


def test_cli_writes_loadable_files(tmp_path) -> None:
    from typer.testing import CliRunner

    from equicare.cli import app
    from equicare.data import load_dataset
    from equicare.policy import FilePolicy

    out = tmp_path / "g"
    args = ["synth", "--sim", "garnet", "--states", "50", "--actions", "5", "--episodes", "400",
            "--seed", "1", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = load_dataset(out / "panel.parquet", out / "manifest.toml")
    assert ds.n_episodes == 400 and ds.n_actions == 5 and ds.gamma == 1.0
    assert ds.categorical_names == ("state",) and ds.state_names == ("severity",)
    truth = json.loads((out / "truth.json").read_text())
    cfg = GarnetConfig.from_dict(truth["config"])
    mdp, pan = garnet_panel(cfg, 400, seed=1)
    np.testing.assert_allclose(ds.returns(), pan.returns)
    assert ds.terminals.sum() == pan.terminal.sum()
    s = garnet_state_index(ds)
    fams = garnet_target_policies(mdp)
    for name in ("behavior", "optimal", "unsupported"):
        probs = FilePolicy(out / truth["policies"][name]["file"]).action_probs(ds)
        np.testing.assert_allclose(probs, fams[name][s], atol=1e-12)
        assert truth["policies"][name]["value"] == pytest.approx(mdp.value(fams[name]))
    np.testing.assert_allclose(ds.behavior_prob, mdp.behavior_policy[s, ds.actions])
    assert truth["policies"]["unsupported"]["zero_propensity_mass_rows"] > 0
    assert truth["policies"]["behavior"]["zero_propensity_mass_rows"] == 0
    # refuses to overwrite without --force
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "exists" in res.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


def test_cli_sites_add_a_column_that_changes_nothing(tmp_path) -> None:
    """``--sites 12``: a categorical ``site`` per episode; the rest of the panel, the policies
    and the truth are those without it, and evaluate's table pools over the site."""
    from typer.testing import CliRunner

    from equicare.cli import app
    from equicare.data import load_dataset
    from equicare.ope import evaluate
    from equicare.policy import FilePolicy

    base = ["synth", "--sim", "garnet", "--states", "50", "--actions", "5", "--episodes", "400",
            "--seed", "2"]
    assert CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    res = CliRunner().invoke(app, [*base, "--sites", "12", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a = load_dataset(tmp_path / "a" / "panel.parquet", tmp_path / "a" / "manifest.toml")
    b = load_dataset(tmp_path / "b" / "panel.parquet", tmp_path / "b" / "manifest.toml")
    assert b.categorical_names == ("state", "site") and len(b.categorical_levels[1]) == 12
    np.testing.assert_array_equal(a.categorical[:, 0], b.categorical[:, 0])
    np.testing.assert_array_equal(a.actions, b.actions)
    site = b.categorical[:, 1]
    assert (site == site[b.episode_offsets[:-1]][b.episode_index]).all()  # one per episode
    ta = json.loads((tmp_path / "a" / "truth.json").read_text())
    tb = json.loads((tmp_path / "b" / "truth.json").read_text())
    assert tb["site"]["levels"] == 12
    assert {k: v["value"] for k, v in ta["policies"].items()} == {
        k: v["value"] for k, v in tb["policies"].items()}
    pol = FilePolicy(tmp_path / "b" / tb["policies"]["soft_optimal"]["file"])
    kw = {"estimators": "fqe", "q_model": "tabular_stationary", "bootstrap": 0, "groups": [],
          "diagnose_support": False}
    res_b = evaluate(b, pol, **kw)
    assert res_b.q_model is not None and res_b.q_model["chosen"] == "tabular_stationary[state]"
    res_a = evaluate(a, pol, **kw)
    assert res_b.estimates["fqe"].value == pytest.approx(res_a.estimates["fqe"].value, rel=1e-9)
    res = CliRunner().invoke(app, ["synth", "--sites", "3", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--sites" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["s700_a25_g1", "s700_a100_g1", "s5000_a25_g099",
                                  "s5000_a100_g1"])
def test_large_configurations_match_monte_carlo(name: str) -> None:
    mdp = GarnetMDP(garnet_preset(name), random_state=1)
    fams = garnet_target_policies(mdp)
    for family in ("behavior", "optimal", "soft_optimal", "mixture_30"):
        z, z_groups = _z(mdp, fams[family], 50_000, seed=5)
        assert abs(z) < 4, (family, z)
        assert all(abs(v) < 4 for v in z_groups.values()), (family, z_groups)


# ------------------------------------------------------------------ efficiency bounds
def _moved(mdp: GarnetMDP, k: int, eps: float) -> GarnetMDP:
    """A copy of ``mdp`` with ``eps`` of row ``k``'s probability moved from its last entry to
    its first (rewards follow the *good* column)."""
    from copy import deepcopy

    out = deepcopy(mdp)
    out.P = mdp.P.copy()
    lo, hi = mdp.P.indptr[k], mdp.P.indptr[k + 1]
    out.P.data[lo] += eps
    out.P.data[hi - 1] -= eps
    S, A = mdp.n_states, mdp.n_actions
    out._Pt = out.P[:, :S].tocsr()
    out.reward = np.asarray(out.P[:, [S]].todense()).reshape(S, A)
    return out


def test_value_gradient_matches_finite_differences() -> None:
    mdp = GarnetMDP(SMALL, random_state=3)
    pi = garnet_target_policies(mdp)["soft_optimal"]
    grad = mdp.value_gradient(pi)
    assert grad.shape == (mdp.P.nnz,)
    rng = np.random.default_rng(0)
    checked = 0
    for k in rng.choice(mdp.P.shape[0], 40, replace=False):
        lo, hi = mdp.P.indptr[k], mdp.P.indptr[k + 1]
        if hi - lo < 2:
            continue
        eps = 1e-6
        fd = (mdp_value := _moved(mdp, int(k), eps).value(pi)) - mdp.value(pi)
        assert np.isfinite(mdp_value)
        assert fd / eps == pytest.approx(grad[lo] - grad[hi - 1], rel=1e-4, abs=1e-9)
        checked += abs(grad[lo] - grad[hi - 1]) > 1e-6
    assert checked >= 5  # the check is not only on pairs the policy never reaches


def test_sequential_bound_of_the_behaviour_is_the_variance_of_its_return() -> None:
    """For pi = b every weight is 1: DR with the exact Q is the return itself, so the
    sequential bound is Var(return over the window) exactly; the Markov bounds are smaller."""
    mdp = GarnetMDP(SMALL, random_state=4)
    b = mdp.behavior_policy
    seq = mdp.efficiency_bound(b, model="sequential")
    pan = mdp.simulate(40_000, random_state=5)
    var = pan.returns.var(ddof=1)
    se = var * np.sqrt(2.0 / (pan.n_episodes - 1))  # sd of a sample variance (Bernoulli-ish)
    assert abs(seq.variance - var) < 4 * se + 0.02 * var, (seq.variance, var)
    assert seq.value == pytest.approx(mdp.value(b))
    hom = mdp.efficiency_bound(b)
    mar = mdp.efficiency_bound(b, model="markov")
    assert hom.variance <= mar.variance * (1 + 1e-9)
    assert mar.variance == pytest.approx(seq.variance, rel=1e-9)  # every ratio d_pi/d_b is 1
    assert hom.variance < seq.variance  # pooling the steps is worth a little even on-policy


@pytest.mark.parametrize("family", ["soft_optimal", "mixture_30", "tilted", "optimal_supported"])
def test_bounds_are_ordered_by_what_the_model_assumes(family: str) -> None:
    mdp = GarnetMDP(SMALL, random_state=6)
    pi = garnet_target_policies(mdp)[family]
    v = [mdp.efficiency_bound(pi, model=m).variance for m in ("homogeneous", "markov",
                                                              "sequential")]
    assert 0 < v[0] <= v[1] * (1 + 1e-9), v
    assert v[1] <= v[2] * (1 + 1e-9), v
    eb = mdp.efficiency_bound(pi)
    assert eb.sd(4 * 1000) == pytest.approx(eb.sd(1000) / 2)
    assert eb.relative_sd(1000) == pytest.approx(eb.sd(1000) / mdp.value(pi))


def test_unsupported_target_has_no_finite_bound() -> None:
    mdp = GarnetMDP(SMALL, random_state=6)
    pi = garnet_target_policies(mdp)["unsupported"]
    for model in ("homogeneous", "markov", "sequential"):
        eb = mdp.efficiency_bound(pi, model=model)
        assert eb.n_unidentified > 0 and eb.variance == np.inf and eb.model == model
    with pytest.raises(ValueError, match="model"):
        mdp.efficiency_bound(pi, model="iid")  # type: ignore[arg-type]


def test_synth_garnet_with_two_states_has_two_groups(tmp_path):
    """`synth --sim garnet --states 2` (the option allows it) was refused with "The 'n_groups'
    parameter of GarnetConfig must be an int in [1, n_states=2]. Got 3 instead.", a parameter
    the command has no option for. The groups (blocks of states) are now at most the states."""
    import json

    from typer.testing import CliRunner

    from equicare.cli import app
    from equicare.data import load_dataset

    out = tmp_path / "g"
    res = CliRunner().invoke(app, ["synth", "--sim", "garnet", "--states", "2", "--actions", "2",
                                   "--episodes", "30", "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = load_dataset(out / "panel.parquet", out / "manifest.toml")
    assert ds.n_episodes == 30 and len(ds.categorical_levels[0]) == 2
    assert set(ds.groups["group"]) <= {"g0", "g1"}
    assert json.loads((out / "truth.json").read_text())["config"]["n_groups"] == 2
