import numpy as np
import pytest
import torch

from equicare.exceptions import NotFittedError
from equicare.learn import BC, BCConfig

FAST = dict(hidden=(32, 32), valid_fraction=0.0)


def _weights(learner):
    return {f"{k}.{n}": t.clone() for k, net in learner.nets_.items()
            for n, t in net.state_dict().items()}


@pytest.mark.parametrize("head", ["joint", "autoregressive"])
def test_bc_recovers_the_behaviour_policy(mdp, tab_data, head):
    """BC on 10k rows: total-variation distance to the true behaviour policy, per state < 0.06."""
    bc = BC(n_steps=800, head=head, **FAST).fit(tab_data, progress=False)
    table = mdp.policy_table(bc)
    tv = 0.5 * np.abs(table - mdp.behaviour).sum(axis=1)
    print(f"\nBC[{head}] max TV distance to behaviour: {tv.max():.4f}")
    assert tv.max() < 0.06
    # unobserved combinations get exactly zero probability
    unobserved = np.setdiff1d(np.arange(mdp.n_actions), mdp.support)
    assert (table[:, unobserved] == 0).all()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-9)


def test_bc_as_propensity_model(mdp, tab_data):
    bc = BC(n_steps=800, **FAST).fit(tab_data, progress=False)
    p = bc.action_probs(tab_data)
    logged = p[np.arange(tab_data.n_steps), tab_data.actions]
    true = mdp.behaviour[tab_data.categorical[:, 0], tab_data.actions]
    assert np.median(np.abs(logged / true - 1.0)) < 0.08
    assert (logged > 0).all()


def test_same_seed_same_weights_other_seed_differs(small_data):
    a = BC(n_steps=60, seed=3, **FAST).fit(small_data, progress=False)
    b = BC(n_steps=60, seed=3, **FAST).fit(small_data, progress=False)
    c = BC(n_steps=60, seed=4, **FAST).fit(small_data, progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    np.testing.assert_array_equal(a.action_probs(small_data), b.action_probs(small_data))


def test_save_load_identical_probabilities(tmp_path, small_data):
    bc = BC(n_steps=50, head="autoregressive", **FAST).fit(small_data, progress=False)
    bc.save(tmp_path / "m")
    back = BC.load(tmp_path / "m")
    np.testing.assert_array_equal(bc.action_probs(small_data), back.action_probs(small_data))
    assert back.config == bc.config
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        bc.save(tmp_path / "m")
    bc.save(tmp_path / "m", overwrite=True)


def test_not_fitted():
    with pytest.raises(NotFittedError, match="This BC instance is not fitted yet; call fit first"):
        BC().action_probs(None)


def test_early_stopping_on_validation_loss_keeps_best(small_data):
    bc = BC(n_steps=400, eval_every=20, patience=3, early_stopping="loss", hidden=(64, 64),
            learning_rate=1e-2, valid_fraction=0.3).fit(small_data, progress=False)
    losses = [h["valid_loss"] for h in bc.history_]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert bc.best_step_ == bc.history_[best]["step"]
    # stopped patience evaluations after the best one (or ran to the end)
    assert len(losses) - 1 - best <= 3
    assert bc.n_steps_done_ <= 400


def test_resume_from_checkpoint_is_identical(tmp_path, small_data):
    cfg = BCConfig(n_steps=120, checkpoint_every=40, eval_every=40, valid_fraction=0.2,
                   hidden=(16,))
    full = BC(cfg).fit(small_data, progress=False)
    # a run stopped after 80 steps (its checkpoint) ...
    part = BC(cfg, n_steps=80).fit(small_data, progress=False, checkpoint_dir=tmp_path / "ck")
    assert part.n_steps_done_ == 80
    # ... resumed with the full budget gives the uninterrupted run's weights and history
    resumed = BC(cfg).fit(small_data, progress=False, checkpoint_dir=tmp_path / "ck",
                          resume=True)
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [h["step"] for h in resumed.history_] == [40, 80, 120]
    assert [h["valid_loss"] for h in resumed.history_] == [h["valid_loss"] for h in full.history_]
    with pytest.raises(ValueError, match="written by another learner or config"):
        BC(cfg, seed=1).fit(small_data, progress=False, checkpoint_dir=tmp_path / "ck",
                            resume=True)


def test_bc_propensities_feed_the_ope_engine(mdp, small_data):
    import equicare.ope as ope

    bc = BC(n_steps=200, hidden=(32,), valid_fraction=0.0).fit(small_data, progress=False)
    prop = bc.propensities(small_data)
    assert prop.shape == (small_data.n_steps,) and (prop >= 1e-3).all() and (prop <= 1).all()
    # the cloned policy evaluated with its own propensities: ratios 1, WIS = on-policy mean
    res = ope.evaluate(small_data, bc, estimators="wis", behavior_prob=prop, bootstrap=0,
                       groups=(), random_state=0)
    assert abs(res.estimates["wis"].value - res.behavior.value) < 1e-6
