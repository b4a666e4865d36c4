"""Training arrays of a dataset (episode-contiguous tensors) and the mini-batch sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from equicare.exceptions import InvalidParameterError
from equicare.models._inputs import ModelInputs

__all__ = ["TrainData", "EpochSampler", "support_of", "group_codes", "critic_model_inputs"]


def support_of(dataset: Any, kind: str, min_count: int) -> NDArray[np.int64]:
    """Flat actions a learner may choose, increasing, shape ``(K,)``.

    ``kind="observed"``: actions logged at least ``min_count`` times; ``"all"``: every action.
    """
    if kind == "all":
        return np.arange(dataset.n_actions, dtype=np.int64)
    sup = np.flatnonzero(dataset.action_space.observed_mask(dataset.actions, min_count))
    if sup.size == 0:
        raise InvalidParameterError(f"No action is observed at least {min_count} times; lower "
                         "min_support_count.")
    return sup.astype(np.int64)


def group_codes(dataset: Any, attr: str | None, levels: NDArray[Any] | None
                ) -> tuple[NDArray[np.int64], NDArray[Any]]:
    """Integer code of each *row*'s group (episode attribute broadcast to rows).

    Returns
    -------
    codes : ndarray of shape (n_steps,)
    levels : ndarray of shape (n_groups,)
        Sorted labels (``levels`` when given: codes then index into it).
    """
    if attr is None or not dataset.groups:
        return np.zeros(dataset.n_steps, dtype=np.int64), np.array(["all"], dtype=object)
    labels = np.asarray(dataset.group_labels(attr)).astype(str)  # saved models keep strings
    levels = np.unique(labels) if levels is None else np.asarray(levels).astype(str)
    pos = np.searchsorted(levels, labels)
    pos = np.clip(pos, 0, len(levels) - 1)
    if (np.asarray(levels)[pos] != labels).any():
        raise InvalidParameterError(f"Group attribute {attr!r} has labels not seen in training.")
    return pos.astype(np.int64)[dataset.episode_index], levels


@dataclass(frozen=True, eq=False)
class TrainData:
    """Every tensor a learner's update reads, aligned by dataset row.

    Parameters
    ----------
    inputs : ModelInputs
        Features (and history windows) of every row.
    critic_inputs : ModelInputs
        Inputs of critics: ``inputs`` plus the one-hot group of each row when critics see the
        group attribute (``critic_groups``), else ``inputs`` itself.
    action_pos : Tensor of shape (n_steps,), int64
        Position of the logged action in the support, -1 if outside it.
    codes : Tensor of shape (n_steps, n_components), int64
        Per-component codes of the logged action.
    reward : Tensor of shape (n_steps,), float32
        Shaped reward.
    done : Tensor of shape (n_steps,), float32
        1 at terminal rows (``dataset.terminals``: the episode truly ends, zero future value).
    next_row : Tensor of shape (n_steps,), int64
        Row of the next step; the row itself when there is none.
    td_ok : Tensor of shape (n_steps,), bool
        The one-step target is defined: the row is terminal, or its next row is logged. The last
        row of a censored episode (not terminal, no next row: the observation window closed) is
        False and is masked out of every temporal-difference loss, so no learner ever reads a
        censored end as zero future value (Contract 1).
    group : Tensor of shape (n_steps,), int64
        Group code of each row.
    rows : Tensor of shape (n_eligible,), int64
        Rows that can be sampled (logged action in the support).
    gamma : float
    initial : Tensor of shape (n_episodes,), int64
        First row of each episode (the initial states, over which a policy's value is defined).
    """

    inputs: ModelInputs
    critic_inputs: ModelInputs
    action_pos: Tensor
    codes: Tensor
    reward: Tensor
    done: Tensor
    next_row: Tensor
    td_ok: Tensor
    group: Tensor
    rows: Tensor
    gamma: float
    initial: Tensor

    @classmethod
    def build(cls, dataset: Any, window: int, support: NDArray[np.int64], group: NDArray[np.int64],
              history_actions: bool = False, critic_groups: int = 0,
              vocabulary: tuple[tuple[str, ...], ...] | None = None) -> TrainData:
        """Assemble from a :class:`~equicare.data.TrajectoryDataset`.

        ``critic_groups > 0`` adds a one-hot of ``group`` (that many levels) to the critic inputs.
        ``vocabulary``: categorical states enter as codes for learned embeddings (see
        :func:`~equicare.models._inputs.state_inputs`), else as one-hot columns.
        """
        pos_map = np.full(dataset.n_actions, -1, dtype=np.int64)
        pos_map[support] = np.arange(support.size)
        action_pos = pos_map[dataset.actions]
        nxt = dataset.next_index
        has_next = nxt >= 0
        term = np.asarray(dataset.terminals, dtype=bool)
        done = term  # a censored last row is not done: its target is undefined (td_ok False)
        td_ok = term | has_next
        next_row = np.where(has_next, nxt, np.arange(dataset.n_steps))
        inputs = ModelInputs.from_dataset(dataset, window, history_actions, vocabulary)
        critic_inputs = inputs
        if critic_groups:
            critic_inputs = critic_model_inputs(dataset, window, history_actions, group,
                                                critic_groups, vocabulary)
        return cls(
            inputs=inputs,
            critic_inputs=critic_inputs,
            action_pos=torch.as_tensor(action_pos),
            codes=torch.as_tensor(np.ascontiguousarray(dataset.action_codes)),
            reward=torch.as_tensor(dataset.rewards, dtype=torch.float32),
            done=torch.as_tensor(done, dtype=torch.float32),
            next_row=torch.as_tensor(next_row),
            td_ok=torch.as_tensor(td_ok),
            group=torch.as_tensor(group),
            rows=torch.as_tensor(np.flatnonzero(action_pos >= 0)),
            gamma=float(dataset.gamma),
            initial=torch.as_tensor(np.asarray(dataset.episode_offsets[:-1], dtype=np.int64)),
        )

    @property
    def n_rows(self) -> int:
        """Rows of the dataset."""
        return int(self.reward.shape[0])


def critic_model_inputs(dataset: Any, window: int, history_actions: bool,
                        group: NDArray[np.int64], n_groups: int,
                        vocabulary: tuple[tuple[str, ...], ...] | None = None) -> ModelInputs:
    """Model inputs with the one-hot group of each row after the state features.

    Parameters
    ----------
    group : ndarray of shape (n_steps,)
        Group code of each row in ``[0, n_groups)``.
    vocabulary : tuple of tuple of str, optional
        Categorical vocabulary of embedding inputs (codes stay the leading columns).
    """
    from equicare.models._inputs import previous_action_features, state_inputs

    feats = np.concatenate([state_inputs(dataset, vocabulary),
                            np.eye(n_groups, dtype=np.float32)[group]], axis=1)
    prev = None
    if history_actions and window > 1:
        prev = previous_action_features(dataset.action_codes, dataset.action_space.sizes,
                                        dataset.rewards, dataset.step)
    return ModelInputs.from_arrays(feats, dataset.step, window, prev)


class EpochSampler:
    """Shuffled passes over the eligible rows, ``batch_size`` rows at a time.

    The state (NumPy generator, current permutation, position) is saved in checkpoints so that a
    resumed run draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, rows: Tensor, batch_size: int, rng: np.random.Generator) -> None:
        self.rows = rows
        self.batch_size = int(min(batch_size, rows.shape[0]))
        self.rng = rng
        self.perm = torch.as_tensor(rng.permutation(rows.shape[0]))
        self.pos = 0

    def next(self) -> Tensor:
        """Rows of the next mini-batch, shape ``(batch_size,)``."""
        if self.pos + self.batch_size > self.perm.shape[0]:
            self.perm = torch.as_tensor(self.rng.permutation(self.rows.shape[0]))
            self.pos = 0
        out = self.rows[self.perm[self.pos:self.pos + self.batch_size]]
        self.pos += self.batch_size
        return out

    def state(self) -> tuple[dict[str, Any], Tensor]:
        """JSON-able state and the permutation tensor."""
        return {"pos": self.pos, "rng": self.rng.bit_generator.state}, self.perm

    def load_state(self, state: dict[str, Any], perm: Tensor) -> None:
        """Restore from :meth:`state`."""
        self.pos = int(state["pos"])
        self.rng.bit_generator.state = state["rng"]
        self.perm = perm.to(torch.int64)
