"""The policy card page: content, small-cell suppression, atomic folder writes, Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from equicare.explain import ExplainConfig, explain_policy
from equicare.report import build_card_report, write_card
from tests.explain import tree_sim


@pytest.fixture(scope="module")
def card():
    train, test = tree_sim.generate(200, seed=20), tree_sim.generate(150, seed=21)
    cfg = ExplainConfig(bootstrap=30, frontier_bootstrap=10, depths=(1, 2, 3))
    return explain_policy(train, tree_sim.NoisyExpert(), cfg, test=test,
                          source={"algo": "expert", "path": "models/expert"}, random_state=0)


@pytest.fixture(scope="module")
def exc_card():
    """Exception rules with a usual-care leaf: the source departs from practice only where
    x1 > 0.6."""
    from tests.explain.test_distill import _HalfExpert

    train, test = tree_sim.generate(200, seed=22), tree_sim.generate(150, seed=23)
    cfg = ExplainConfig(bootstrap=30, frontier_bootstrap=10, depths=(1, 2))
    return explain_policy(train, _HalfExpert(), cfg, test=test, random_state=0)


def test_page_of_exception_rules(exc_card):
    d = exc_card.to_dict()
    assert d["data"]["mode"] == "exceptions" and d["data"]["usual_care_model"] == "tree"
    assert d["rules"][-1]["text"] == "otherwise: as current practice"
    assert d["tree"]["n_rules"] == len(d["rules"])
    html = build_card_report(d).render()
    assert "otherwise: as current practice" in html and "Exception rules" in html
    assert "a tree of the logged actions" in html and ">nan<" not in html


def test_page_holds_rules_evidence_frontier_and_caveats(card):
    html = build_card_report(card.to_dict()).render()
    for needle in ("Rules in plain language", "Evidence by policy", "Size, fidelity and value",
                   "Where the rules and the source disagree", "Caveats",
                   "data:image/png;base64", "distilled from expert (models/expert)",
                   "current practice"):
        assert needle in html, needle
    for r in card.rules:
        assert r["then"] in html
    assert re.search(r"x1 &gt; 0\.(6|59)", html)  # rule text is escaped
    assert html.count("<table") >= 4


def test_the_rules_value_has_one_interval_on_the_page(card):
    """Every frontier row whose tree is the card's rules shows the Evidence estimate and
    interval (they were re-estimated with the frontier's fewer replicates: 3.51 [-1.49, 8.51]
    in Evidence vs [-1.47, 8.48] in the frontier table on one page)."""
    d = card.to_dict()
    rules = d["evidence"]["value"]["rules"]["dr"]
    own = [r for r in d["frontier"] if r["card_rules"]]
    assert d["settings"]["depth"] in {r["depth"] for r in own}
    for r in d["frontier"]:
        same = r["card_rules"]
        assert (r["value"] == rules["value"] and r["ci"] == rules["ci"]) == same, r
        assert r["bootstrap"] == (30 if same else 10)
    html = build_card_report(d).render()
    depths = ", ".join(str(r["depth"]) for r in own)
    word = "Depths" if len(own) > 1 else "Depth"
    assert (f"{word} {depths}, the card&#x27;s rules: the Evidence estimate and interval (30 "
            "bootstrap replicates); the other depths: 10 replicates") in html


def test_small_cells_are_suppressed_on_the_page(card):
    d = card.to_dict()
    d["disagreement"] = [{"attribute": "group", "group": "tiny", "n_episodes": 4,
                          "agreement": 0.123456, "tv": 0.654321}]
    html = build_card_report(d).render()
    assert "suppressed" in html and "0.654" not in html


def test_write_card_is_atomic_and_refuses_to_overwrite(card, tmp_path):
    out = tmp_path / "card"
    files = write_card(card, out)
    assert json.loads(files["json"].read_text())["format"] == "equicare-policy-card"
    assert files["rules"].read_text().startswith("1. ")
    assert (files["model"] / "config.json").is_file()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_card(card, out)
    write_card(card, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card"]
    assert sorted(p.name for p in out.iterdir()) == ["model", "policy_card.html",
                                                     "policy_card.json", "rules.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        write_card(card, tmp_path / "file", overwrite=True)


@pytest.mark.browser
@pytest.mark.parametrize("which", ["card", "exc_card"])
def test_card_renders_in_chromium(which, request, tmp_path):
    card = request.getfixturevalue(which)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed; `make test-browser` installs Debian's chromium.")
    files = write_card(card, tmp_path / "card")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    out = subprocess.run([chromium, *flags, "--window-size=1280,3000", f"--screenshot={shot}",
                          files["html"].as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 30_000, out.stderr[-2000:]
    dom = subprocess.run([chromium, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom",
                          files["html"].as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<img") >= 1 and dom.stdout.count("<table") >= 4
    assert "Rules in plain language" in dom.stdout
    errors = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and "ERROR" in ln]
    assert not errors, errors


def test_force_replaces_only_a_card_folder(card, tmp_path):
    """A non-empty folder that is not a card (a panel, a manifest) is never replaced."""
    out = tmp_path / "data"
    out.mkdir()
    (out / "panel.parquet").write_text("precious")
    (out / "policies").mkdir()
    with pytest.raises(FileExistsError, match="is not a policy card folder"):
        write_card(card, out, overwrite=True)
    assert (out / "panel.parquet").read_text() == "precious" and (out / "policies").is_dir()
    # a card with a stray user file is not a card either
    out2 = tmp_path / "card"
    write_card(card, out2)
    (out2 / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds notes\.txt"):
        write_card(card, out2, overwrite=True)
    assert (out2 / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card", "data"]


def test_the_current_directory_is_refused(card, tmp_path, monkeypatch):
    from equicare.exceptions import InvalidParameterError

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", here, tmp_path):
        with pytest.raises(InvalidParameterError, match="current directory"):
            write_card(card, out, overwrite=True)
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    write_card(card, "card")  # a folder inside the current directory is fine
    assert (here / "card" / "policy_card.json").is_file()


def test_an_estimate_without_a_value_reads_n_a(card):
    """WIS with every weight 0 is null with a reason in the card JSON: the page says "n/a"
    (not 0 [0, 0]) and the frontier plot leaves a gap."""
    import copy

    d = copy.deepcopy(card.to_dict())
    why = "every episode's importance weight is 0"
    null = {"value": None, "ci": None, "se": None, "n_episodes": 150, "reason": why}
    d["evidence"]["value"]["rules"]["wis"] = dict(null)
    d["evidence"]["value"]["source"]["wis"] = dict(null)
    for r in d["frontier"]:
        r.update({"estimator": "wis", "value": None, "ci": [None, None], "reason": why})
    html = build_card_report(d).render()
    table = html.split("Evidence by policy")[0].split("<table>")[-1]
    assert "n/a" in html and "0 [0, 0]" not in html
    rows = re.findall(r"<tr><td>(rules|expert)</td><td>([^<]*)</td>", html)
    assert rows and all(v == "n/a" for _, v in rows), (rows, table[:200])


def test_disagreement_counts_are_integers(card):
    """Episode counts print as integers (not 25.000) even with a suppressed row (None) in the
    column; the suppressed row reads "suppressed"."""
    d = card.to_dict()
    d["disagreement"] = [
        {"attribute": "group", "group": "g1", "n_episodes": 25, "agreement": 0.9, "tv": 0.2},
        {"attribute": "(suppressed)", "group": "2 subgroups with fewer than 11 episodes",
         "suppressed": True, "n_episodes": None}]
    html = build_card_report(d).render()
    part = html.split("<h2>Where the rules and the source disagree</h2>")[1].split("</table>")[0]
    assert "<td>25</td>" in part and "25.000" not in part
    assert "<td>0.900</td>" in part and "<td>0.200</td>" in part
    assert re.search(r"fewer than 11 episodes</td><td>suppressed</td>", part)


def test_a_rule_of_few_held_out_episodes_reads_n_a(card):
    """A rule whose held-out share and agreement are suppressed (fewer than 11 held-out
    episodes) shows n/a with the reason on the page, not a number."""
    import copy

    from equicare.explain._evidence import held_out_reason

    d = copy.deepcopy(card.to_dict())
    r = d["rules"][-1]
    r.update({"test_share": None, "test_agreement": None,
              "test_suppressed": held_out_reason(11)})
    html = build_card_report(d).render()
    rules_table = html.split("Rules in plain language")[1].split("</table>")[0]
    assert re.search(rf"<td>{re.escape(r['then'])}</td>.*?<td>n/a</td>", rules_table, re.S)
    assert f"rule {r['rule']}: n/a, fewer than 11 held-out episodes" in html


def test_page_says_what_p_is(card, exc_card):
    """p is the rules' own probability, fitted on rows weighted by what the choice is worth
    (exception rules: only the rows where the source departs from practice). On a Garnet card
    AWR's rule "if severity <= -2.365 and state is not s009 then action=15 (p=1.00)" had a
    held-out agreement of 0.10 (the source chose 15 on 11% of its fitting rows): the page must
    not call p "the share of those rows where the source policy made that choice"."""
    import html as html_mod

    from equicare.report._card import P_MEANING_EXCEPTIONS, P_MEANING_IMITATE

    imitate = card.to_dict()
    imitate["data"] = {**imitate["data"], "mode": "imitate"}
    for d, meaning in ((card.to_dict(), P_MEANING_EXCEPTIONS),
                       (exc_card.to_dict(), P_MEANING_EXCEPTIONS), (imitate, P_MEANING_IMITATE)):
        page = html_mod.unescape(build_card_report(d).render())
        assert "where the source policy made that choice" not in page
        assert meaning in page


def test_frontier_plot_has_one_tick_per_depth_labelled_with_its_rules(card):
    """Depths with the same number of rules overlapped on a rules axis (d4/d5/d6 on a Garnet
    card): the x axis is the depth, each tick says how many rules it has."""
    import matplotlib.pyplot as plt

    from equicare.report._card import card_frontier_plot

    d = card.to_dict()
    fig = card_frontier_plot(d)
    try:
        for ax in fig.axes:
            assert list(ax.get_xticks()) == [r["depth"] for r in d["frontier"]]
            labels = [t.get_text() for t in ax.get_xticklabels()]
            assert labels == [f"{r['depth']}\n({r['n_rules']} rule"
                              f"{'s' if r['n_rules'] != 1 else ''})" for r in d["frontier"]]
    finally:
        plt.close(fig)


def test_page_lists_rules_by_plan_and_says_which_share_one(card):
    """Rules recommending the same plan sit together with their plan number in the table, and a
    note names them (the README's AWR card had rules 1, 3 and 7 all saying "home_visit, rn,
    chronic, routine", listed apart by share)."""
    import html as html_mod

    from equicare.explain._rules import plan_summary

    d = card.to_dict()
    plans = [r["plan"] for r in d["rules"] if not r.get("usual")]
    assert plans == sorted(plans)  # one block per plan
    page = html_mod.unescape(build_card_report(d).render())
    rules_table = page.split("Rules in plain language")[1].split("</table>")[0]
    assert "<th>plan</th>" in rules_table
    # two rules with one plan: the page says so (a card with one rule per plan says nothing)
    two = json.loads(json.dumps(d))
    two["rules"][1] = {**two["rules"][1], "then": two["rules"][0]["then"],
                       "plan": two["rules"][0]["plan"]}
    lines = plan_summary(two["rules"])
    assert lines and lines[0].startswith("rules 1 and 2 recommend")
    assert "Same plan: " + "; ".join(lines) in html_mod.unescape(build_card_report(two).render())
    if not plan_summary(d["rules"]):
        assert "Same plan:" not in page


def test_the_two_values_note_says_which_one_the_commands_give():
    """evaluate, audit and mediate value exception rules as deployed by default (the stored
    estimate with --usual-care stored); the card's note said they value the stored policy."""
    from equicare.report._card import DEPLOYED_NOTE

    assert ("which evaluate, audit and mediate value with --usual-care stored. As deployed "
            "(their default)") in DEPLOYED_NOTE


def test_page_lists_every_level_of_a_long_set(card):
    """A set split's rule text shows its first levels and "and K more"; the page then lists
    every level of that condition under "Complete lists of levels" (and says nothing when no
    text is shortened)."""
    import html as html_mod

    d = json.loads(json.dumps(card.to_dict()))
    page = html_mod.unescape(build_card_report(d).render())
    assert "Complete lists of levels" not in page
    levels = [f"s{i}" for i in range(30)]
    r0 = d["rules"][0]
    cond = {"column": "state", "op": "is", "levels": levels,
            "text": "state is one of s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 and 20 more"}
    d["rules"][0] = {**r0, "conditions": [cond], "if": cond["text"],
                     "text": f"if {cond['text']} then {r0['then']}"}
    page = html_mod.unescape(build_card_report(d).render())
    assert "and 20 more" in page
    full = page.split("Complete lists of levels")[1]
    assert (f"rule {r0['rule']}: state is one of these 30 levels: {', '.join(levels)}"
            in full)


def test_values_in_the_thousands_read_without_an_exponent(card):
    """A care panel's values (discounted cost avoidance, ~1,573 per member) read
    '1.57e+03 [1.51e+03, 1.63e+03]' in the card's Evidence and frontier tables."""
    def scale(o):
        if isinstance(o, dict):
            return {k: (v * 1000 if k in ("value", "worst_group_value")
                        and isinstance(v, float) else
                        [c * 1000 for c in v] if k == "ci" and isinstance(v, list)
                        and None not in v else scale(v)) for k, v in o.items()}
        if isinstance(o, list):
            return [scale(v) for v in o]
        return o

    d = card.to_dict()
    d["evidence"]["value"] = scale(d["evidence"]["value"])
    d["frontier"] = scale(d["frontier"])
    html = build_card_report(d).render()
    assert not re.search(r"\de\+0\d", html)
    from equicare.report._card import card_number

    dr = d["evidence"]["value"]["rules"]["dr"]
    assert (f"{card_number(dr['value'])} [{card_number(dr['ci'][0])}, "
            f"{card_number(dr['ci'][1])}]") in html
    assert card_number(1573.449) == "1,573" and card_number(-2540.6) == "-2,541"
    assert card_number(0.01234) == "0.0123" and card_number(157.34) == "157"
