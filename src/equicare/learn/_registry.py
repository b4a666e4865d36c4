"""The one explicit registry of offline learners, and loading any of them from a model folder."""

from __future__ import annotations

import os

from equicare.exceptions import PolicyError
from equicare.learn._awr import AWR
from equicare.learn._base import OfflineLearner
from equicare.learn._bc import BC
from equicare.learn._cql import CQL
from equicare.learn._pvi import PVI
from equicare.learn._spibb import SPIBB

__all__ = ["LEARNERS", "load_learner"]

#: algorithm name (``config.json``'s ``learner``) -> learner class
LEARNERS: dict[str, type[OfflineLearner] | type[SPIBB]] = {"bc": BC, "awr": AWR, "cql": CQL,
                                                           "spibb": SPIBB, "pvi": PVI}


def load_learner(path: str | os.PathLike[str]) -> OfflineLearner | SPIBB:
    """Load a fitted offline learner of any algorithm from its model folder.

    Parameters
    ----------
    path : path-like
        A model folder written by :meth:`OfflineLearner.save`.

    Returns
    -------
    OfflineLearner
        The fitted learner (BC, AWR, CQL, SPIBB or PVI, as recorded in ``config.json``).

    Raises
    ------
    PolicyError
        Missing or malformed files, or an algorithm this registry does not know.
    """
    from equicare.policy._learned import read_model_folder

    cfg, _ = read_model_folder(path)
    algo = str(cfg["learner"])
    if algo not in LEARNERS:
        raise PolicyError(f"{path}: the model was trained with {algo!r}; known offline learners "
                          f"are {sorted(LEARNERS)}.")
    return LEARNERS[algo].load(path)
