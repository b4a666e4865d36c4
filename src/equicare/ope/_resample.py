r"""Bootstrap weights that do not depend on how a panel is split: Poisson(1) from a counter RNG.

A multinomial bootstrap (draw ``n`` episodes with replacement) needs the whole panel at once.
The Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating uncertainty for
massive data streams") gives episode ``e`` the weight :math:`W_{b,e} \sim \mathrm{Poisson}(1)`
independently in each replicate ``b``. Drawing :math:`W_{b,e}` from a counter-based generator
keyed by ``(seed, episode id, b)`` makes every weight a pure function of those three numbers, so
any chunking or sharding of the panel, on one machine or many, gives the same replicate sums
:math:`\sum_e W_{b,e}\,x_e` up to floating-point summation order.

The generator is SplitMix64 (Steele, Lea & Flood 2014) applied to a key that mixes the seed, a
64-bit hash of the episode id (``pandas.util.hash_array``, stable across processes) and the
replicate number; the uniform draw is turned into a Poisson(1) count by inverting its CDF.

When the manifest names ``member`` (people who re-enrol), the key is the person's id instead of
the episode's (:func:`resampling_ids`): every episode of a person gets the same weight in every
replicate, in whichever chunk or shard it is read, so the Poisson bootstrap resamples people with
all their episodes (a cluster bootstrap, as the in-memory engines' multinomial draw of people).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.stats import poisson

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["episode_keys", "poisson_weights", "resampling_ids"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SEED_MIX = np.uint64(0xD1B54A32D192ED03)
#: Poisson(1) CDF at 0, 1, ..., 24 (the mass beyond 24 is below 1e-25).
_CDF = poisson.cdf(np.arange(25), 1.0)
#: Episodes per block when drawing (bounds the (n_boot, block) temporary).
_BLOCK = 4096


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def episode_keys(episode_ids: Any) -> NDArray[np.uint64]:
    """Stable 64-bit keys of episode ids, shape ``(n_episodes,)``.

    Integer ids hash by value (whatever their integer width); any other id by its string form.
    """
    ids = np.asarray(episode_ids)
    if ids.dtype.kind in "iu":
        vals: NDArray[Any] = ids.astype(np.int64)
    elif ids.dtype.kind == "O" and all(isinstance(v, int | np.integer) for v in ids[:64]) and \
            all(isinstance(v, int | np.integer) for v in ids):
        vals = ids.astype(np.int64)
    else:
        vals = ids.astype(str).astype(object)
    return pd.util.hash_array(vals).astype(np.uint64)  # type: ignore[no-any-return]


def resampling_ids(dataset: Any) -> NDArray[Any]:
    """The ids the Poisson weights of a dataset's episodes are keyed by, shape ``(n_episodes,)``.

    Each episode's person (:attr:`~equicare.data.TrajectoryDataset.members`) when the manifest
    names ``member``, else the episode id: people with all their episodes are the bootstrap's
    unit whenever they are known (the streamed evaluation and the streamed audit alike).
    """
    members = getattr(dataset, "members", None)
    return np.asarray(dataset.episode_ids if members is None else members)


def poisson_weights(keys: NDArray[np.uint64], n_boot: int, seed: int) -> NDArray[np.float64]:
    """Poisson(1) bootstrap weights of episodes, a pure function of (seed, key, replicate).

    Parameters
    ----------
    keys : ndarray of shape (n_episodes,), uint64
        From :func:`episode_keys`.
    n_boot : int
        Replicates.
    seed : int
        Non-negative seed.

    Returns
    -------
    ndarray of shape (n_boot, n_episodes), float64
        Integer counts (mean 1, variance 1).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="n_boot", owner="poisson_weights",
                                                         expected="an int >= 1", got=n_boot))
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="seed", owner="poisson_weights",
                                                         expected="an int >= 0", got=seed))
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    out = np.empty((n_boot, keys.size), dtype=np.float64)
    with np.errstate(over="ignore"):
        base = _splitmix64(keys ^ (np.uint64(seed) * _SEED_MIX))
        reps = _splitmix64(np.arange(n_boot, dtype=np.uint64) * _GOLDEN + np.uint64(seed))
    for lo in range(0, keys.size, _BLOCK):  # blocks of episodes, all replicates at once
        z = _splitmix64(base[None, lo:lo + _BLOCK] ^ reps[:, None])
        u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
        out[:, lo:lo + _BLOCK] = np.searchsorted(_CDF, u, side="right")
    return out
