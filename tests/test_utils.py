from __future__ import annotations

import os
import re

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, int_seed, value_text


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


@pytest.mark.parametrize(("x", "small", "text"), [
    (-5863.025, ".4f", "-5,863"),            # a monthly cost of care in dollars
    (-1847737.61, ".3f", "-1,847,738"),      # a member's year above $1M
    (0.7412, ".4f", "0.7412"), (-0.5, ".3f", "-0.500"),  # small values as before
    (1.2062243606374999e48, ".4f", "1.206e+48"),  # blown-up weights: no 48-digit number
    (float("nan"), ".3f", "nan")])
def test_values_read_in_thousands_from_1000(x, small, text) -> None:
    assert value_text(x, small) == text


def test_every_value_table_reads_dollars_in_thousands() -> None:
    """The run's, the audit's and frontier's, and the plan's tables printed a cost as
    -5863.0250, -5958.121 [-6480.245, -5352.126] and -10682.111."""
    from equicare.cli._fairness import _val, _val_ci
    from equicare.cli._pipeline import _num as run_num
    from equicare.cli._rmab import _num as plan_num
    from equicare.report._card import card_number

    assert run_num(-5863.025) == "-5,863" and run_num(1.8) == "1.8000"
    assert f"{_val(-5958.121)} {_val_ci((-6480.245, -5352.126))}" == "-5,958 [-6,480, -5,352]"
    assert _val(0.081) == "0.081" and _val(None) == "-"
    assert plan_num(-10682.111) == "-10,682" and plan_num(6.056) == "6.056"
    assert card_number(-6066.06) == "-6,066" and card_number(0.8148) == "0.815"


def test_the_evaluate_table_reads_dollars_in_thousands() -> None:
    """evaluate's table printed an FQE interval of a cost as [-1.08e+04, -1920]."""
    from equicare.cli._ope import _cells
    from equicare.ope import Estimate

    e = Estimate(value=-6362.4, ci=(-10804.2, -1920.3), se=1148.2, n_episodes=20_000)
    assert _cells(e) == ("-6,362", "[-10,804, -1,920]", "1,148")
    small = Estimate(value=1.7991, ci=(1.667, 1.931), se=0.06559, n_episodes=1000)
    assert _cells(small) == ("1.799", "[1.667, 1.931]", "0.06559")
