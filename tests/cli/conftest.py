from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # the machine is shared: multi-threaded BLAS under load is far slower than one thread
    with threadpool_limits(limits=1):
        yield
