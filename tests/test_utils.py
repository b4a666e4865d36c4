from __future__ import annotations

import os
import re

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, int_seed


def test_int_seed_keeps_ints_and_draws_once_from_generators() -> None:
    assert int_seed(7, "f") == 7 and int_seed(np.int64(7), "f") == 7
    assert type(int_seed(np.int64(7), "f")) is int
    rng = np.random.default_rng(3)
    first = int_seed(rng, "f")
    assert first == int(np.random.default_rng(3).integers(2**31 - 1))
    assert int_seed(rng, "f") != first  # the generator advanced
    assert 0 <= int_seed(None, "f") < 2**31 - 1


@pytest.mark.parametrize("bad", [True, -1, 1.5, "0"])
def test_int_seed_refuses_other_values(bad) -> None:
    msg = PARAM_MESSAGE.format(name="random_state", owner="f",
                               expected="a non-negative int, a numpy Generator or None", got=bad)
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        int_seed(bad, "f")


def test_check_dataset_names_the_owner_and_how_to_build_one() -> None:
    import pandas as pd

    from equicare.utils import DATASET_EXPECTED, check_dataset

    msg = PARAM_MESSAGE.format(name="dataset", owner="evaluate", expected=DATASET_EXPECTED,
                               got="DataFrame")
    assert "equicare.data.from_frame(frame, manifest)" in msg
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        check_dataset(pd.DataFrame({"a": [1]}), "evaluate")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_gives_the_usual_permissions_not_owner_only(tmp_path) -> None:
    # mkstemp's temporary file is 0o600; renamed into place, every result (result JSON, panel,
    # report) was unreadable by the second analyst and the auditor of a shared project folder
    from equicare.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
        assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "kept.json").write_text("")
        os.chmod(tmp_path / "kept.json", 0o640)  # replacing a file keeps its permissions
        atomic_write_text(tmp_path / "kept.json", "{}")
        assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
