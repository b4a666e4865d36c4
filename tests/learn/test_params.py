"""scikit-learn parameters of every learner: clone, get_params/set_params over config fields,
and fit refusing keyword arguments it would ignore (SPIBB, PVI)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import ParameterGrid

from equicare.data import from_frame
from equicare.exceptions import InvalidParameterError
from equicare.learn import AWR, BC, CQL, PVI, SPIBB, SPIBBConfig
from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
from equicare.sim.garnet import GarnetConfig, garnet_panel

ALL = [BC, AWR, CQL, SPIBB, PVI]
FIELD = {BC: ("n_steps", 10), AWR: ("n_steps", 10), CQL: ("n_steps", 10),
         SPIBB: ("n_wedge", 3.0), PVI: ("beta", 0.2)}


@pytest.mark.parametrize("klass", ALL)
def test_every_learner_is_a_cloneable_estimator_with_config_fields_as_params(klass):
    name, value = FIELD[klass]
    est = klass(**{name: value})
    assert isinstance(est, BaseEstimator)
    c = clone(est)
    assert c.config == est.config and c.config is not est.config
    assert list(est.get_params(deep=False)) == ["config"]
    deep = est.get_params(deep=True)
    assert deep["config"] is est.config and deep[name] == value
    other = klass().set_params(**{name: value})
    assert other.config == est.config
    # what a grid search does: a clone per point of the grid, then set_params
    fits = [clone(klass()).set_params(**p) for p in ParameterGrid({name: [value]})]
    assert fits[0].config == est.config
    with pytest.raises(InvalidParameterError, match=re.escape(f"did you mean {name!r}")):
        klass().set_params(**{name + "x": value})


def test_set_params_checks_the_config():
    with pytest.raises(InvalidParameterError, match="The 'n_steps' parameter of BCConfig"):
        BC().set_params(n_steps=-1)
    with pytest.raises(InvalidParameterError, match="The 'config' parameter of SPIBB"):
        SPIBB().set_params(config=3)
    est = SPIBB().set_params(config=SPIBBConfig(n_wedge=5), variant="soft")
    assert est.config == SPIBBConfig(n_wedge=5, variant="soft")


@pytest.mark.parametrize("klass", [SPIBB, PVI])
def test_cell_learners_refuse_fit_arguments_they_would_ignore(klass):
    cfg = GarnetConfig(n_states=5, n_actions=2, n_successors=2)
    mdp, pan = garnet_panel(cfg, 60, 0)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    name = klass.__name__
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"{name}.fit() got unexpected keyword argument(s) 'n_wedgee', 'random_state'")):
        klass().fit(ds, n_wedgee=5, random_state=3)
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"{name}.fit() does not use valid=, checkpoint_dir=")):
        klass().fit(ds, valid=ds, checkpoint_dir="/nonexistent")
    fitted = klass().fit(ds, progress=True, valid=None, checkpoint_dir=None, resume=False)
    assert np.allclose(fitted.action_probs(ds).sum(axis=1), 1.0)
