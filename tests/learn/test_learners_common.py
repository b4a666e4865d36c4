import re

import numpy as np
import pytest
import torch
from sklearn.base import clone

from equicare.exceptions import DataValidationError, InvalidParameterError, PolicyError
from equicare.learn import (
    AWR,
    BC,
    CQL,
    AWRConfig,
    BCConfig,
    CQLConfig,
    GroupDRO,
    load_learner,
    parity_penalty,
)

LEARNERS = [(BC, BCConfig), (AWR, AWRConfig), (CQL, CQLConfig)]


@pytest.mark.parametrize("klass, config_class", LEARNERS)
def test_default_config_round_trip_and_clone(klass, config_class):
    learner = klass()
    assert isinstance(learner.config, config_class)
    d = learner.config.to_dict()
    assert config_class.from_dict(d) == learner.config
    assert clone(klass(n_steps=7)).config.n_steps == 7
    assert klass(config_class(seed=3), n_steps=9).config == config_class(seed=3, n_steps=9)
    with pytest.raises(ValueError, match="Unknown .*Config keys"):
        config_class.from_dict({**d, "nope": 1})


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, "The 'window' parameter of {c} must be an int >= 1. Got 0 instead."),
    ({"encoder": "gru"}, "The 'encoder' parameter of {c} must be one of 'mlp', 'lstm'. "
                         "Got 'gru' instead."),
    ({"fair_lambda": -0.5, "fair_action": "m=x"},
     "The 'fair_lambda' parameter of {c} must be a number >= 0. Got -0.5 instead."),
    ({"fair_lambda": 1.0}, "The 'fair_action' parameter of {c} must be an action set such as "
                           "'modality=home_visit' when fair_lambda > 0. Got None instead."),
    ({"fair_action": "home_visit"}, "The 'fair_action' parameter of {c} must be an action set "
                                    "'component=level' such as 'modality=home_visit'. "
                                    "Got 'home_visit' instead."),
    ({"group_robust": 1.2}, "The 'group_robust' parameter of {c} must be a number in [0, 1]. "
                            "Got 1.2 instead."),
    ({"hidden": ()}, "The 'hidden' parameter of {c} must be a non-empty tuple of positive ints. "
                     "Got () instead."),
    ({"early_stopping": "dr", "valid_fraction": 0.0},
     "The 'valid_fraction' parameter of {c} must be a number in (0, 1) when early_stopping is "
     "set. Got 0.0 instead."),
])
@pytest.mark.parametrize("config_class", [BCConfig, AWRConfig, CQLConfig])
def test_config_errors(config_class, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message.format(c=config_class.__name__))):
        config_class(**kwargs)


@pytest.mark.parametrize("config_class, kwargs, message", [
    (AWRConfig, {"beta": 0.0}, "The 'beta' parameter of AWRConfig must be a number in (0, inf). "
                               "Got 0.0 instead."),
    (AWRConfig, {"critic": "z"}, "The 'critic' parameter of AWRConfig must be one of 'q', 'v'. "
                                 "Got 'z' instead."),
    (CQLConfig, {"temperature": -1.0}, "The 'temperature' parameter of CQLConfig must be a "
                                       "number in (0, inf). Got -1.0 instead."),
    (CQLConfig, {"alpha": -1.0}, "The 'alpha' parameter of CQLConfig must be a number in "
                                 "[0, inf). Got -1.0 instead."),
    (BCConfig, {"head": "tree"}, "The 'head' parameter of BCConfig must be one of 'joint', "
                                 "'factored', 'autoregressive'. Got 'tree' instead."),
])
def test_algorithm_specific_errors(config_class, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_class(**kwargs)


def test_fit_time_errors(small_data):
    with pytest.raises(ValueError, match=re.escape("Unknown level(s) ['zz'] of action "
                                                   "component 'kind'")):
        BC(fair_action="kind=zz", fair_lambda=1.0, n_steps=2).fit(small_data, progress=False)
    with pytest.raises(DataValidationError, match="unknown group attribute 'race'"):
        BC(group_attr="race", n_steps=2).fit(small_data, progress=False)
    with pytest.raises(InvalidParameterError,
                       match=r"The 'dataset' parameter of BC.fit must be a TrajectoryDataset"):
        BC(n_steps=2).fit(np.zeros((3, 3)), progress=False)


def test_load_rejects_other_algorithm(tmp_path, small_data):
    BC(n_steps=3, hidden=(8,), valid_fraction=0.0).fit(small_data, progress=False).save(
        tmp_path / "bc")
    with pytest.raises(PolicyError, match="the model was trained with 'bc', not 'cql'"):
        CQL.load(tmp_path / "bc")
    assert isinstance(load_learner(tmp_path / "bc"), BC)


def test_parity_penalty_formula():
    p = torch.tensor([0.1, 0.3, 0.5, 0.9, 0.2])
    g = torch.tensor([0, 0, 1, 1, 2])
    overall = p.mean()
    want = ((p[:2].mean() - overall) ** 2 + (p[2:4].mean() - overall) ** 2
            + (p[4] - overall) ** 2)
    torch.testing.assert_close(parity_penalty(p, g, n_groups=4), want)  # group 3 absent


def test_group_dro_weights_move_to_the_worst_group():
    dro = GroupDRO(3, step=0.5)
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0, 0.5])
    g = torch.tensor([0, 0, 1, 1, 2])
    for _ in range(20):
        obj = dro.objective(loss, g, lam=1.0)
    assert int(dro.q.argmax()) == 1
    torch.testing.assert_close(dro.q.sum(), torch.tensor(1.0))
    assert float(obj) > float(loss.mean())
    # lambda = 0 is exactly the plain objective
    torch.testing.assert_close(GroupDRO(3, 0.5).objective(loss, g, lam=0.0), loss.mean())


@pytest.mark.parametrize("algo", ["bc", "awr"])
def test_fairness_penalty_cuts_tabular_parity_gap(algo):
    """Biased practice: group B gets actions of kind c 2.7x less often in the same state.

    The learners see the group label; the exact allocation of kind=c per group under the tabular
    MDP (each group under its own policy) shows the penalty removing most of the learned gap.
    """
    from tests.learn.tabular_mdp import TabularMDP

    mdp = TabularMDP(behaviour_bias=0.0, behaviour_noise=0.5, group_disparity=1.0,
                     group_feature=True)
    data = mdp.dataset(600, random_state=3)
    mask = data.action_space.parse_action_set("kind=c")
    klass = {"bc": BC, "awr": AWR}[algo]
    res = {}
    for lam in (0.0, 1.0, 10.0):
        extra = {"fair_action": "kind=c", "fair_lambda": lam} if lam else {}
        learner = klass(n_steps=400, hidden=(32, 32), valid_fraction=0.0, **extra)
        learner.fit(data, progress=False)
        tables = {g: mdp.policy_table(learner, g) for g in ("A", "B")}
        alloc = {g: mdp.allocation(tables[g], mask, g) for g in ("A", "B")}
        value = np.mean([mdp.value(tables[g], g) for g in ("A", "B")])
        res[lam] = (abs(alloc["A"] - alloc["B"]), value)
    cut = {lam: 1 - res[lam][0] / res[0.0][0] for lam in (1.0, 10.0)}
    print(f"\n{algo} tabular kind=c parity gap: lambda=0 {res[0.0][0]:.4f}, lambda=1 "
          f"{res[1.0][0]:.4f} ({100 * cut[1.0]:.0f}% cut), lambda=10 {res[10.0][0]:.4f} "
          f"({100 * cut[10.0]:.0f}% cut); value {res[0.0][1]:.3f}, {res[1.0][1]:.3f}, "
          f"{res[10.0][1]:.3f}")
    assert res[0.0][0] > 0.05
    assert cut[1.0] > 0.25
    assert cut[10.0] > 0.7
