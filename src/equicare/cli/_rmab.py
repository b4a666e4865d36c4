"""``equicare plan`` and ``equicare capacity``: plain functions plus ``register(app)``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from equicare.exceptions import DataValidationError, InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from equicare.rmab._capacity import CapacityResult
    from equicare.rmab._domain import RMABDomain
    from equicare.rmab._simulate import PlanConfig, PlanResult

from equicare.cli._choices import Curve, Domain
from equicare.cli._utils import (
    Force,
    JsonOut,
    Seed,
    Threads,
    check_out_paths,
    console,
    fail,
    info,
    print_json,
    print_table,
    provenance,
    user_errors,
)

__all__ = ["parse_budget", "parse_policies", "build_domain", "run_plan", "run_capacity",
           "register"]

DEFAULT_POLICIES = "opt,mmr,mnw,mnw-eg,random,noact"
OUT_EXISTS = "{path} exists; refusing to overwrite it (pass --force to replace it)."
PANEL_COLUMNS = ("--from-panel needs a manifest (--manifest) or the column options {missing}"
                 "{also}.")
#: A manifest whose reward has several components: planning needs one column.
PANEL_REWARDS = ("{manifest}: the manifest's reward has {k} components ({columns}); planning "
                 "needs one reward column: pass --reward COLUMN (e.g. --reward {first}).")
#: The note naming the state column taken from the manifest.
PANEL_STATE_NOTE = ("note: planning on state column {state!r} (the manifest's first "
                    "categorical state); pass --state COLUMN to choose another.")

# Column roles of --from-panel (shared by plan and capacity); a manifest fills the rest.
PanelState = Annotated[str | None, typer.Option(help="Panel: discrete state column.")]
PanelAction = Annotated[str | None, typer.Option(help="Panel: 0/1 treated column.")]
PanelGroup = Annotated[str | None, typer.Option(help="Panel: group column.")]
PanelReward = Annotated[str | None, typer.Option(help="Panel: reward column.")]
PanelEpisode = Annotated[str | None, typer.Option(help="Panel: episode (member) id column.")]
PanelMember = Annotated[str | None, typer.Option(
    help="Panel: person id column when people re-enrol (several episodes each); groups of "
         "fewer than 11 people are suppressed.")]
PanelTime = Annotated[str | None, typer.Option(
    help="Panel: step column ordering each episode's rows (default: row order).")]


def parse_budget(text: str | float | int, option: str = "--budget") -> int | float:
    """``"0.2"`` -> fraction 0.2; ``"20"`` -> 20 actions per step.

    Parameters
    ----------
    text : str, float or int
        The budget as written on the command line.
    option : str
        The option named in error messages (``capacity`` passes ``"--budgets"``).
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    try:
        v = float(s)
    except ValueError:
        raise InvalidParameterError(
            f"{option} must be a number (a fraction like 0.2 or a count like 20); "
            f"got {text!r}.") from None
    if not math.isfinite(v):
        raise InvalidParameterError(
            f"{option} must be a finite number (a fraction like 0.2 or a count like 20); "
            f"got {text!r}.")
    if v < 0:
        raise InvalidParameterError(f"{option} must be >= 0; got {text!r}.")
    if any(c in s for c in ".eE") and v <= 1:
        return v
    if v != int(v):
        raise InvalidParameterError(
            f"{option} above 1 must be a whole number of actions; got {text!r}.")
    return int(v)


def parse_policies(text: str) -> list[str]:
    """Comma-separated policy names, checked against :data:`POLICIES`."""
    from equicare.rmab._simulate import POLICIES

    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise InvalidParameterError(
            f"--policy: unknown policy {bad[0] if bad else text!r}; choose from "
                         f"{', '.join(POLICIES)}.")
    return names


def _panel_domain(data: Path, manifest: Path | None, *, arms: int | None, horizon: int,
                  state: str | None = None, action: str | None = None,
                  group: str | None = None, reward: str | None = None,
                  episode: str | None = None, time: str | None = None,
                  member: str | None = None, state_rewards: list[float] | None = None
                  ) -> RMABDomain:
    """Arms estimated from a panel; column roles from the options, else the manifest.

    Every role left ``None`` is read from ``manifest`` (``capacity`` has no column options).
    """
    from equicare.rmab._estimate import estimate_arms

    try:
        from equicare.data import read_manifest, read_table
    except ImportError:  # pragma: no cover - the data layer ships with equicare
        read_manifest = read_table = None  # type: ignore[assignment]
    m = None
    from_manifest = None  # the state column taken from the manifest, named once all is known
    if manifest is not None:
        if read_manifest is None:  # pragma: no cover
            raise InvalidParameterError("Reading a manifest needs equicare.data.")
        m = read_manifest(manifest)
    if read_table is not None:  # a DuckDB file's table: the manifest's dataset.table
        frame, _ = read_table(data, None if m is None else m.table)
    else:  # pragma: no cover
        import pandas as pd

        frame = pd.read_parquet(data) if data.suffix in (".parquet", ".pq") else pd.read_csv(data)
    if m is not None:
        episode = episode or m.episode
        time = time or m.time
        member = member or m.member
        if state is None:
            if not m.categorical_states:
                raise InvalidParameterError(f"{manifest}: name a discrete state column under "
                                 "categorical_states, or pass --state COLUMN.")
            state = from_manifest = m.categorical_states[0]
        if action is None:
            if len(m.actions) != 1:
                raise InvalidParameterError(f"{manifest}: planning needs one binary action column "
                                 "(treated or not); pass --action COLUMN.")
            action = m.actions[0].column
        if group is None:
            if not m.groups:
                raise InvalidParameterError(
                    f"{manifest}: name a group column under groups, or pass "
                                 "--group COLUMN.")
            group = m.groups[0]
        if reward is None and state_rewards is None:
            if len(m.reward) > 1:
                cols = [r.column for r in m.reward]
                raise InvalidParameterError(PANEL_REWARDS.format(
                    manifest=manifest, k=len(cols), columns=", ".join(cols), first=cols[0]))
            if len(m.reward) == 1:
                reward = m.reward[0].column
    missing = [n for n, v in (("--episode", episode), ("--state", state), ("--action", action),
                              ("--group", group), ("--reward", reward or state_rewards))
               if v is None]
    if missing:
        raise InvalidParameterError(PANEL_COLUMNS.format(
            missing=", ".join(missing), also="" if manifest is None else
            f" ({manifest} does not name them)"))
    try:
        est = estimate_arms(frame, episode=episode, state=state, action=action, group=group,
                            time=time, reward=reward, state_rewards=state_rewards,
                            member=member)
    except DataValidationError as exc:  # name the file: "panel.parquet: Column 'risk' ..."
        raise DataValidationError(f"{data}: {exc}", [f"{data}: {e}" for e in exc.problems]
                                  ) from None
    if from_manifest is not None:
        info(PANEL_STATE_NOTE.format(state=from_manifest))
    return est.to_domain(n_arms=arms, horizon=horizon, name=Path(data).stem)


def build_domain(
    domain: str | None = None,
    *,
    domain_file: Path | None = None,
    from_panel: Path | None = None,
    manifest: Path | None = None,
    arms: int | None = None,
    horizon: int | None = None,
    alpha: float | None = None,
    experiment: str | None = None,
    seed: int = 42,
    columns: dict[str, Any] | None = None,
) -> RMABDomain:
    """Build the domain named on the command line (a file, a bundled name, or a panel)."""
    from equicare.rmab._domain import DOMAIN_SETTINGS, ONLY_FOR, load_domain

    given = [x for x in (domain, domain_file, from_panel) if x is not None]
    if len(given) != 1:
        raise InvalidParameterError(
            "Give exactly one of DOMAIN.json, --domain NAME or --from-panel DATA.")
    if arms is not None and arms < 1:
        raise InvalidParameterError(f"--arms must be >= 1; got {arms}.")
    for option, value in (("alpha", alpha), ("experiment", experiment)):
        applies, what = DOMAIN_SETTINGS[option]
        if value is not None and domain != applies and domain_file is None:
            raise InvalidParameterError(ONLY_FOR.format(
                option=f"--{option}", applies=applies, what=what,
                name=domain if domain is not None else Path(str(from_panel)).stem))
    if from_panel is not None:
        cols = dict(columns or {})
        return _panel_domain(from_panel, manifest, arms=arms, horizon=horizon or 20, **cols)
    src: Any = domain_file if domain_file is not None else domain
    d = load_domain(src, n_arms=arms, random_state=seed, alpha=alpha, experiment=experiment)
    return d


def _config(reference: bool, curve: str | None) -> PlanConfig:
    from equicare.rmab._simulate import PlanConfig

    cfg = PlanConfig.reference() if reference else PlanConfig()
    if curve is not None:
        d = cfg.to_dict()
        d["curve"] = curve
        cfg = PlanConfig.from_dict(d)
    return cfg


def _check_out(out: Path | None, force: bool) -> None:
    if out is not None and out.exists() and not force:
        raise FileExistsError(OUT_EXISTS.format(path=out))


def run_plan(
    domain: RMABDomain, *, budget: int | float, policies: list[str], horizon: int | None,
    seeds: int, seed: int = 42, out: Path | None = None, force: bool = False,
    reference: bool = False, curve: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> PlanResult:
    """Run :func:`plan` and write its JSON (docs/contracts.md) to ``out`` atomically.

    An existing ``out`` is never replaced unless ``force``. ``provenance``: the block written
    into the JSON (:func:`equicare.cli._utils.provenance`).
    """
    from equicare.cli._utils import write_result_json
    from equicare.rmab._simulate import plan

    _check_out(out, force)
    res = plan(domain, budget=budget, policies=policies, horizon=horizon, seeds=seeds,
               random_state=seed, config=_config(reference, curve))
    if out is not None:
        write_result_json(out, res.to_dict(reference_gini=reference), provenance)
    return res


def run_capacity(
    domain: RMABDomain, *, target: float, goal_states: list[str] | None, policies: list[str],
    budgets: list[int | float] | None, horizon: int | None, seeds: int, seed: int = 42,
    out: Path | None = None, force: bool = False, reference: bool = False,
    figure: Path | None = None, provenance: dict[str, Any] | None = None,
) -> CapacityResult:
    """Run :func:`capacity_plan`; write its JSON (and optionally the figure).

    ``provenance``: the block written into the JSON (:func:`equicare.cli._utils.provenance`).
    """
    from equicare.cli._utils import write_result_json
    from equicare.rmab._capacity import capacity_plan

    _check_out(out, force)
    _check_out(figure, force)
    goal: Any = None
    if goal_states:
        goal = [int(g) if g.strip().isdigit() else g.strip() for g in goal_states]
    res = capacity_plan(domain, target_share=target, goal_states=goal, policies=policies,
                        budgets=budgets, horizon=horizon, seeds=seeds, random_state=seed,
                        config=_config(reference, None))
    if out is not None:
        write_result_json(out, res.to_dict(), provenance)
    if figure is not None:
        from equicare.rmab._plots import plot_capacity

        _save_figure(plot_capacity(res), figure)
    return res


def _save_figure(fig: Any, path: Path) -> None:
    """Save a Matplotlib figure atomically (format from the suffix)."""
    from equicare.report._html import savefig_stable
    from equicare.utils import atomic_write

    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as fh:
        savefig_stable(fig, fh, format=fmt)


def _num(x: float) -> str:
    """Three decimals, or two significant digits where those would read 0.000.

    From 1,000 on, :func:`~equicare.utils.value_text` (thousands separated, no decimals).

    Rewards per step of a weekly score (a mean of -0.0628 per arm with an SE of 0.00023)
    printed ``-0.063 ± 0.000``: the SE looked like none.
    """
    if abs(x) >= 1000:  # costs in dollars: -10,682, not -10682.111
        from equicare.utils import value_text

        return value_text(x)
    text = f"{x:.3f}"
    return f"{x:.2g}" if x != 0 and float(text) == 0 else text


def _print_plan(res: PlanResult) -> None:
    from rich.table import Table

    from equicare.cli._utils import print_table

    t = Table(title=f"{res.domain}: {res.n_arms} arms, budget {res.budget}/step, "
                    f"H={res.horizon}, {res.seeds} seeds (mean total reward per arm)")
    t.add_column("policy")
    t.add_column("mean ± se", justify="right")
    groups = res.published_groups
    for g in groups:
        t.add_column(f"{g} (n={res.group_sizes[g]})", justify="right")
    t.add_column("Gini", justify="right")
    t.add_column("worst", justify="right")
    t.add_column("loss vs opt", justify="right")
    for p, s in res.policies.items():
        loss = "" if s.utility_loss_vs_opt is None else f"{100 * s.utility_loss_vs_opt:.1f}%"
        sd = "" if not math.isfinite(s.mean_reward_se) else f" ± {_num(s.mean_reward_se)}"
        t.add_row(p, f"{_num(s.mean_reward)}{sd}",
                  *[_num(s.group_mean[g]) for g in groups],
                  f"{s.gini:.4f}" if math.isfinite(s.gini) else "n/a",
                  f"{_num(s.worst_group)} ({s.worst_group_name})", loss)
    notes = []
    if res.suppressed_groups:
        notes.append(f"{len(res.suppressed_groups)} group(s) suppressed (fewer than "
                      f"{res.min_cell} members, or hidden so that one cannot be recovered by "
                      "difference); Gini and worst group are over the groups shown.")
    if any(not math.isfinite(s.gini) for s in res.policies.values()):
        notes.append("Gini n/a: a group's mean reward is negative (the Gini index compares "
                     "shares of a non-negative total).")
    if notes:
        t.caption = " ".join(notes)
    print_table(t)


_POLICY_HELP = ("Planning policy (repeatable, or comma-separated): opt, mmr, mnw, mnw-eg, "
                "random, noact, hr-random, hr-rr")


def _policy_names(specs: list[str] | None, default: str) -> list[str]:
    """``--policy opt --policy mmr,mnw`` -> ``["opt", "mmr", "mnw"]`` (checked)."""
    return parse_policies(",".join(specs) if specs else default)


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``capacity`` to a Typer app."""
    @app.command("plan")
    def plan_cmd(
        domain_file: Annotated[Path | None, typer.Argument(
            help="Domain JSON (docs/contracts.md; or use --domain / --from-panel).")] = None,
        domain: Annotated[Domain | None, typer.Option(help="Bundled domain.")] = None,
        from_panel: Annotated[Path | None, typer.Option(
            help="Estimate arms from a panel (CSV/Parquet/DuckDB) instead.")] = None,
        manifest: Annotated[Path | None, typer.Option(
            "--manifest", "-m",
            help="Manifest of --from-panel (names episode, time, state, action, group).")
        ] = None,
        state: PanelState = None,
        action: PanelAction = None,
        group: PanelGroup = None,
        reward: PanelReward = None,
        episode: PanelEpisode = None,
        member: PanelMember = None,
        time: PanelTime = None,
        arms: Annotated[int | None, typer.Option(help="Number of arms (default: domain's).")
                        ] = None,
        budget: Annotated[str, typer.Option(
            help="Actions per step: a fraction (0.2) or a count (20).")] = "0.2",
        horizon: Annotated[int | None, typer.Option(min=1, help="Steps H (default 20).")] = None,
        policy: Annotated[list[str] | None, typer.Option(
            help=f"{_POLICY_HELP} [default: {DEFAULT_POLICIES}].")] = None,
        seeds: Annotated[int, typer.Option(min=1, help="Independent runs.")] = 25,
        alpha: Annotated[float | None, typer.Option(
            help="Diabetes: engagement weight of the reward (0, 0.5, 1).")] = None,
        experiment: Annotated[str | None, typer.Option(
            help="Maternal: which group is 60% (A, B or C).")] = None,
        curve: Annotated[Curve | None, typer.Option(
            help="Group value curves [default: index].")] = None,
        reference: Annotated[bool, typer.Option(
            "--reference", help="Reproduce the reference's quirks (index bounds [-1,1], tol "
            "0.01, fixed arms, its Gini).")] = False,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Also write the plan JSON here (docs/contracts.md).")] = None,
        figure: Annotated[Path | None, typer.Option(
            help="Save the group-outcome bar chart (PNG/SVG/PDF).")] = None,
        seed: Seed = 42,
        force: Force = False,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Compare equitable budget policies on a restless-bandit domain.

        Example: equicare plan --domain synthetic --arms 100 --budget 0.2 --horizon 20
        --policy opt,mmr,mnw,mnw-eg,random,noact --seeds 25 --out plan.json
        """
        check_out_paths([out, figure], force, file=True, options=["--out", "--figure"])
        with user_errors():
            prov = None if out is None else provenance(
                {"domain": domain_file, "data": from_panel, "manifest": manifest})
            d = build_domain(None if domain is None else domain.value, domain_file=domain_file,
                             from_panel=from_panel, manifest=manifest, arms=arms,
                             horizon=horizon, alpha=alpha, experiment=experiment, seed=seed,
                             columns={"state": state, "action": action, "group": group,
                                      "reward": reward, "episode": episode, "time": time,
                                      "member": member})
            res = run_plan(d, budget=parse_budget(budget),
                           policies=_policy_names(policy, DEFAULT_POLICIES), horizon=horizon,
                           seeds=seeds, seed=seed, out=out, force=force, reference=reference,
                           curve=None if curve is None else curve.value, provenance=prov)
            if figure is not None:
                from equicare.rmab._plots import plot_group_outcomes

                _save_figure(plot_group_outcomes(res), figure)
        if json_out:
            print_json(res.to_dict(reference_gini=reference))
            return
        _print_plan(res)
        for p in (out, figure):
            if p is not None:
                console.print(f"Wrote {p}", highlight=False)

    @app.command("capacity")
    def capacity_cmd(
        domain_file: Annotated[Path | None, typer.Argument(
            help="Domain JSON (docs/contracts.md; or use --domain / --from-panel).")] = None,
        domain: Annotated[Domain | None, typer.Option(help="Bundled domain.")] = None,
        from_panel: Annotated[Path | None, typer.Option(help="Estimate arms from a panel.")
                              ] = None,
        manifest: Annotated[Path | None, typer.Option(
            "--manifest", "-m", help="Manifest of --from-panel.")] = None,
        state: PanelState = None,
        action: PanelAction = None,
        group: PanelGroup = None,
        reward: PanelReward = None,
        episode: PanelEpisode = None,
        member: PanelMember = None,
        time: PanelTime = None,
        arms: Annotated[int | None, typer.Option(help="Number of arms.")] = None,
        target_share: Annotated[float, typer.Option(
            help="Required share of arms in the goal states after the horizon.")] = 0.5,
        goal: Annotated[str | None, typer.Option(
            help="Comma-separated goal states (codes or names); default: not high-risk.")
        ] = None,
        budgets: Annotated[str | None, typer.Option(
            help="Comma-separated budgets to try (fractions or counts); default 0..100%.")
        ] = None,
        horizon: Annotated[int | None, typer.Option(min=1, help="Steps H.")] = None,
        policy: Annotated[list[str] | None, typer.Option(
            help=f"{_POLICY_HELP} [default: opt,mmr,mnw-eg,random].")] = None,
        seeds: Annotated[int, typer.Option(min=1, help="Independent runs.")] = 25,
        alpha: Annotated[float | None, typer.Option(help="Diabetes reward weight.")] = None,
        experiment: Annotated[str | None, typer.Option(help="Maternal experiment.")] = None,
        reference: Annotated[bool, typer.Option("--reference", help="Reference quirks.")
                             ] = False,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Also write the result JSON here.")] = None,
        figure: Annotated[Path | None, typer.Option(help="Save the capacity curves figure.")
                          ] = None,
        seed: Seed = 42,
        force: Force = False,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Find the smallest budget per step that brings the cohort to a target state mix.

        Example: equicare capacity --domain diabetes --alpha 0 --target-share 0.5 --seeds 10
        --figure capacity.png
        """
        check_out_paths([out, figure], force, file=True, options=["--out", "--figure"])
        with user_errors():
            if goal is None and from_panel is not None:  # before the estimation, not after
                fail("--goal is needed with --from-panel: arms estimated from a panel define "
                     "no high-risk states whose complement would be the default goal; give "
                     "--goal with comma-separated levels of the panel's state column.")
            prov = None if out is None else provenance(
                {"domain": domain_file, "data": from_panel, "manifest": manifest})
            d = build_domain(None if domain is None else domain.value, domain_file=domain_file,
                             from_panel=from_panel, manifest=manifest, arms=arms,
                             horizon=horizon, alpha=alpha, experiment=experiment, seed=seed,
                             columns={"state": state, "action": action, "group": group,
                                      "reward": reward, "episode": episode, "time": time,
                                      "member": member})
            if goal is None and d.high_risk is None:  # say it with the flag, not goal_states
                names = f" ({', '.join(d.state_names)})" if d.state_names else ""
                fail(f"--goal is needed: domain {d.name!r} defines no high-risk states whose "
                     f"complement would be the default goal; give --goal with comma-separated "
                     f"state codes 0..{d.n_states - 1} or names{names}.")
            bl = None if budgets is None else [parse_budget(b, "--budgets")
                                          for b in budgets.split(",")]
            res = run_capacity(d, target=target_share,
                               goal_states=None if goal is None else goal.split(","),
                               policies=_policy_names(policy, "opt,mmr,mnw-eg,random"),
                               budgets=bl, horizon=horizon, seeds=seeds, seed=seed, out=out,
                               force=force, reference=reference, figure=figure,
                               provenance=prov)
        if json_out:
            print_json(res.to_dict())
            return
        from rich.table import Table

        goal_txt = (", ".join(res.goal_states) if len(res.goal_states) <= 3
                    else f"{len(res.goal_states)} goal states")
        t = Table(title=f"Share of arms in {goal_txt} after {res.horizon} steps "
                        f"(target {res.target_share:g})")
        t.add_column("policy")
        for b in res.budgets:
            t.add_column(str(int(b)), justify="right")
        t.add_column("min budget", justify="right")
        for p in res.share:
            mb = res.min_budget[p]
            t.add_row(p, *[f"{v:.3f}" for v in res.share[p]], "not reached" if mb is None
                      else str(mb))
        print_table(t)
