from __future__ import annotations

import numpy as np
import pytest

from equicare.pipeline import get_executor
from equicare.pipeline._executor import LocalExecutor


def _task(seed: int) -> float:
    return float(np.random.default_rng(seed).normal(size=100).mean())


def test_local_pool_equals_serial():
    seeds = [1, 2, 3, 4]
    serial = get_executor("serial").map(_task, seeds)
    pooled = get_executor("local", jobs=2).map(_task, seeds)
    assert serial == pooled


def test_bad_arguments():
    with pytest.raises(ValueError, match="The 'executor' parameter of get_executor must be one of"):
        get_executor("spark")
    with pytest.raises(ValueError, match="The 'jobs' parameter of LocalExecutor"):
        LocalExecutor(jobs=0)


@pytest.mark.slow
def test_ray_equals_local():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'equicare[ray]'")
    from equicare.pipeline._executor import RayExecutor

    seeds = [5, 6, 7]
    assert RayExecutor(address="local", num_cpus=2).map(_task, seeds) == get_executor("serial").map(
        _task, seeds
    )
