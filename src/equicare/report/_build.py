"""Build the run report from a run's artifact folder (so ``equicare report RUN_ID`` can redo it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equicare.fairness._rows import action_label
from equicare.ope._evaluate import HEADLINE_ESTIMATORS, headline_of
from equicare.ope._sensitivity import MIN_EFFECTIVE_EPISODES
from equicare.report import _figures as F
from equicare.report._html import Report
from equicare.utils import MIN_CELL, value_text

__all__ = ["build_run_report", "CAVEATS", "report_caveats", "weight_checks"]

_CONFOUNDING = (
    "These estimates come from observational data: they are valid only if every factor that "
    "drove both the logged decisions and the outcomes is among the recorded state features "
    "(no unmeasured confounding).")
_POSITIVITY = (
    "Positivity: a policy can only be evaluated on actions that current practice sometimes takes "
    "in similar states. Importance-sampling estimators are biased when the learned policy puts "
    "mass on actions the behaviour policy (almost) never takes")
_DR = ("Doubly robust estimates lean on the fitted Q-model where weights are extreme")
_SMALL = f"Groups with fewer than {MIN_CELL} episodes are suppressed in every table and figure."


def weight_checks(result: Mapping[str, Any]) -> str | None:
    """``evaluate``'s warning on the importance weights, rebuilt from the result JSON.

    Low ESS, weights whose mean says the sample missed their tail, and a tail too heavy for
    any interval (:func:`~equicare.ope._ess.low_ess_message`); None when none applies. A run on
    a Medicaid cost panel printed IS -1,740 [-3,098, -383] against a truth of -5,603 with its
    weights averaging 0.68 and Pareto k 1.01, and its report said none of it.
    """
    from equicare.ope._ess import low_ess_message

    ess = result.get("ess") or {}
    n = int(result.get("n_episodes") or 0)
    traj = ess.get("trajectory_truncated")
    traj = ess.get("trajectory") if traj is None else traj
    pd_pct = ess.get("per_decision_truncated_pct")
    per_decision = (ess.get("per_decision") if pd_pct is None else pd_pct * n / 100.0)
    keys = [k for k, e in (result.get("estimates") or {}).items()
            if e.get("value") is not None]
    settings = result.get("settings") or {}
    return low_ess_message(keys, n, traj, per_decision,
                           logged=settings.get("propensity_source") == "logged",
                           unusable=result.get("out_of_range") or (),
                           weight_mean=ess.get("trajectory_weight_mean"),
                           weight_mean_se=ess.get("trajectory_weight_mean_se"),
                           weight_pareto_k=ess.get("trajectory_weight_pareto_k"))


def report_caveats(*, support: bool, sensitivity: bool, sweep: bool = False) -> list[str]:
    """The caveats of a report, pointing only at sections the report has.

    Parameters
    ----------
    support : bool
        The report has the Support table (under Policy value).
    sensitivity : bool
        The report has the Sensitivity section.
    sweep : bool
        A sweep report (it has neither; a run of one grid point's config has both).
    """
    perturb = "how far the conclusion moves when that model or the propensities are perturbed"
    if support:
        pos = "; the Support table under Policy value above says how much."
    elif sweep:
        pos = "; equicare run of a grid point's config reports how much (its Support table)."
    else:
        pos = "; equicare evaluate reports how much (its support diagnostics)."
    if sensitivity:
        dr = f"; the Sensitivity section above shows {perturb}."
    elif sweep:
        dr = (f"; equicare run of a grid point's config with ope.sensitivity = true shows "
              f"{perturb}.")
    else:
        dr = f"; with ope.sensitivity = true the run report shows {perturb}."
    return [_CONFOUNDING, _POSITIVITY + pos, _DR + dr, _SMALL]


#: The caveats of a full run report (Support and Sensitivity sections present).
CAVEATS = report_caveats(support=True, sensitivity=True)


def config_frame(config: dict[str, Any]) -> pd.DataFrame:
    """The run configuration as ``section.key = value`` rows (disabled optional stages out).

    Out too: the frontier without lambdas, and on a panel of your own (``data.path``) the
    empty ``data.synthetic`` and ``ope.truth_members`` (no simulator, no truth stage), which
    read as if the run had simulated its data.
    """
    rows = []
    own = bool((config.get("data") or {}).get("path"))
    for section, v in config.items():
        if isinstance(v, dict):
            if section in ("plan", "mediation", "explain") and not v.get("enabled"):
                continue
            if section == "frontier" and not v.get("lambdas"):
                continue
            rows += [(f"{section}.{k}", json.dumps(x, default=str)) for k, x in v.items()
                     if not (own and (section, k) in (("data", "synthetic"),
                                                      ("ope", "truth_members")))]
        else:
            rows.append((section, json.dumps(v, default=str)))
    return pd.DataFrame(rows, columns=["setting", "value"])


def support_frame(sup: dict[str, Any]) -> pd.DataFrame:
    """The support diagnostics of a result JSON as ``item, value`` rows."""
    pe = sup.get("per_episode_pct") or {}
    over = sup.get("episodes_over_warn_pct")
    rows = [
        ("target mass on unsupported actions", f"{sup['share_pct']:.2f}%"),
        ("current practice's own expected share (warned beyond +1 point)",
         "-" if sup.get("practice_share_pct") is None else f"{sup['practice_share_pct']:.2f}%"),
        ("per episode: median / 90th percentile / at least 11 episodes above",
         " / ".join(f"{pe[k]:.1f}%" if k in pe else "-"
                    for k in ("median", "p90", "p_top11"))),
        ("episodes over the warning level", "-" if over is None else f"{over:.1f}%"),
        ("unsupported: estimated behaviour probability below", f"{sup['threshold']:g}"),
        ("estimators biased by it", ", ".join(sup.get("biased_estimators") or []) or "none"),
        ("estimators extrapolating with the Q-model",
         ", ".join(sup.get("extrapolating_estimators") or []) or "none"),
    ]
    return pd.DataFrame(rows, columns=["item", "value"])


def q_model_sentence(q: dict[str, Any]) -> str:
    """The Q-model used, and with ``auto`` how it was chosen, in one sentence."""
    chosen = q.get("chosen", "?")
    if not q.get("n_folds"):
        return f"Q-model: {chosen}."
    line = (f"Q-model: {chosen}, chosen by auto: {q['n_folds']}-fold cross-fitted held-out TD "
            "errors weighted by the estimated density ratio d_pi/d_D (score: the squared "
            "estimated value bias plus its variance; lower is better)")
    if q.get("reference") == chosen:
        line += f"; {chosen} is the reference, kept unless another beats it by 2 standard errors"
    cens = q.get("censoring") or {}
    if q.get("replaced") and cens.get("switched_to_window"):
        line += (f"; it replaced {q['replaced']['criterion_choice']}, whose value differed by "
                 f"{cens['difference_pct']:+.1f}% with {cens['censored_episodes_pct']:.1f}% of "
                 "the episodes censored (the stationary table counts a censored last row as an "
                 "end)")
    cc = q.get("cell_choice") or {}
    if cc.get("dropped"):
        line += (f". The tables pool over {', '.join(cc['dropped'])} (it does not change the "
                 f"dynamics given {', '.join(cc['columns'])})")
    return line + "."


def audit_group_frame(policy: dict[str, Any]) -> pd.DataFrame:
    """One row per group of a policy's audit entry (Contract 7): episodes, rate, pp, value.

    A suppressed group's ``n_episodes`` is None, shown as ``suppressed``: it may be suppressed
    to protect a smaller group (complementary suppression), so it is not known to hold fewer
    than 11 episodes. A published group's proportional parity reads ``suppressed`` when the
    audit withheld it (a small count of episodes with or without need), and so does its rate
    (a rate of fewer than 11 members getting the action).

    Parameters
    ----------
    policy : dict
        ``audit["policies"][name]``.
    """
    pp = policy.get("proportional_parity")
    rows = []
    for g, c in policy["rate"].items():
        # a published group whose rate of too few members is withheld keeps its n_episodes
        n = c.get("n_episodes")
        r = {"group": g, "n_episodes": n,
             "rate": "suppressed" if c.get("suppressed") and n is not None else c.get("value")}
        if pp and g in pp and not pp[g].get("suppressed"):
            r["proportional_parity"] = pp[g].get("value")
        elif pp and g in pp and n is not None:
            # a published group whose count of episodes with (or without) need is small
            r["proportional_parity"] = "suppressed"
        vb = policy.get("value_by_group", {}).get(g)
        if isinstance(vb, dict) and not vb.get("suppressed"):
            # a withheld value (weights' ESS below 11, or undefined) reads n/a, not blank
            r["value"] = "n/a" if vb.get("value") is None else vb["value"]
        rows.append(r)
    return pd.DataFrame(rows)


def withheld_values_note(policy: str, entry: dict[str, Any]) -> str | None:
    """Why a policy's group values read n/a in the Fairness section (None when none does).

    The audit gives each withheld value a ``reason`` (an importance-weighted value whose
    weights have an effective sample size below 11 episodes rests on fewer than 11 members'
    outcomes and is not published); its worst group and Gini then have none either.
    """
    vb = entry.get("value_by_group") or {}
    why = sorted({c["reason"] for c in vb.values() if isinstance(c, dict)
                  and not c.get("suppressed") and c.get("value") is None and c.get("reason")})
    if not why:
        return None
    n = sum(1 for c in vb.values() if isinstance(c, dict) and not c.get("suppressed")
            and c.get("value") is None)
    return (f"{policy}: the value of {n} group{'s' if n != 1 else ''} reads n/a ("
            + "; ".join(why) + ").")


def sensitivity_frame(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The sensitivity table of a run, one row per analysis, parameter and estimator.

    Values and interval ends are medians over the noise draws (a mean would let one exploding
    draw stand for all of them); ``flagged`` counts the draws whose ``flag`` is set
    (:func:`equicare.ope.sensitivity_analysis`) and ``why`` names the reasons.

    Parameters
    ----------
    table : pandas.DataFrame
        ``sensitivity.csv`` (a run written before the ``flag`` column counts as unflagged).

    Returns
    -------
    (pandas.DataFrame, int)
        The table and the number of flagged rows of ``table``.
    """
    t = table.copy()
    raw = t["flag"] if "flag" in t else pd.Series("", index=t.index)
    flag = raw.astype(object).where(raw.notna(), "").astype(str)  # all-empty reads as NaN
    t["_flagged"] = flag != ""
    t["_why"] = flag.str.replace(r"ESS [\d.]+ episodes", "ESS", regex=True)

    def why(s: pd.Series) -> str:
        return "; ".join(dict.fromkeys(r for x in s if x for r in x.split("; ")))

    agg = (
        t.groupby(["analysis", "parameter", "estimator"], sort=False, dropna=False)
        .agg(value=("value", "median"), ci_low=("ci_low", "median"),
             ci_high=("ci_high", "median"), draws=("value", "size"),
             n_flagged=("_flagged", "sum"), why=("_why", why))
        .reset_index()
    )
    agg["flagged"] = [f"{k} of {n}" if k else "" for k, n in zip(agg.pop("n_flagged"),
                                                                   agg.pop("draws"), strict=True)]
    agg["why"] = agg.pop("why")
    return agg, int(t["_flagged"].sum())


def permutation_not_run(audit: dict[str, Any]) -> str:
    """Why the audit has no permutation p-value ("" when every policy has one).

    The test runs when ``audit.permutations`` > 0 and at least two groups are published.

    Parameters
    ----------
    audit : dict
        ``audit.json`` (Contract 7).
    """
    pols = list(audit["policies"].values())
    if all(a.get("permutation_p") is not None for a in pols):
        return ""
    published = [g for g, c in pols[0]["rate"].items() if not c.get("suppressed")] if pols else []
    if len(published) < 2:
        why = "fewer than two published groups to permute"
    else:
        why = ("audit.permutations = 0 in the run config; set it, e.g. to 1000, to test "
               "whether the parity gap could arise by chance")
    return f"permutation_p: not run: {why}."


def mediation_sentence(med: dict[str, Any]) -> str:
    """What the run's mediation table compares, on what scale, and why some CIs are missing.

    ``med`` is the run's ``mediation.json`` (Contract 6): the target against the control on the
    held-out episodes, then :meth:`~equicare.causal.MediationResult.caption` (the effects'
    units, the fixed control read as "never" the action set, the estimators' notes), as
    ``equicare mediate`` prints it under its table.
    """
    from equicare.causal._result import MediationResult

    res = MediationResult.from_dict(med)
    return (f"{res.target} against the control {res.control} on {res.n_episodes:,} held-out "
            f"episodes ({res.n_steps:,} transitions), through the manifest's mediators. "
            + res.caption())


def per_stay_rows(med: dict[str, Any]) -> list[dict[str, Any]]:
    """The run report's per-stay rows: one per estimator and effect (Contract 6 ``per_stay``).

    Empty without terminal outcomes (every ``per_stay`` null). An effect left unestimated (an
    end rate outside (0, 1]) has no value; the caption's note says why.
    """
    rows = []
    for est, r in med.get("estimators", {}).items():
        ps = r.get("per_stay") if isinstance(r, dict) else None
        if not isinstance(ps, dict):
            continue
        for eff in ("ide", "ime", "dde", "dme", "total"):
            e = ps.get(eff)
            if isinstance(e, dict):
                ci = e.get("ci") or [None, None]
                rows.append({"estimator": est, "effect": f"{eff} per stay", "value": e["value"],
                             "ci_low": ci[0], "ci_high": ci[1]})
    return rows


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def headline_estimator(result: Mapping[str, Any]) -> str | None:
    """The estimator of the run summary's headline value: DR, else WDR, else FQE.

    One whose estimate lies far outside the range of the observed returns (the result
    JSON's ``out_of_range``) is passed over: DR of -95 for a survival probability headlined
    the report of an ICU panel. None when none is computed and in range.
    """
    return headline_of(result["estimates"], result.get("out_of_range") or [])


#: Share (%) of the target policy's mass on actions practice (almost) never takes above which
#: the run summary calls no comparison with practice established: DR, WDR and FQE value that
#: mass by the Q-model's extrapolation alone (a 500-step AWR on a 5,000-state Garnet panel,
#: 48% unsupported, headlined DR 0.803 against an exact 0.618).
EXTRAPOLATED_PCT = 10.0


def unsupported_share(result: Mapping[str, Any]) -> float | None:
    """The result's support share (%) when its support check warned, else None."""
    sup = result.get("support") or {}
    if not sup.get("warning") or sup.get("share_pct") is None:
        return None
    return float(sup["share_pct"])


def practice_comparison(result: Mapping[str, Any]) -> str | None:
    """The run summary's reading of the learned policy against current practice.

    "above" or "below" only when DR, WDR and FQE (those computed, with a value, in range)
    all put their whole interval on the same side of the observed behaviour value; otherwise
    "not established", saying whether they disagree in sign (on a reviewer's ICU panel FQE
    and WDR put the policy above practice in one unit, where its exact value was below) or
    their intervals reach it, or that :data:`EXTRAPOLATED_PCT` % or more of the policy's mass
    is on actions practice never takes (their intervals do not include the extrapolation's
    error). None when none of them is available.
    """
    beh = float(result["behavior"]["value"])
    far = set(result.get("out_of_range") or [])
    got = {k: result["estimates"][k] for k in HEADLINE_ESTIMATORS
           if k in result["estimates"] and k not in far
           and result["estimates"][k].get("value") is not None}
    if not got:
        return None
    names = ", ".join(k.upper() for k in got)
    share = unsupported_share(result)
    if share is not None and share >= EXTRAPOLATED_PCT:
        return (f"not established: {share:.0f}% of the policy's mass is on actions current "
                f"practice (almost) never takes in the state, which {names} value only by "
                "the Q-model's extrapolation")
    signs = {k: np.sign(float(e["value"]) - beh) for k, e in got.items()}
    if len(set(signs.values())) > 1:
        above = ", ".join(k.upper() for k, v in signs.items() if v > 0)
        below = ", ".join(k.upper() for k, v in signs.items() if v <= 0)
        return f"not established: {above} above, {below} at or below"
    ci = [e.get("ci") or [None, None] for e in got.values()]
    if all(c[0] is not None and c[0] > beh for c in ci):
        return f"above ({names}: every interval above the observed value)"
    if all(c[1] is not None and c[1] < beh for c in ci):
        return f"below ({names}: every interval below the observed value)"
    return f"not established ({names}: an interval reaches the observed value)"


def build_run_report(
    run_dir: str | Path,
    *,
    run_id: str = "",
    config: dict[str, Any] | None = None,
    figure_dir: Path | None = None,
    figure_copies: bool = True,
) -> Report:
    """Assemble the HTML report of a run from the files in ``run_dir``.

    Parameters
    ----------
    run_dir : str or Path
        Artifact folder with ``result.json``, ``audit.json`` and friends.
    run_id : str
    config : dict, optional
        The run config (shown in the summary).
    figure_dir : Path, optional
        Where PNG/SVG copies of the figures go (default ``run_dir/figures``).
    figure_copies : bool
        Write those copies; ``False`` keeps the figures only embedded in the HTML and writes
        nothing anywhere (a report of an archived run written elsewhere).
    """
    d = Path(run_dir)
    fig_dir = None if not figure_copies else figure_dir if figure_dir is not None else (
        d / "figures")
    data = _load(d / "data_summary.json") or {}
    result = _load(d / "result.json")
    audit = _load(d / "audit.json")
    truth = _load(d / "truth.json")
    summary = _load(d / "summary.json") or {}
    algo = (config or {}).get("learner", {}).get("algo", "learned")
    rep = Report(
        title="equicare run report", subtitle=f"run {run_id}" if run_id else "", figure_dir=fig_dir
    )

    rep.section("Run summary")
    kpis: dict[str, str] = {}
    if result:
        kpis["behaviour value (observed)"] = value_text(result['behavior']['value'])
        head = headline_estimator(result)
        if head is not None:
            e = result["estimates"][head]
            share = unsupported_share(result)
            extrap = ("" if share is None or head not in (
                result.get("support") or {}).get("extrapolating_estimators", [head]) else
                f" (extrapolated for the {share:.0f}% of its mass on actions practice never "
                "takes)")
            kpis[f"{algo} value ({head.upper()})"] = (
                f"{value_text(e['value'])} [{value_text(e['ci'][0])}, "
                f"{value_text(e['ci'][1])}]{extrap}")
        versus = practice_comparison(result)
        if versus is not None:
            kpis[f"{algo} against current practice"] = versus
    if truth:
        for k, t in truth.items():
            kpis[f"true value, {k} (simulator)"] = (
                f"{value_text(t['value'])} ± {value_text(1.96 * t['se'])}")
    if audit:
        for p, a in audit["policies"].items():
            label = action_label(audit["action"])
            gap = a["parity_gap_pp"]  # {"suppressed": true}: a group rate of too few members
            kpis[f"{label} parity gap, {p}"] = ("suppressed" if gap.get("suppressed")
                                                else f"{gap['value']:.2f} pp")
    rep.kpis(kpis)
    times = summary.get("stage_seconds")
    if times:
        rep.table(
            pd.DataFrame({"stage": list(times), "seconds": list(times.values())}),
            caption="Stage times",
            n_col=None,
        )

    rep.section("Data")
    if data:
        rows: list[Any] = [
            ("episodes", f"{data['n_episodes']:,}"),
            ("steps", f"{data['n_steps']:,}"),
            ("observed action combinations", f"{data['observed_actions']} of {data['n_actions']}"),
            ("gamma", f"{data['gamma']:g}"),
        ]
        rows += [
            (f"reward '{k}' non-zero", "suppressed (1-10, or all but 1-10)" if v is None
             else f"{v:.2f}% of steps")
            for k, v in data["reward_nonzero_pct"].items()
        ]
        rep.table(pd.DataFrame(rows, columns=["item", "value"]), n_col=None)
        for attr, counts in data.get("groups", {}).items():
            rep.table(
                pd.DataFrame({"group": list(counts), "n_episodes": list(counts.values())}),
                caption=f"Episodes by {attr}",
            )

    if result:
        rep.section("Policy value")
        rep.text(
            f"Evaluated on {result['n_episodes']:,} held-out episodes "
            f"({result['n_steps']:,} steps). Intervals: 95% episode-level bootstrap."
        )
        bm_info = result.get("behavior_model") or {}
        # evaluate's warnings on estimated propensities (the last one streamed only)
        for key in ("floored_warning", "in_sample_warning", "sample_warning"):
            if bm_info.get(key):
                rep.text(bm_info[key], note=True)
        far = [k for k in result.get("out_of_range") or [] if k in result["estimates"]]
        if far:
            rep.text(
                f"{', '.join(far)} lie{'s' if len(far) == 1 else ''} far outside the range of "
                "the observed returns (further beyond it than the range is wide): the "
                "importance weights are extreme, so "
                f"{'this is not a value' if len(far) == 1 else 'these are not values'} of the "
                "policy. The figure's scale leaves them out (marked at its edge) and the "
                "summary above uses "
                + (f"{head.upper()} instead." if head is not None and head not in far
                   else "none of them."),
                note=True,
            )
        weights = weight_checks(result)
        if weights is not None:  # evaluate's LowESSWarning, printed on the terminal only before
            rep.text(weights, note=True)
        rep.figure(
            F.forest_plot(result, truth, algo),
            "forest",
            "Estimates of the learned "
            "policy's value by estimator; the grey square is the behaviour policy's "
            "observed value"
            + ("; dashed lines are the simulator's true values." if truth else "."),
        )
        rows = [
            {
                "estimator": k,
                "value": e["value"],
                "ci_low": (e.get("ci") or [None, None])[0],
                "ci_high": (e.get("ci") or [None, None])[1],
                "se": e.get("se"),
            }
            for k, e in result["estimates"].items()
        ]
        rep.table(pd.DataFrame(rows), n_col=None)
        rep.heading("Effective sample size")
        rep.figure(
            F.ess_plot(result),
            "ess",
            "Kish effective sample size of the importance "
            "weights: near 0% means IS-type estimates rest on a handful of episodes.",
        )
        q = result.get("q_model") or {}
        if q.get("chosen"):
            rep.heading("Q-model (FQE, DR, WDR)")
            rep.text(q_model_sentence(q))
            cands = q.get("candidates") or {}
            if any(v is not None for v in cands.values()):
                bias = q.get("bias") or {}
                rep.table(
                    pd.DataFrame(
                        {
                            "candidate": list(cands),
                            "score (squared bias + variance)": [
                                np.nan if v is None else v for v in cands.values()
                            ],
                            "estimated bias": [
                                np.nan if bias.get(c) is None else bias[c] for c in cands
                            ],
                            "note": [(q.get("skipped") or {}).get(c, "") for c in cands],
                        }
                    ),
                    caption="auto's candidates (lower score is better)",
                    n_col=None,
                )
        sup = result.get("support")
        if sup:
            rep.heading("Support")
            rep.text(
                sup.get("message")
                or "The target policy stays on actions current practice takes.",
                note=bool(sup.get("warning")),
            )
            rep.table(support_frame(sup), n_col=None)
        groups = []
        for attr, levels in result.get("groups", {}).items():
            for lv, g in levels.items():
                row = {"attribute": attr, "group": lv, "n_episodes": g.get("n_episodes")}
                if not g.get("suppressed"):
                    for k, e in g["estimates"].items():  # no value (a reason): "n/a"
                        row[k] = ("n/a" if e.get("value") is None or not e.get("ci") else
                                  f"{value_text(e['value'])} [{value_text(e['ci'][0])}, "
                                  f"{value_text(e['ci'][1])}]")
                    row["behavior"] = value_text(g['behavior']['value'])
                groups.append(row)
        if groups:
            rep.heading("Value by group")
            rep.table(
                pd.DataFrame(groups),
                caption="Per-group estimates with 95% intervals (suppressed: < 11 episodes, or "
                "a cell that would give such a cell back by difference, e.g. a held-out group "
                "whose training half is 1-10 episodes; "
                "n/a: a weighted estimate whose importance weights have an effective sample "
                "size below 11, which would rest on fewer than 11 members' outcomes, or "
                "cannot be computed)",
            )

    sens = d / "sensitivity.csv"
    if sens.is_file():
        rep.section("Sensitivity")
        table = pd.read_csv(sens)
        rep.figure(
            F.sensitivity_plot(table),
            "sensitivity",
            "DR estimate under Q-model shifts, propensity noise (median of the draws) and "
            "truncation thresholds.",
        )
        agg, n_flagged = sensitivity_frame(table)
        if n_flagged:
            rep.text(
                f"{n_flagged} of {len(table)} sensitivity estimates are degenerate (see the "
                "flagged column): outside the range of the logged episode returns, which no "
                "policy staying on the logged actions is expected to leave, or resting on "
                "importance weights with an effective sample size below "
                f"{MIN_EFFECTIVE_EPISODES:g} episodes. They show that the estimator is unstable "
                "under that perturbation, not a value the policy could have.",
                note=True,
            )
        rep.table(
            agg,
            caption="Median over the noise draws (one draw for the other analyses); flagged: "
            "draws whose estimate is degenerate, and why.",
            n_col=None,
        )

    if audit:
        rep.section("Fairness")
        rep.text(f"Audited action: {audit['action']}; groups: {audit['group']}.")
        rep.figure(F.allocation_plot(audit), "allocation", "Rate by group with 95% CIs.")
        rep.figure(F.parity_gap_plot(audit), "parity_gap", "Max-min parity gap with 95% CI.")
        rows = []
        not_run = permutation_not_run(audit)
        for p, a in audit["policies"].items():
            pv = a.get("permutation_p")
            row = {
                "policy": p,
                **{k: "suppressed" if a[k].get("suppressed") else a[k]["value"]
                   for k in ("parity_gap_pp", "parity_ratio")},
                "permutation_p": "not run" if pv is None else pv,
            }
            if "gini" in a and isinstance(a["gini"], dict):
                g_val = a["gini"].get("value")
                row["gini"] = "n/a" if g_val is None else g_val
            rows.append(row)
        rep.table(pd.DataFrame(rows), n_col=None)
        if not_run:
            rep.text(not_run)
        for p, a in audit["policies"].items():
            rep.table(
                audit_group_frame(a),
                caption=f"{p}: allocation, proportional parity and value by group",
            )
            note = withheld_values_note(p, a)
            if note:
                rep.text(note)

    fr = d / "frontier.csv"
    if fr.is_file():
        rep.section("Fairness frontier")
        table = pd.read_csv(fr)
        rep.figure(
            F.frontier_plot(table),
            "frontier",
            "Each point is a policy trained with fairness weight lambda.",
        )
        rep.table(table, n_col=None)

    card = _load(d / "card" / "policy_card.json")
    if card:
        from equicare.report._card import card_frontier_plot

        rep.section("Readable rules (policy card)")
        fid = card["evidence"]["fidelity"]
        val = card["evidence"]["value"]
        key = val.get("estimator_for_frontier", "dr")
        kept = val["improvement_kept"].get(key)
        rep.kpis(
            {
                "rules": str(card["tree"]["n_rules"]),
                "agreement with the learned policy": f"{100 * fid['agreement']:.1f}%",
                f"improvement kept ({key})": "n/a" if kept is None else f"{100 * kept:.0f}%",
            }
        )
        rep.text(
            f"The {algo} policy distilled into a depth-{card['tree']['depth']} tree; the full "
            "policy card (evidence, fairness, disagreement by subgroup, caveats) is "
            "card/policy_card.html in the run folder, the rules as a model folder card/model."
        )
        fair = card["evidence"].get("fairness") or {}
        if fair.get("available") and audit:
            same = fair.get("group") == audit.get("group")
            rep.text(
                f"The card audits {fair.get('group')} on the same held-out episodes"
                + (" as the Fairness section above, so its parity gaps are the ones above; its "
                   "intervals use explain.bootstrap replicates and its group values the card's "
                   f"estimator ({fair.get('estimator')})." if same else
                   f", while the Fairness section above audits {audit.get('group')}: their "
                   "parity gaps differ for that reason."),
                note=not same,
            )
        for r in card["rules"]:
            rep.text(f"{r['rule']}. {r['text']}")
        rep.figure(
            card_frontier_plot(card),
            "card_frontier",
            "Fidelity and estimated value of the rules by number of rules (depths 1-6).",
        )

    med = _load(d / "mediation.json")
    if med:
        rep.section("Mediation")
        rep.text(mediation_sentence(med))
        rows = []
        for est, r in med.get("estimators", {}).items():
            for eff in ("ide", "ime", "dde", "dme", "total"):
                if isinstance(r, dict) and isinstance(r.get(eff), dict):
                    ci = r[eff].get("ci") or [None, None]
                    rows.append(
                        {
                            "estimator": est,
                            "effect": eff,
                            "value": r[eff]["value"],
                            "ci_low": ci[0],
                            "ci_high": ci[1],
                        }
                    )
        rep.table(pd.DataFrame(rows), n_col=None)
        stays = per_stay_rows(med)
        if stays:  # terminal outcomes: the effects per stay, as `equicare mediate` prints them
            from equicare.causal._result import MediationResult

            rep.text(MediationResult.from_dict(med).per_stay_caption() or "")
            rep.table(pd.DataFrame(stays), n_col=None)

    plan = _load(d / "plan.json")
    if plan:
        rep.section("Equitable budget allocation (restless bandits)")
        rep.text(
            f"Domain {plan['domain']}: {plan['n_arms']} arms, budget {plan['budget']} per "
            f"step, horizon {plan['horizon']}, {plan['seeds']} seeds. Mean total reward per "
            "arm by group; Gini over group means; utility loss relative to the utilitarian "
            "Whittle policy (opt)."
        )
        rows = []
        for name, pol in plan["policies"].items():
            row = {
                "policy": name,
                "mean_reward": pol["mean_reward"],
                "gini": pol["gini"],
                "worst_group": pol["worst_group"],
                "utility_loss_vs_opt": pol.get("utility_loss_vs_opt"),
            }
            row.update({f"group {g}": v for g, v in pol["group_mean"].items()})
            rows.append(row)
        rep.table(pd.DataFrame(rows), n_col=None)
        rep.figure(
            F.plan_group_plot(plan),
            "plan_groups",
            "Mean total reward per arm by group "
            "under each allocation policy; the legend gives each policy's Gini.",
        )

    rep.section("Caveats")
    for c in report_caveats(support=bool(result and result.get("support")),
                            sensitivity=sens.is_file()):
        rep.text(c, note=True)
    if config:
        rep.section("Configuration")
        rep.table(config_frame(config), caption="run.toml (optional stages that did not run left "
                  "out)", n_col=None)
    return rep
