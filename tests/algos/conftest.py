import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tabular_mdp import TabularMDP  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mdp() -> TabularMDP:
    """Near-uniform behaviour over 9 of 12 actions; the 3 unobserved actions are bad."""
    return TabularMDP(behaviour_bias=0.0, behaviour_noise=0.5)


@pytest.fixture(scope="session")
def tab_data(mdp):
    return mdp.dataset(1000, random_state=1)


@pytest.fixture(scope="session")
def small_data(mdp):
    return mdp.dataset(120, random_state=2)
