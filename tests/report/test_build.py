"""The run report's readable pieces: configuration, support and Q-model sections."""

from __future__ import annotations

import json

import pytest

from equicare.report._build import config_frame, q_model_sentence, support_frame


def test_configuration_is_one_row_per_setting_without_disabled_stages():
    cfg = {"name": "x", "seed": 0, "learner": {"algo": "awr", "n_steps": 500},
           "plan": {"enabled": False, "seeds": 2}, "explain": {"enabled": True, "depth": 3}}
    df = config_frame(cfg)
    assert list(df["setting"]) == ["name", "seed", "learner.algo", "learner.n_steps",
                                   "explain.enabled", "explain.depth"]
    assert list(df["value"])[:3] == ['"x"', "0", '"awr"']


def test_configuration_of_a_users_panel_shows_no_simulator_settings():
    """On a panel of one's own the table showed data.synthetic {} and ope.truth_members 2000
    (no truth stage runs), and the frontier's keys with no lambdas (no frontier ran)."""
    cfg = {"data": {"path": "icu.duckdb", "manifest": "m.toml", "synthetic": {}},
           "ope": {"bootstrap": 500, "truth_members": 2000},
           "frontier": {"lambdas": [], "kind": "parity"}}
    assert list(config_frame(cfg)["setting"]) == ["data.path", "data.manifest",
                                                  "ope.bootstrap"]
    sim = {"data": {"path": "", "manifest": "", "synthetic": {"members": 100}},
           "ope": {"truth_members": 2000}, "frontier": {"lambdas": [0, 1], "kind": "parity"}}
    assert list(config_frame(sim)["setting"]) == [
        "data.path", "data.manifest", "data.synthetic", "ope.truth_members",
        "frontier.lambdas", "frontier.kind"]


def test_support_reads_as_items_not_json():
    sup = {"share_pct": 27.58, "threshold": 0.001, "per_episode_pct": {"median": 37.8,
           "p90": 70.8, "p_top11": 99.7}, "episodes_over_warn_pct": 99.8,
           "biased_estimators": ["is", "wis"], "extrapolating_estimators": [],
           "message": "The target policy puts 27.58% ...", "warning": True}
    df = support_frame(sup)
    got = dict(zip(df["item"], df["value"], strict=True))
    assert got["target mass on unsupported actions"] == "27.58%"
    assert got["per episode: median / 90th percentile / at least 11 episodes above"] == (
        "37.8% / 70.8% / 99.7%")
    assert got["estimators biased by it"] == "is, wis"
    assert got["estimators extrapolating with the Q-model"] == "none"


def test_q_model_sentence_says_how_auto_chose():
    fixed = q_model_sentence({"chosen": "linear", "solver": "fixed_point"})
    assert fixed == "Q-model: linear."
    auto = q_model_sentence({"chosen": "tabular_stationary[state]", "n_folds": 2,
                             "reference": "tabular_stationary[state]",
                             "cell_choice": {"dropped": ["site"], "columns": ["state"]}})
    assert "chosen by auto: 2-fold cross-fitted" in auto
    assert "is the reference" in auto and "pool over site" in auto
    switched = q_model_sentence({"chosen": "tabular_window", "n_folds": 2,
                                 "reference": "tabular_stationary",
                                 "replaced": {"criterion_choice": "tabular_stationary"},
                                 "censoring": {"switched_to_window": True,
                                               "difference_pct": -6.7,
                                               "censored_episodes_pct": 17.5}})
    assert "replaced tabular_stationary" in switched and "-6.7%" in switched
    assert "17.5% of the episodes censored" in switched and "is the reference" not in switched


def test_audit_group_cells_suppressed_by_complement_are_not_labelled_under_11():
    """b (12 episodes) is suppressed only to protect c (4): its count is not '<11'."""
    from equicare.report._build import audit_group_frame
    from equicare.report._html import suppress_small_cells

    sup = {"suppressed": True}
    pol = {"rate": {"a": {"value": 0.2, "n_episodes": 30}, "b": sup, "c": sup},
           "value_by_group": {"a": {"value": 1.0, "n_episodes": 30}, "b": sup, "c": sup}}
    shown = suppress_small_cells(audit_group_frame(pol)).set_index("group")
    assert shown.loc["a", "n_episodes"] == 30
    assert list(shown.loc[["b", "c"], "n_episodes"]) == ["suppressed", "suppressed"]
    assert "<11" not in shown.to_string()


def test_audit_group_proportional_parity_withheld_for_a_small_need_cell_reads_suppressed():
    """a is published but has too few episodes with need: its proportional parity is not shown
    (it was a blank, as if need were unknown), its rate is."""
    from equicare.report._build import audit_group_frame

    sup = {"suppressed": True}
    pol = {"rate": {"a": {"value": 0.2, "n_episodes": 30}, "b": {"value": 0.3, "n_episodes": 40},
                    "c": sup},
           "proportional_parity": {"a": sup, "b": {"value": 1.1, "ci": [0.9, 1.3]}, "c": sup}}
    shown = audit_group_frame(pol).set_index("group")
    assert shown.loc["a", "proportional_parity"] == "suppressed"
    assert shown.loc["b", "proportional_parity"] == 1.1
    assert shown.loc["a", "rate"] == 0.2
    assert shown.loc["c", "proportional_parity"] != shown.loc["c", "proportional_parity"]  # NaN


def test_audit_group_rate_of_too_few_members_reads_suppressed_and_keeps_the_group_row():
    """b is published but fewer than 11 of its members got the action: its rate reads
    suppressed, its episode count and value stay (they were blanked with the whole row)."""
    from equicare.report._build import audit_group_frame
    from equicare.report._html import suppress_small_cells

    sup = {"suppressed": True}
    pol = {"rate": {"a": {"value": 0.0, "n_episodes": 30}, "b": {**sup, "n_episodes": 40},
                    "c": sup},
           "proportional_parity": {"a": {"value": 0.0, "ci": [0.0, 0.0]}, "b": sup, "c": sup},
           "value_by_group": {"a": {"value": 1.0}, "b": {"value": 0.8}, "c": sup}}
    shown = suppress_small_cells(audit_group_frame(pol)).set_index("group")
    assert shown.loc["b", "n_episodes"] == 40 and shown.loc["b", "value"] == 0.8
    assert shown.loc["b", "rate"] == "suppressed" == shown.loc["b", "proportional_parity"]
    assert shown.loc["c", "n_episodes"] == "suppressed"


def test_sensitivity_table_is_median_of_draws_and_says_which_are_degenerate(tmp_path):
    """An exploding noise draw neither drags the shown value nor passes silently: the table
    shows medians, counts the flagged draws and the section opens with a caveat."""
    import pandas as pd

    from equicare.report._build import build_run_report, sensitivity_frame

    out = "outside the range of the logged episode returns"
    rows = [("baseline", None, 0, 0.74, ""), ("propensity_noise", 0.5, 0, 0.70, ""),
            ("propensity_noise", 0.5, 1, -6.6e6, f"{out}; ESS 1.0 episodes < 10"),
            ("propensity_noise", 0.5, 2, 0.75, "ESS 8.7 episodes < 10")]
    table = pd.DataFrame([{"analysis": a, "parameter": p, "draw": d, "estimator": "dr",
                           "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "se": 0.05,
                           "ess_pct": 20.0, "shift_from_baseline": v - 0.74, "flag": f}
                          for a, p, d, v, f in rows])
    agg, n = sensitivity_frame(table)
    assert n == 2
    noisy = agg[agg.analysis == "propensity_noise"].iloc[0]
    assert noisy.value == 0.70 and noisy.flagged == "2 of 3"
    assert noisy.why == f"{out}; ESS < 10"
    assert agg[agg.analysis == "baseline"].iloc[0].flagged == ""
    table.to_csv(tmp_path / "sensitivity.csv", index=False)
    page = build_run_report(tmp_path, figure_copies=False).render()
    assert "2 of 4 sensitivity estimates are degenerate" in page
    assert "-6.6e+06" not in page
    table.assign(flag="").to_csv(tmp_path / "clean.csv", index=False)  # reads back as NaN
    assert sensitivity_frame(pd.read_csv(tmp_path / "clean.csv"))[1] == 0


def test_a_permutation_test_that_did_not_run_says_so_instead_of_none(tmp_path):
    """audit.permutations = 0: the p-value cell reads 'not run' and a line says why."""
    import json

    from equicare.report._build import build_run_report

    def pol(p):
        return {"rate": {"a": {"value": 0.2, "n_episodes": 30}, "b": {"value": 0.3,
                "n_episodes": 40}}, "parity_gap_pp": {"value": 10.0},
                "parity_ratio": {"value": 0.67}, "permutation_p": p,
                "n_permutations": 0 if p is None else 99}

    audit = {"group": "sex", "action": "modality=phone", "policies": {"behavior": pol(None),
                                                                       "bc": pol(None)}}
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    page = build_run_report(tmp_path, figure_copies=False).render()
    assert "<td>None</td>" not in page and "<td>not run</td>" in page
    assert "permutation_p: not run: audit.permutations = 0 in the run config;" in page
    audit["policies"] = {"behavior": pol(0.04), "bc": pol(0.5)}
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    page = build_run_report(tmp_path, figure_copies=False).render()
    assert "<td>0.04</td>" in page and "not run" not in page
    from equicare.report._build import permutation_not_run

    one = pol(None)
    one["rate"]["b"] = {"suppressed": True}
    assert permutation_not_run({"policies": {"bc": one}}) == (
        "permutation_p: not run: fewer than two published groups to permute.")


def test_caveats_point_only_at_sections_the_report_has(tmp_path):
    """No 'sensitivity section' without one, no 'support line below' (it is above), and a
    sweep report (neither section) says where to find them."""
    import html
    import json

    import pandas as pd

    from equicare.pipeline._sweep import _sweep_report
    from equicare.report._build import build_run_report

    def caveats(page: str) -> str:
        return html.unescape(page[page.rindex(">Caveats<"):])

    result = {"n_episodes": 40, "n_steps": 200, "behavior": {"value": 1.0, "ci": [0.9, 1.1]},
              "estimates": {"dr": {"value": 1.2, "ci": [1.0, 1.4], "se": 0.1}},
              "ess": {"trajectory_pct": 50.0, "per_decision_pct": 60.0}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    bare = caveats(build_run_report(tmp_path, figure_copies=False).render())
    assert "below" not in bare and "section shows" not in bare
    assert "with ope.sensitivity = true the run report shows how far" in bare
    assert "equicare evaluate reports how much" in bare
    result["support"] = {"share_pct": 1.0, "threshold": 0.001, "per_episode_pct": {}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    pd.DataFrame([{"analysis": "baseline", "parameter": None, "draw": 0, "estimator": "dr",
                   "value": 1.2, "ci_low": 1.0, "ci_high": 1.4, "se": 0.1, "ess_pct": 50.0,
                   "shift_from_baseline": 0.0, "flag": ""}]).to_csv(
        tmp_path / "sensitivity.csv", index=False)
    full = build_run_report(tmp_path, figure_copies=False).render()
    assert ">Sensitivity<" in full and ">Support<" in full
    assert "the Support table under Policy value above says how much" in caveats(full)
    assert "the Sensitivity section above shows how far" in caveats(full)
    sweep = caveats(_sweep_report(pd.DataFrame({"learner.n_steps": [20]}), ["learner.n_steps"],
                                  tmp_path / "sweep", "x", {"learner.n_steps": [20]}
                                  ).read_text())
    assert "below" not in sweep and "section shows" not in sweep
    assert "equicare run of a grid point's config with ope.sensitivity = true" in sweep


def test_an_estimate_far_outside_the_returns_is_neither_the_headline_nor_the_figure_scale(
        tmp_path):
    """An ICU panel (survival in [0, 1], estimated propensities): DR -95 headlined the run
    summary ("awr value (DR) -94.960") and IS 700 squeezed every other estimate of the forest
    plot into one point. The result JSON's out_of_range names them: the headline takes the
    next in-range estimator (WDR), a note says why, and the figure's axis spans the in-range
    ones, the others written at its edge."""
    import html
    import json

    from equicare.report import _figures as F
    from equicare.report._build import build_run_report, headline_estimator

    result = {"n_episodes": 1501, "n_steps": 18215, "gamma": 1.0,
              "behavior": {"value": 0.809, "ci": [0.791, 0.829]},
              "estimates": {"is": {"value": 700.4, "ci": [43.2, 1699.6], "se": 468.3},
                            "fqe": {"value": 0.8145, "ci": [0.718, 0.911], "se": 0.014},
                            "dr": {"value": -94.96, "ci": [-503.0, 313.1], "se": 105.9},
                            "wdr": {"value": 0.755, "ci": [0.649, 0.861], "se": 0.139}},
              "ess": {"trajectory_pct": 0.09, "per_decision_pct": 7.9},
              "out_of_range": ["is", "dr"]}
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, config={"learner": {"algo": "awr"}},
                                          figure_copies=False).render())
    assert headline_estimator(result) == "wdr"
    assert "awr value (WDR)" in page and "awr value (DR)" not in page
    assert "-94.960" not in page
    assert ("is, dr lie far outside the range of the observed returns (further beyond it than "
            "the range is wide)") in page
    assert "the summary above uses WDR instead" in page
    fig = F.forest_plot(result, None, "awr")
    lo, hi = fig.axes[0].get_xlim()
    assert -0.1 < lo < 0.65 and 0.9 < hi < 1.1  # the in-range estimates and intervals
    said = [t.get_text() for t in fig.axes[0].texts]
    assert "700: off scale, not a value" in said and "-95: off scale, not a value" in said
    result.pop("out_of_range")  # an older result JSON: DR as before
    assert headline_estimator(result) == "dr"


def test_a_withheld_group_value_reads_n_a_with_its_reason_not_a_blank_cell(tmp_path):
    """The audit withholds a group value whose importance weights' ESS is below 11 (value
    null, with a reason); the Fairness table showed an empty cell and an empty Gini, with no
    word why. They read n/a, and a line under the table gives the reason."""
    import html
    import json

    why = ("not published: the group's importance weights have an effective sample size "
           "below 11 episodes")
    cell = {"value": None, "ci": None, "reason": why, "n_episodes": 53}
    gap = {"value": 1.02, "ci": [0.0, 1.3]}
    pol = {"rate": {"a": {"value": 0.08, "n_episodes": 53}, "b": {"value": 0.09,
                                                               "n_episodes": 60}},
           "value_by_group": {"a": cell, "b": {**cell, "n_episodes": 60}},
           "parity_gap_pp": gap, "parity_ratio": {"value": 0.9, "ci": [0.8, 1.0]},
           "permutation_p": 0.5, "gini": {"value": None, "ci": None, "reason": "fewer than 2"}}
    beh = {**pol, "value_by_group": {"a": {"value": 0.849, "ci": [0.8, 0.9], "n_episodes": 53},
                                     "b": {"value": 0.818, "ci": [0.8, 0.9], "n_episodes": 60}},
           "gini": {"value": 0.015, "ci": [0.0, 0.03]}}
    audit = {"group": "race", "action": "treatment=vasopressor_high", "n_episodes": 113,
             "policies": {"behavior": beh, "awr": pol}}
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    page = html.unescape(build_run_report_page(tmp_path))
    awr = page[page.index("awr: allocation"):]
    awr = awr[:awr.index("</table>")]
    assert awr.count("<td>n/a</td>") == 2 and "<td></td>" not in awr
    assert f"awr: the value of 2 groups reads n/a ({why})." in page
    assert "behavior: the value of" not in page
    summary = page[page.index("<th>gini</th>"):]
    assert "<td>n/a</td>" in summary[:summary.index("</table>")]


def build_run_report_page(folder):
    from equicare.report._build import build_run_report

    return build_run_report(folder, figure_copies=False).render()


def test_a_sweep_point_far_outside_the_returns_is_off_the_heatmap_scale(tmp_path):
    """ICU panel sweep: DR 3.9e5 and 2.5e4 at two points (survival in [0, 1]) set the DR
    heatmap's colour scale, so the in-range points read as one colour, with no word that
    those were not values. They are grey cells reading 'off scale', the colour scale spans
    the others, and a note says why."""
    import html

    import pandas as pd

    from equicare.pipeline._sweep import _sweep_report
    from equicare.report import _figures as F

    table = pd.DataFrame({"learner.algo": ["bc", "bc", "cql", "cql"],
                          "learner.n_steps": [500, 1500, 500, 1500],
                          "dr": [695.9, 2.481e4, 0.31, 0.4966],
                          "wdr": [0.9695, 0.9168, 0.4646, 0.8184],
                          "out_of_range": ["is,pdis,dr", "is,pdis,dr", "", "is,pdis"]})
    t = table.assign(_far=table["out_of_range"].str.split(",").apply(lambda f: "dr" in f))
    fig = F.sweep_heatmap(t, "learner.algo", "learner.n_steps", "dr", far="_far")
    im = fig.axes[0].images[0]
    assert im.get_clim() == (0.31, 0.4966)  # the in-range points only
    said = [x.get_text() for x in fig.axes[0].texts]
    assert said.count("off scale") == 0 and sum("off scale" in s for s in said) == 2
    assert "696\noff scale" in said and "0.31" in said
    page = html.unescape(_sweep_report(table, ["learner.algo", "learner.n_steps"],
                                       tmp_path, "x", {}).read_text())
    assert ("Some points' dr lie far outside the range of the observed returns (column "
            "out_of_range)") in page


def test_the_summary_says_against_current_practice_only_what_every_estimator_supports():
    """A reviewer's ICU panel: FQE and WDR put the learned policy above current practice in a
    unit where its exact value was below. The summary says "above"/"below" only when DR, WDR
    and FQE (in range) all put their whole interval on one side of the observed value."""
    from equicare.report._build import practice_comparison

    def res(**est):
        return {"behavior": {"value": 0.80}, "out_of_range": ["dr"],
                "estimates": {k: {"value": v, "ci": ci} for k, (v, ci) in est.items()}}

    split = practice_comparison(res(fqe=(0.81, [0.79, 0.83]), wdr=(0.76, [0.65, 0.86])))
    assert split == "not established: FQE above, WDR at or below"
    assert practice_comparison(res(fqe=(0.85, [0.82, 0.88]), wdr=(0.86, [0.81, 0.91]),
                                   dr=(9e6, [0, 1]))).startswith("above (WDR, FQE")
    assert practice_comparison(res(wdr=(0.70, [0.65, 0.75]))).startswith("below (WDR")
    assert practice_comparison(res(wdr=(0.82, [0.78, 0.86]))).startswith("not established (WDR")
    assert practice_comparison(res(dr=(9e6, [0, 1]))) is None  # only an off-range estimate


def test_the_summary_establishes_nothing_on_mostly_unsupported_mass():
    """A 500-step AWR on a 5,000-state Garnet panel put 48% of its mass on actions the
    clinicians never take; the run report headlined DR 0.803 [..] with no word of it (exact
    value 0.618). Its headline now says the value is extrapolated for that share, and from 10%
    on the summary calls no comparison with practice established."""
    from equicare.report._build import EXTRAPOLATED_PCT, practice_comparison

    def res(share, warning=True):
        return {"behavior": {"value": 0.80}, "out_of_range": [],
                "estimates": {"dr": {"value": 0.86, "ci": [0.84, 0.88]}},
                "support": {"share_pct": share, "warning": warning,
                            "extrapolating_estimators": ["fqe", "dr", "wdr"]}}

    assert practice_comparison(res(48.0)).startswith("not established: 48% of the policy's")
    assert practice_comparison(res(EXTRAPOLATED_PCT)).startswith("not established")
    assert practice_comparison(res(5.0)).startswith("above (DR")
    assert practice_comparison(res(48.0, warning=False)).startswith("above (DR")
    assert practice_comparison({k: v for k, v in res(48.0).items() if k != "support"}
                               ).startswith("above (DR")



def test_the_headline_says_its_value_is_extrapolated(tmp_path):
    import html
    import json

    from equicare.report._build import build_run_report

    result = {"n_episodes": 300, "n_steps": 9000, "gamma": 1.0,
              "behavior": {"value": 0.80, "ci": [0.78, 0.82]},
              "estimates": {"dr": {"value": 0.803, "ci": [0.779, 0.830], "se": 0.013}},
              "ess": {"trajectory_pct": 5.0, "per_decision_pct": 20.0}, "out_of_range": [],
              "support": {"share_pct": 48.2, "warning": True, "threshold": 0.001,
                          "extrapolating_estimators": ["fqe", "dr", "wdr"]}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, config={"learner": {"algo": "awr"}},
                                          figure_copies=False).render())
    assert ("0.803 [0.779, 0.830] (extrapolated for the 48% of its mass on actions practice "
            "never takes)") in page
    assert "not established: 48% of the policy's mass" in page
    result["support"]["warning"] = False
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, config={"learner": {"algo": "awr"}},
                                          figure_copies=False).render())
    assert "extrapolated for" not in page


def test_parity_gap_figure_says_suppressed_where_a_gap_is_withheld():
    """The behaviour's gap rests on a rate of 5 members (the privacy audit's run): its bar was
    empty and unlabelled, reading as a gap of 0; it says suppressed, awr's bar is drawn."""
    from equicare.report import _figures as F

    audit = {"action": "urgency=urgent", "policies": {
        "behavior": {"parity_gap_pp": {"suppressed": True}},
        "awr": {"parity_gap_pp": {"value": 0.0317, "ci": [0.0, 0.0333]}}}}
    fig = F.parity_gap_plot(audit)
    said = [t.get_text() for t in fig.axes[0].texts]
    assert len(said) == 1 and said[0].strip().startswith("suppressed")
    assert [round(b.get_width(), 4) for b in fig.axes[0].patches][1] == 0.0317


@pytest.mark.parametrize(("key", "msg"), [
    ("floored_warning", "The propensities were not logged but estimated, and the behaviour model "
                        "gives the action actually taken a probability below its floor 0.001 on "
                        "383 logged rows"),
    ("in_sample_warning", "is uses propensities estimated in-sample, and the trajectory "
                          "importance weights average 0.488 (over 40 episodes")])
def test_estimated_propensity_warnings_are_a_note_under_policy_value(tmp_path, key, msg):
    """Estimated propensities floored on logged rows, or in-sample under plain IS (evaluate's
    warnings, kept in the result JSON's behavior_model.floored_warning / in_sample_warning):
    the run report says them under Policy value; the ICU-shaped panel's run printed the first
    on the terminal only."""
    import html
    import json

    from equicare.report._build import build_run_report

    result = {"n_episodes": 40, "n_steps": 200, "behavior": {"value": 1.0, "ci": [0.9, 1.1]},
              "estimates": {"dr": {"value": 1.2, "ci": [1.0, 1.4], "se": 0.1}},
              "ess": {"trajectory_pct": 50.0, "per_decision_pct": 60.0},
              "behavior_model": {"n_floored": 383, key: msg}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, figure_copies=False).render())
    assert msg in page[page.index(">Policy value<"):]
    result["behavior_model"][key] = None
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, figure_copies=False).render())
    assert msg[:40] not in page


def test_mediation_section_says_what_is_compared_and_on_what_scale():
    """A care run's report showed a bare table (dm ide -15.53, ...): no policy or control, no
    word that a0=0 meant "never any contact" nor that effects are long-run average rewards per
    step (not the discounted returns of Policy value), and empty CI cells with no reason,
    while `equicare mediate` prints all of it under its table."""
    from equicare.causal._result import (
        EFFECT_KEYS,
        MEDIATION_UNITS,
        EffectEstimate,
        EstimatorResult,
        MediationResult,
    )
    from equicare.report._build import mediation_sentence

    note = "no standard error or CI: a continuous mediator is not batched; use mr's"
    res = MediationResult(
        n_episodes=1983, n_steps=50109, control="a0=0", target="awr",
        action="modality=phone|text|home_visit",
        estimators={"dm": EstimatorResult({k: EffectEstimate(0.1) for k in EFFECT_KEYS}, {},
                                          note),
                    "mr": EstimatorResult({k: EffectEstimate(0.1, 0.01, (0.08, 0.12))
                                           for k in EFFECT_KEYS}, {})})
    med = json.loads(res.to_json())  # the run folder's mediation.json
    assert med["action"] == "modality=phone|text|home_visit"
    text = mediation_sentence(med)
    assert text.startswith("awr against the control a0=0 on 1,983 held-out episodes "
                           "(50,109 transitions)")
    assert MEDIATION_UNITS + " Control a0=0: never modality=phone|text|home_visit." in text
    assert f"dm: {note}." in text and "mr:" not in text


def test_terminal_outcomes_put_the_effects_per_stay_in_the_report(tmp_path):
    """`equicare mediate` printed the per-stay table for terminal outcomes; the run report
    showed the per-step effects alone."""
    import html

    from equicare.causal._result import (
        EFFECT_KEYS,
        EffectEstimate,
        EstimatorResult,
        MediationResult,
        PerStay,
    )
    from equicare.report._build import build_run_report, per_stay_rows

    stays = PerStay({k: EffectEstimate(-0.0173, 0.004, (-0.025, -0.0095)) for k in EFFECT_KEYS},
                    {"pi_e": 0.855, "pi_e_a0": 0.86, "pi_e_a0star": 0.861, "G": 0.87,
                     "a0": 0.872}, {"pi_e": 0.183, "G": 0.169, "a0": 0.176})
    res = MediationResult(
        n_episodes=3000, n_steps=41000, control="a0=0", target="awr", n_renewed=2900,
        estimators={"mr": EstimatorResult({k: EffectEstimate(-0.003, 0.001, (-0.005, -0.001))
                                           for k in EFFECT_KEYS}, {}, per_stay=stays),
                    "baseline": EstimatorResult({k: EffectEstimate(0.1) for k in EFFECT_KEYS},
                                                {})})
    med = json.loads(res.to_json())
    rows = per_stay_rows(med)
    assert [r["effect"] for r in rows] == [f"{k} per stay" for k in EFFECT_KEYS]
    assert {r["estimator"] for r in rows} == {"mr"} and rows[0]["ci_low"] == -0.025
    (tmp_path / "mediation.json").write_text(json.dumps(med))
    page = html.unescape(build_run_report(tmp_path, figure_copies=False).render())
    assert "ide per stay" in page and "-0.0173" in page
    assert res.per_stay_caption()[:60] in page
    assert per_stay_rows(json.loads(MediationResult(
        n_episodes=3000, n_steps=41000, control="a0=0", target="awr",
        estimators={"mr": EstimatorResult({k: EffectEstimate(0.1) for k in EFFECT_KEYS}, {})}
    ).to_json())) == []


def test_the_weight_checks_of_evaluate_are_a_note_under_policy_value(tmp_path):
    """A run on a Medicaid cost panel: IS -1,740 [-3,098, -383] against a truth of -5,603,
    its weights averaging 0.68 (SE 0.054) with Pareto k 1.01. evaluate warned on the terminal;
    the report's Policy value section said nothing."""
    import html
    import json

    from equicare.report._build import build_run_report

    result = {"n_episodes": 10000, "n_steps": 65582,
              "behavior": {"value": -5863.0, "ci": [-6500.0, -5300.0]},
              "estimates": {"is": {"value": -1740.2, "ci": [-3097.6, -382.9], "se": 484.6},
                            "wis": {"value": -2553.8, "ci": [-4657.1, -450.4], "se": 705.6},
                            "dr": {"value": -5171.2, "ci": [-6910.9, -3431.5], "se": 860.6}},
              "ess": {"trajectory": 155.2, "trajectory_pct": 1.55, "per_decision": 170.0,
                      "per_decision_pct": 1.7, "trajectory_weight_mean": 0.681,
                      "trajectory_weight_mean_se": 0.054, "trajectory_weight_pareto_k": 1.01},
              "settings": {"propensity_source": "logged"}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, figure_copies=False).render())
    section = page[page.index(">Policy value<"):]
    assert ("The is and wis values rest on trajectory importance weights that average 0.681 "
            "(standard error 0.054) over 10,000 episodes") in section
    assert ("The is and wis values rest on trajectory importance weights with a heavy tail: "
            "Pareto k 1.01 over the largest 300 of 10,000 episodes") in section
    for k in ("trajectory_weight_mean", "trajectory_weight_pareto_k"):
        result["ess"][k] = None
    (tmp_path / "result.json").write_text(json.dumps(result))
    page = html.unescape(build_run_report(tmp_path, figure_copies=False).render())
    assert "heavy tail" not in page and "average exactly 1" not in page
