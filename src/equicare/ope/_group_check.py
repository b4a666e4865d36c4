r"""Whether the Q-model is right within a subgroup: its target-weighted TD residuals there.

The Q-model of FQE, DR and WDR is fitted on every episode. When a numeric state that drives the
outcomes is distributed differently by group (HbA1c by race) and the Q-model pools over it (a
table's cells, a linear model's average slope), or when the group itself carries information the
state does not (a latent level the members revert to), the pooled ``Q`` is right on average and
wrong within each group: every group's FQE is pulled towards the panel's value. On a
diabetes-program panel the groups' FQE ran from -0.094 to -0.126 against true values from -0.078
to -0.176, none inside its interval, while DR and WDR covered all six.

Per-decision DR is FQE plus the importance-weighted TD residuals of the same ``Q``, episode by
episode:

.. math::

    \mathrm{DR}_e - \mathrm{FQE}_e = \sum_t \gamma^t w_{e,t}
    \bigl(r_{e,t} + \gamma \hat V(s_{e,t+1}) - \hat Q(s_{e,t}, a_{e,t})\bigr),

whose mean over a group's episodes estimates FQE's bias in the group when the propensities are
right (``E_{d_pi}[T_pi Q - Q]``, the same quantity ``auto`` estimates by cross-fitting). The
same sum without the weights (the logged actions' TD residuals) has mean 0 whenever the
Q-model is right given the state, whatever the target; it needs no weights, so it also speaks
for targets far from practice. Standard errors are those of means of independent episodes, and
an attribute's ``m`` levels are tested at a family-wise 5% (:func:`check_threshold`).

* A level whose TD residuals differ from those of the attribute's other levels has a tabular or
  linear Q-model refitted on its own episodes (its dynamics and rewards conditioned on the
  group, which is constant within an episode: a valid part of the Q-model's state, never a
  feature of the policy), and the level's FQE, DR and WDR come from it, with that refit in
  their bootstrap (:func:`own_prepared`; streamed, the same passes over the level's episodes
  only). A Q-model wrong in every level alike (a table that misreads censored stays) is not:
  refitting it per level would not correct it.
* A level whose DR - FQE (with the Q-model it uses) is significantly non-zero gets FQE's
  interval joined with the bias-aware interval of that estimated bias
  (:func:`~equicare.ope._bootstrap.bias_aware`), and the result says so
  (``q_check.fqe_biased``).

The check is published only where DR is (a DR withheld for a low ESS would come back as FQE plus
the published difference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._bootstrap import Estimate, bias_aware
from equicare.ope._core import EpisodeParts, OPEInputs, episode_parts
from equicare.ope._prepare import Prepared

__all__ = ["GROUP_CHECK_ALPHA", "GroupQCheck", "check_of", "check_threshold", "episode_gaps",
           "gap_sums", "own_prepared", "biased_groups_message", "publish_checks", "publishable",
           "needs_own_fit", "plan_checks", "refitted_check"]

#: Family-wise level of an attribute's checks: each of its ``m`` levels is tested at
#: ``GROUP_CHECK_ALPHA / m`` (two-sided; Bonferroni), so a panel whose groups do not differ
#: refits none of them in 95% of evaluations, however many levels it has.
GROUP_CHECK_ALPHA = 0.05


def check_threshold(n_levels: int) -> float:
    """The ``|z|`` beyond which one of ``n_levels`` levels fails its check (1.96 for one)."""
    from scipy.special import ndtri

    return float(ndtri(1.0 - GROUP_CHECK_ALPHA / (2.0 * max(int(n_levels), 1))))


@dataclass(frozen=True)
class GroupQCheck:
    """Whether a group level's Q-model is right there: its TD residuals within the level.

    Attributes
    ----------
    td_residual, td_se : float
        Mean over the level's episodes of their discounted TD residuals
        ``sum_t gamma^t (r_t + gamma V(s_{t+1}) - Q(s_t, a_t))`` (the logged actions, no
        importance weight), and its standard error. Zero in expectation whenever the Q-model
        is right given the state, whatever the target policy.
    dr_minus_fqe, se : float or None
        The same residuals weighted by the importance weights, ``DR_e - FQE_e`` (FQE's bias in
        the level when the propensities are right), and its standard error; None where DR is
        not published.
    threshold : float
        The ``|z|`` beyond which a statistic fails (:func:`check_threshold` of the attribute's
        number of checked levels).
    vs_rest : float or None
        The level's ``td_residual`` minus the mean over all of the attribute's checked levels,
        in standard errors of the level's own mean (the panel's mean is held: the Q-model's fit
        makes the residuals over every episode nearly cancel, so a level and the rest move
        against each other). A Q-model wrong for the level and not for the others: what
        refitting it on the level's own episodes can correct (one wrong everywhere alike is not
        refitted). None for an attribute with one checked level.
    refitted : bool
        Whether the level's Q-model was refitted on its own episodes.
    pooled : GroupQCheck or None
        The pooled Q-model's check when the level's was refitted.
    """

    td_residual: float
    td_se: float
    dr_minus_fqe: float | None = None
    se: float | None = None
    threshold: float = 1.959963984540054
    vs_rest: float | None = None
    refitted: bool = False
    pooled: GroupQCheck | None = None

    @property
    def z(self) -> float | None:
        """``dr_minus_fqe / se`` (None without them)."""
        if self.dr_minus_fqe is None or self.se is None:
            return None
        return _ratio(self.dr_minus_fqe, self.se)

    @property
    def biased(self) -> bool:
        """Whether DR - FQE is more than :attr:`threshold` standard errors from 0."""
        z = self.z
        return z is not None and abs(z) > self.threshold

    @property
    def stands_out(self) -> bool:
        """Whether the level's TD residuals differ from the other levels' (:attr:`vs_rest`)."""
        return self.vs_rest is not None and abs(self.vs_rest) > self.threshold

    def without_weighted(self) -> GroupQCheck:
        """The check without DR - FQE (a level whose DR is withheld)."""
        return replace(self, dr_minus_fqe=None, se=None,
                       pooled=None if self.pooled is None else self.pooled.without_weighted())

    def to_dict(self) -> dict[str, Any]:
        """The result JSON's ``q_check`` of a group level."""
        out: dict[str, Any] = {
            "q_model": "refitted on the level's own episodes" if self.refitted else "pooled",
            "td_residual": self.td_residual, "td_residual_se": self.td_se,
            "dr_minus_fqe": self.dr_minus_fqe, "se": self.se, "threshold": self.threshold,
            "fqe_biased": self.biased}
        if self.pooled is not None:
            p = self.pooled
            out["pooled"] = {"td_residual": p.td_residual, "td_residual_se": p.td_se,
                             "dr_minus_fqe": p.dr_minus_fqe, "se": p.se, "vs_rest": p.vs_rest}
        else:
            out["vs_rest"] = self.vs_rest
        return out


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 0.0 if a == 0 else float(np.copysign(np.inf, a))


#: Columns of :func:`episode_gaps` (and of a level's summed gaps: sum, then sum of squares).
GAP_COLUMNS = ("dr_minus_fqe", "td_residual")


def episode_gaps(inputs: OPEInputs, truncate: float | None = None
                 ) -> NDArray[np.float64] | None:
    """Each episode's ``DR_e - FQE_e`` and unweighted discounted TD residual sum.

    Returns
    -------
    ndarray of shape (n_episodes, 2), or None when the inputs carry no Q-model
    """
    if inputs.q_sa is None or inputs.v_s is None:
        return None
    out = np.empty((inputs.n_episodes, 2))
    for j, inp in enumerate((inputs, inputs.with_rho(np.ones_like(inputs.rho)))):
        parts: EpisodeParts = episode_parts(inp, ("fqe", "dr"),
                                            truncate=truncate if j == 0 else None)
        m, sl = parts.matrix, parts.slices
        out[:, j] = m[:, sl["dr"].start] - m[:, sl["fqe"].start]
    return out


def gap_sums(gaps: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sums and sums of squares of :func:`episode_gaps` rows, shape ``(2, 2)`` (additive)."""
    return np.stack([gaps.sum(axis=0), (gaps * gaps).sum(axis=0)])


def check_of(sums: NDArray[np.float64] | None, n: int) -> GroupQCheck | None:
    """The check from a level's :func:`gap_sums` over its ``n`` episodes (None below 2)."""
    if sums is None or n < 2:
        return None
    mean = sums[0] / n
    var = np.maximum(sums[1] - n * mean * mean, 0.0) / (n - 1)
    se = np.sqrt(var / n)
    return GroupQCheck(td_residual=float(mean[1]), td_se=float(se[1]),
                       dr_minus_fqe=float(mean[0]), se=float(se[0]))


def own_prepared(prep: Prepared, dataset: TrajectoryDataset, episodes: NDArray[np.int64],
                 random_state: int) -> Prepared:
    """The level's episodes alone, with the Q-model (same class and cells) fitted on them.

    The importance ratios and target probabilities are the level's rows of ``prep``; no
    selection is kept (``auto``'s estimated bias is about the pooled fit).
    """
    from equicare.ope._fqe import fit_fqe_logged

    assert prep.q_config is not None
    sub = dataset.subset(episodes)
    lengths = dataset.episode_lengths[episodes]
    rows = (np.repeat(dataset.episode_offsets[episodes], lengths) + np.arange(int(lengths.sum()))
            - np.repeat(np.cumsum(lengths) - lengths, lengths))
    probs = prep.target_probs[rows]
    qfit = fit_fqe_logged(sub, probs, prep.q_config, random_state=random_state)
    return replace(prep, inputs=prep.inputs.subset(episodes).with_q(qfit.q_sa, qfit.v),
                   target_probs=probs, actions=prep.actions[rows],
                   behavior_prob=prep.behavior_prob[rows], qfit=qfit, bandit_qfit=None,
                   q_selection=None, censoring=None,
                   deferred=None if prep.deferred is None else prep.deferred[rows])


def plan_checks(sums: Mapping[str, NDArray[np.float64] | None], counts: Mapping[str, int]
                ) -> dict[str, GroupQCheck]:
    """The pooled Q-model's check of every level of one attribute.

    ``sums`` are the levels' :func:`gap_sums` (None: not checked) and ``counts`` their
    episodes. Each level's :attr:`GroupQCheck.vs_rest` compares it with all of them.
    """
    have = {lv: v for lv, v in sums.items() if v is not None and counts[lv] >= 2}
    thr = check_threshold(len(have))
    n_all = sum(counts[lv] for lv in have)
    overall = float(sum(v[0, 1] for v in have.values())) / max(n_all, 1)
    out: dict[str, GroupQCheck] = {}
    for lv, v in have.items():
        chk = check_of(v, counts[lv])
        assert chk is not None
        # the level against all checked levels' mean, which the Q-model's fit holds (its
        # residuals over every episode nearly cancel): the level's own standard error
        vs = None if len(have) < 2 else _ratio(chk.td_residual - overall, chk.td_se)
        out[lv] = replace(chk, threshold=thr, vs_rest=vs)
    return out


def needs_own_fit(check: GroupQCheck | None, refittable: bool) -> bool:
    """Whether a level's Q-model is refitted on its own episodes.

    When the Q-model can be (:data:`~equicare.ope._levels.REFIT_MODELS`) and the pooled one's
    TD residuals within the level differ from those within the attribute's other levels.
    """
    return check is not None and refittable and check.stands_out


def refitted_check(own: NDArray[np.float64] | None, n: int, pooled: GroupQCheck
                   ) -> GroupQCheck:
    """The check of a level's own Q-model (:func:`gap_sums` ``own``), the pooled one kept."""
    mine = check_of(own, n)
    if mine is None:
        return pooled
    return replace(mine, threshold=pooled.threshold, refitted=True, pooled=pooled)


def publish_checks(levels: dict[str, Any], checks: Mapping[str, GroupQCheck | None],
                   alpha: float = 0.05) -> None:
    """Put each published level's check on it, in place; widen a biased FQE's interval.

    ``levels`` maps a level to its ``GroupResult`` or ``StreamGroup`` (``q_check`` field).
    DR - FQE is kept only where DR is published (a withheld DR would come back as FQE plus the
    difference). A level whose check says biased gets FQE's interval joined with the
    bias-aware interval of ``dr_minus_fqe`` (:func:`~equicare.ope._bootstrap.bias_aware`).
    """
    for lv, chk in checks.items():
        g = levels.get(lv)
        if g is None or g.suppressed or chk is None:
            continue
        if not publishable(g):
            chk = chk.without_weighted()
        ests = dict(g.estimates)
        f = ests.get("fqe")
        if chk.biased and f is not None and f.reason is None:
            assert chk.dr_minus_fqe is not None and chk.se is not None
            ci = bias_aware(Estimate(value=f.value, ci=f.ci, se=f.se, n_episodes=0),
                            chk.dr_minus_fqe, chk.se, alpha).ci
            ests["fqe"] = replace(f, ci=ci)
        levels[lv] = replace(g, q_check=chk, estimates=ests)


def publishable(g: Any) -> bool:
    """Whether a level's DR is published."""
    dr = g.estimates.get("dr")
    return dr is not None and dr.reason is None


def biased_groups_message(groups: Mapping[str, Mapping[str, Any]], q_name: str | None
                          ) -> str | None:
    """The warning naming the levels refitted on their own episodes and the biased FQE, or None.

    From each level's ``q_check``.
    """
    biased: list[str] = []
    refitted: list[str] = []
    for attr, levels in groups.items():
        for lv, g in levels.items():
            chk = getattr(g, "q_check", None)
            if chk is None:
                continue
            if chk.refitted and chk.pooled is not None:
                p = chk.pooled
                refitted.append(f"{attr}={lv} ({p.td_residual:+.3g}, SE {p.td_se:.2g})")
            if chk.biased:
                biased.append(f"{attr}={lv} ({chk.dr_minus_fqe:+.3g}, SE {chk.se:.2g})")
    if not biased and not refitted:
        return None
    model = f"the {q_name} Q-model" if q_name else "the Q-model"
    parts: list[str] = []
    if refitted:
        parts.append(
            f"{model[0].upper()}{model[1:]} fitted on all episodes is biased within "
            f"{_join(refitted)}: its TD residuals there (mean per episode in parentheses) "
            "differ significantly from those of the other levels, so the group differs in a "
            "way the states do not carry, and those levels' FQE, DR and WDR use it refitted "
            "on each level's own episodes (q_check in the result JSON).")
    if biased:
        parts.append(
            f"FQE is biased within {_join(biased)}: DR minus FQE (in parentheses) is "
            "significantly different from 0 there; their FQE intervals include that bias. "
            "Read DR and WDR for them (docs/ope.md, 'Subgroups').")
    return " ".join(parts)


def _join(items: Sequence[str]) -> str:
    return ", ".join(items)
