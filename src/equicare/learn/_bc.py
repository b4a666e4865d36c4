r"""Behaviour cloning: maximum likelihood of the logged actions.

.. math::

    \min_\theta \; -\frac{1}{n} \sum_i \log \pi_\theta(a_i \mid s_i)
    \; [+ \text{fairness terms}]

Fitted on the logged data, BC estimates the behaviour policy and can serve as the propensity
model of off-policy evaluation (``action_probs`` gives ``pi_b(a|s)`` for every action).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from equicare.learn._base import LearnerConfig, OfflineLearner
from equicare.learn._data import TrainData
from equicare.models._inputs import batched_forward
from equicare.models._networks import Network, build_network
from equicare.utils import check_param

__all__ = ["BC", "BCConfig"]


@dataclass(frozen=True, kw_only=True)
class BCConfig(LearnerConfig):
    """Settings of :class:`BC` (plus every field of :class:`LearnerConfig`).

    Parameters
    ----------
    head : {"joint", "factored", "autoregressive"}
        Joint categorical over the support, or one categorical per action component
        (independent or autoregressive in component order).
    """

    head: Literal["joint", "factored", "autoregressive"] = "joint"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_param(self.head, "head", type(self).__name__,
                    choices=("joint", "factored", "autoregressive"))


def nll_rows(scores: Tensor, action_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Log-policy over the support and the negative log-likelihood of the taken actions.

    Parameters
    ----------
    scores : Tensor of shape (batch, K)
    action_pos : Tensor of shape (batch,)

    Returns
    -------
    log_pi : Tensor of shape (batch, K)
    nll : Tensor of shape (batch,)
    """
    log_pi = torch.log_softmax(scores, dim=1)
    return log_pi, -log_pi.gather(1, action_pos[:, None]).squeeze(1)


class BC(OfflineLearner):
    """Behaviour cloning (see module docstring).

    Parameters
    ----------
    config : BCConfig, optional
    **overrides
        Config fields, e.g. ``BC(n_steps=2000, encoder="lstm", window=4)``.

    Examples
    --------
    >>> bc = BC(n_steps=500, hidden=(64, 64)).fit(dataset, progress=False)  # doctest: +SKIP
    >>> bc.action_probs(dataset).shape  # doctest: +SKIP
    (n_steps, n_actions)
    """

    algo = "bc"
    config_class = BCConfig
    config: BCConfig

    def _networks(self, base: dict[str, Any], critic_base: dict[str, Any]
                  ) -> dict[str, Network]:
        return {"policy": build_network(self._spec(base, head=self.config.head),
                                        seed=self.config.seed)}

    def _update(self, data: TrainData, rows: Tensor, step: int) -> dict[str, Tensor]:
        net, opt = self.nets_["policy"], self._optims["policy"]
        x, lengths = data.inputs.take(rows)
        log_pi, nll = nll_rows(net(x, lengths), data.action_pos[rows])
        loss = self._policy_objective(nll, log_pi, data.group[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return {"loss": loss.detach(), "nll": nll.detach().mean()}

    def logged_prob(self, dataset: Any) -> NDArray[np.float64]:
        """Estimated behaviour probability of each row's logged action, shape ``(n_steps,)``.

        In-sample on the training data (no cross-fitting); 0 for actions outside the support.
        """
        p = self.action_probs(dataset)
        return np.asarray(p[np.arange(dataset.n_steps), dataset.actions], dtype=np.float64)

    def propensities(self, dataset: Any, floor: float = 1e-3) -> NDArray[np.float64]:
        """Floored logged-action probabilities ``max(p, floor)`` for off-policy evaluation.

        Pass them to :func:`equicare.ope.evaluate` as ``behavior_prob``.
        """
        check_param(floor, "floor", "BC.propensities", kind=(int, float), low=0, high=1,
                    low_inclusive=False)
        return np.maximum(self.logged_prob(dataset), float(floor))

    def _valid_loss(self, data: TrainData) -> float:
        scores = batched_forward(self.nets_["policy"], data.inputs, rows=data.rows)
        _, nll = nll_rows(scores, data.action_pos[data.rows])
        return float(nll.mean())
