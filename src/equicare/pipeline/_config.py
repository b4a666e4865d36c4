"""Run configuration (TOML): what ``equicare run`` does, checked key by key.

Every section is a table of known keys; an unknown key gets the closest known one suggested, a value
of the wrong type or outside its allowed values names the key and what was allowed. The learner
section is checked at load too: its keys against the chosen learner's config class (closest key
suggested), its values by that class.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equicare.exceptions import ConfigError as _BaseConfigError
from equicare.exceptions import DataValidationError

__all__ = [
    "RunConfig",
    "audit_intersect",
    "learner_config",
    "plan_domain",
    "ConfigError",
    "load_run_config",
    "parse_grid",
    "apply_override",
    "DEFAULT_CONFIG",
]


class ConfigError(DataValidationError, _BaseConfigError):
    """A run configuration has unknown, missing or invalid keys."""


_ESTIMATORS = ["is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"]

#: Defaults of every section; the types of these values are the expected types.
DEFAULT_CONFIG: dict[str, Any] = {
    "name": "",
    "seed": 0,
    "data": {"path": "", "manifest": "", "synthetic": {}},
    "reward": {},
    # folds: cross-fitting folds of the behaviour model when it estimates the propensities
    # (BehaviorModel n_folds; 1: fitted and predicted on the same episodes; "auto", as
    # evaluate's --behavior-folds: 1 when the state is mostly one-hot categorical levels, else 5)
    "behavior": {"model": "auto", "folds": "auto"},
    "learner": {"algo": "awr"},
    "ope": {
        "estimators": list(_ESTIMATORS),
        "bootstrap": 1000,
        "truncate": 0.0,
        "q_model": "auto",
        "sensitivity": True,
        "ci": "studentized",
        "holdout": 0.5,
        "truth_members": 2000,
    },
    # action "": every level of the panel's first action component except its first ("any
    # outreach"; equicare.fairness default_action), resolved and checked when the data loads;
    # intersect: one attribute ("sex") or a list of them (["sex", "age_band"]), "" for none
    "audit": {"group": "", "intersect": "", "action": "", "permutations": 1000},
    "frontier": {"lambdas": [], "kind": "parity"},
    "mediation": {"enabled": False, "bootstrap": 200, "action": ""},
    "explain": {"enabled": False, "depth": 3, "bootstrap": 200, "labels": "argmax",
                "mode": "exceptions", "set_splits": True, "deviation_margin": "auto"},
    "plan": {
        "enabled": False,
        "domain": "synthetic",
        "arms": 100,
        "budget": 0.2,
        "horizon": 20,
        "policies": ["opt", "mmr", "mnw", "mnw-eg", "random", "noact"],
        "seeds": 5,
    },
    "output": {"store": "runs", "executor": "local", "jobs": 1, "address": "auto"},
}

_SYNTH_KEYS = {"members": 2000, "weeks": 52, "seed": 42, "history_dependence": False}

_CHOICES: dict[str, list[Any]] = {
    "behavior.model": ["auto", "logged", "logistic", "lgbm"],
    "ope.q_model": ["linear", "auto", "gbm", "mlp", "tabular", "tabular_stationary",
                    "tabular_backward", "tabular_window"],
    "ope.ci": ["studentized", "percentile", "bca"],
    "frontier.kind": ["parity", "group_robust"],
    "output.executor": ["local", "serial", "ray"],
    "learner.algo": ["bc", "awr", "cql"],
    "explain.depth": [1, 2, 3, 4, 5, 6, 7, 8],
    "explain.labels": ["argmax", "sample"],
    "explain.mode": ["exceptions", "imitate"],
}


#: What ``behavior.folds`` takes (the message of a wrong value).
FOLDS_EXPECTED = ('"auto" (1 when the state is mostly one-hot categorical levels, else 5) or an '
                  'integer >= 1 (1: no cross-fitting)')

#: Numeric keys checked at load: ``key -> (lowest allowed, what was expected)``.
_LOWEST: dict[str, tuple[float, str]] = {
    "seed": (0, "an integer >= 0"),
    "ope.bootstrap": (0, "an integer >= 0"),
    "ope.truncate": (0, "a number >= 0 (0: no truncation)"),
    "ope.truth_members": (0, "an integer >= 0 (0: no ground truth)"),
    "audit.permutations": (0, "an integer >= 0 (0: no permutation test)"),
    "mediation.bootstrap": (0, "an integer >= 0"),
    "explain.bootstrap": (0, "an integer >= 0"),
    "plan.arms": (1, "an integer >= 1"),
    "plan.horizon": (1, "an integer >= 1"),
    "plan.seeds": (1, "an integer >= 1"),
    "data.synthetic.members": (1, "an integer >= 1"),
    "data.synthetic.weeks": (1, "an integer >= 1"),
    "data.synthetic.seed": (0, "an integer >= 0"),
}


def _lookup(raw: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = raw
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def plan_domain(domain: str, base_dir: Path) -> str:
    """``plan.domain`` as ``load_domain`` takes it.

    A bundled name as it is; the path of a Contract-4 JSON file resolved against the config
    file's folder (like ``data.path``).
    """
    from equicare.rmab._domain import BUILTIN_DOMAINS

    if domain in BUILTIN_DOMAINS:
        return domain
    p = Path(domain)
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _domain_problems(plan: Mapping[str, Any], source: str, base_dir: Path) -> list[str]:
    """``plan.domain`` checked at load: a bundled name or a JSON file.

    When planning is enabled the domain is built, so a missing file or a bad Contract-4
    document fails here, not after the run's expensive stages.
    """
    from equicare.exceptions import EquicareError
    from equicare.rmab._domain import BUILTIN_DOMAINS, load_domain

    domain = plan["domain"]
    expected = (f"one of {', '.join(map(repr, BUILTIN_DOMAINS))} or the path of a Contract-4 "
                "JSON file (relative to the config file's folder)")
    if domain not in BUILTIN_DOMAINS and not domain.lower().endswith(".json"):
        return [f"{source}: plan.domain must be {expected}, got {domain!r}."]
    if not plan["enabled"]:
        return []
    path = plan_domain(domain, base_dir)
    if domain not in BUILTIN_DOMAINS and not Path(path).is_file():
        return [f"{source}: plan.domain {domain!r}: no such file ({path}); expected {expected}."]
    try:
        load_domain(path, n_arms=plan["arms"], random_state=0)
    except (EquicareError, OSError, ValueError) as exc:
        return [f"{source}: plan.domain {domain!r}: {exc}"]
    return []


def _value_problems(out: Mapping[str, Any], source: str, base_dir: Path) -> list[str]:
    """Range and list-element checks of the keys whose type is already right."""
    from equicare.rmab._simulate import POLICIES

    problems: list[str] = []
    for key, (low, expected) in _LOWEST.items():
        if key.startswith("data.synthetic.") and not out["data"]["synthetic"]:
            continue  # a panel from data.path
        v = _lookup(out, key)
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= low):
            problems.append(f"{source}: {key} must be {expected}, got {v!r}.")
    folds = out["behavior"]["folds"]
    if folds != "auto" and folds < 1:
        problems.append(f"{source}: behavior.folds must be {FOLDS_EXPECTED}, got {folds!r}.")
    margin = out["explain"]["deviation_margin"]
    if margin != "auto" and not (math.isfinite(margin) and 0 <= margin < 1):
        problems.append(f"{source}: explain.deviation_margin must be \"auto\" or a number in "
                        f"[0, 1), got {margin!r}.")
    jobs = out["output"]["jobs"]
    if jobs == 0 or jobs < -1:
        problems.append(f"{source}: output.jobs must be an integer >= 1 (or -1: every core), "
                        f"got {jobs!r}.")
    plan = out["plan"]
    budget = plan["budget"]
    if not (math.isfinite(budget) and 0 <= budget
            and (budget <= 1 if isinstance(budget, float) else budget <= max(plan["arms"], 0))):
        problems.append(f"{source}: plan.budget must be a share in [0, 1] (e.g. 0.2) or a "
                        f"number of arms in [0, plan.arms], got {budget!r}.")
    for name in plan["policies"]:
        if name not in POLICIES:
            problems.append(f"{source}: plan.policies has unknown policy {name!r}; allowed: "
                            f"{', '.join(POLICIES)}.")
    if not plan["policies"]:
        problems.append(f"{source}: plan.policies must name at least one policy.")
    if not problems:
        problems += _domain_problems(plan, source, base_dir)
    if not out["ope"]["estimators"]:
        problems.append(f"{source}: ope.estimators must name at least one estimator; allowed: "
                        f"{', '.join(_ESTIMATORS)}.")
    kind = out["frontier"]["kind"]
    hi = 1.0 if kind == "group_robust" else math.inf
    for lam in out["frontier"]["lambdas"]:
        if (isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam)
                or not 0 <= lam <= hi):
            expected = ("numbers in [0, 1] (frontier.kind = 'group_robust')"
                        if hi == 1.0 else "numbers >= 0")
            problems.append(f"{source}: frontier.lambdas must be a list of {expected}, got "
                            f"{lam!r} in {out['frontier']['lambdas']!r}.")
            break
    return problems


def learner_config(section: Mapping[str, Any], seed: int, source: str = "<config>") -> Any:
    """The learner's config (``BCConfig``, ``AWRConfig``, ``CQLConfig``) of a ``[learner]`` table.

    Parameters
    ----------
    section : mapping
        ``algo`` (default ``"awr"``) plus any field of that learner's config (``steps`` is an
        alias of ``n_steps``).
    seed : int
        The learner's seed unless the table sets one.
    source : str
        File the table came from (for messages).

    Raises
    ------
    ConfigError
        An unknown key (the closest known one suggested) or a value the learner's config
        refuses (its message names the key and what is allowed).
    """
    import dataclasses

    from equicare import learn as algos

    spec = dict(section)
    algo = spec.pop("algo", "awr")
    conf_cls = {"bc": algos.BCConfig, "awr": algos.AWRConfig, "cql": algos.CQLConfig}[algo]
    spec.setdefault("seed", seed)
    if "steps" in spec:
        spec["n_steps"] = spec.pop("steps")
    if isinstance(spec.get("hidden"), list):
        spec["hidden"] = tuple(spec["hidden"])
    known = [f.name for f in dataclasses.fields(conf_cls)]
    unknown = [k for k in spec if k not in known]
    if unknown:
        problems = [f"{source}: unknown key learner.{k} for algo {algo!r}"
                    f"{_suggest(k, ['algo', *known])}" for k in unknown]
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} problems in {source}:\n  " + "\n  ".join(problems),
                          problems)
    try:
        return conf_cls.from_dict(spec)
    except (ValueError, TypeError) as exc:  # InvalidParameterError is a ValueError
        raise ConfigError(f"{source}: [learner] for algo {algo!r}: {exc}") from exc


def _learner_problems(out: Mapping[str, Any], source: str) -> list[str]:
    seed = out["seed"] if isinstance(out["seed"], int) and out["seed"] >= 0 else 0
    try:
        learner_config(out["learner"], seed, source)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}."


#: Keys that take a string or a list of strings (``audit.intersect``: like the repeatable
#: ``--intersect``).
_STR_OR_LIST = {"audit.intersect"}


def audit_intersect(audit: Mapping[str, Any]) -> list[str]:
    """The attributes of ``[audit] intersect`` as a list (``""`` none, ``"sex"`` one).

    Parameters
    ----------
    audit : mapping
        The checked ``[audit]`` section.
    """
    v = audit["intersect"]
    if isinstance(v, str):
        return [v] if v else []
    return [str(x) for x in v]


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, Mapping)
    return True


def _tname(default: Any) -> str:
    return {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }[type(default)]


@dataclass(frozen=True)
class RunConfig:
    """A checked run configuration (a nested dict with defaults filled in).

    Attributes
    ----------
    raw : dict
        Every section with defaults applied.
    source : str
        File the config came from (for messages).
    base_dir : Path
        Folder relative paths are resolved against.
    """

    raw: dict[str, Any]
    source: str = "<config>"
    base_dir: Path = Path(".")

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], source: str = "<config>", base_dir: Path | None = None
    ) -> RunConfig:
        """Check ``d`` and fill in defaults; raise :class:`ConfigError` listing every problem."""
        problems: list[str] = []
        out = copy.deepcopy(DEFAULT_CONFIG)
        for key, value in d.items():
            if key not in DEFAULT_CONFIG:
                problems.append(
                    f"{source}: unknown key {key!r}{_suggest(key, list(DEFAULT_CONFIG))}"
                )
                continue
            default = DEFAULT_CONFIG[key]
            if not _type_ok(value, default):
                problems.append(f"{source}: {key} must be {_tname(default)}, got {value!r}.")
                continue
            if not isinstance(default, dict):
                out[key] = value
                continue
            if key == "learner" or key == "reward":
                out[key].update(value)  # checked by the learner config / the dataset's reward names
                continue
            for sub, v in value.items():
                full = f"{key}.{sub}"
                if sub not in default:
                    problems.append(f"{source}: unknown key {full}{_suggest(sub, list(default))}")
                    continue
                if full in _STR_OR_LIST:
                    if not (isinstance(v, str) or (isinstance(v, list) and all(
                            isinstance(x, str) and x for x in v))):
                        problems.append(f"{source}: {full} must be a string or a list of "
                                        f"non-empty strings, got {v!r}.")
                        continue
                    if isinstance(v, list) and len(set(v)) != len(v):
                        problems.append(f"{source}: {full} must name each attribute once, got "
                                        f"{v!r}.")
                        continue
                elif full == "behavior.folds":
                    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int)):
                        problems.append(f"{source}: {full} must be {FOLDS_EXPECTED}, got {v!r}.")
                        continue
                elif full == "explain.deviation_margin":
                    # "auto" (the default: DistillConfig.deviation_margin) or a number
                    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int | float)):
                        problems.append(f"{source}: {full} must be a number, got {v!r}.")
                        continue
                elif not _type_ok(v, default[sub]):
                    problems.append(f"{source}: {full} must be {_tname(default[sub])}, got {v!r}.")
                    continue
                if full in _CHOICES and v not in _CHOICES[full]:
                    problems.append(
                        f"{source}: {full} must be one of "
                        f"{', '.join(map(repr, _CHOICES[full]))}; got {v!r}."
                    )
                    continue
                out[key][sub] = v
        if "algo" in out["learner"] and out["learner"]["algo"] not in _CHOICES["learner.algo"]:
            problems.append(
                f"{source}: learner.algo must be one of "
                f"{', '.join(map(repr, _CHOICES['learner.algo']))}; got "
                f"{out['learner']['algo']!r}."
            )
        for k, w in out["reward"].items():
            if (
                not isinstance(w, int | float)
                or isinstance(w, bool)
                or w != w
                or abs(w) == float("inf")
            ):
                problems.append(f"{source}: reward.{k} must be a finite number, got {w!r}.")
        for e in out["ope"]["estimators"]:
            if e not in _ESTIMATORS:
                problems.append(
                    f"{source}: ope.estimators has unknown estimator {e!r}; allowed: "
                    f"{', '.join(_ESTIMATORS)}."
                )
        if not 0 < out["ope"]["holdout"] < 1:
            problems.append(
                f"{source}: ope.holdout must be a number in (0, 1) (share of episodes "
                f"held out for evaluation), got {out['ope']['holdout']!r}."
            )
        data = out["data"]
        synth = data["synthetic"]
        for k, v in synth.items():
            if k not in _SYNTH_KEYS:
                problems.append(
                    f"{source}: unknown key data.synthetic.{k}{_suggest(k, list(_SYNTH_KEYS))}"
                )
            elif not _type_ok(v, _SYNTH_KEYS[k]):
                problems.append(
                    f"{source}: data.synthetic.{k} must be {_tname(_SYNTH_KEYS[k])}, got {v!r}."
                )
        if data["path"] and synth:
            problems.append(
                f"{source}: give either data.path (+ data.manifest) or data.synthetic, not both."
            )
        if data["path"] and not data["manifest"]:
            problems.append(
                f"{source}: data.path needs data.manifest (the TOML naming each column)."
            )
        if not data["path"] and not synth:
            data["synthetic"] = dict(_SYNTH_KEYS)
        elif synth:
            data["synthetic"] = {**_SYNTH_KEYS, **synth}
        if not problems:  # every type is right: check the ranges, and the learner's keys
            problems += _value_problems(out, source,
                                        base_dir if base_dir is not None else Path("."))
            problems += _learner_problems(out, source)
        if problems:
            msg = (
                problems[0]
                if len(problems) == 1
                else (f"{len(problems)} problems in {source}:\n  " + "\n  ".join(problems))
            )
            raise ConfigError(msg, problems)
        return cls(raw=out, source=source, base_dir=base_dir if base_dir is not None else Path("."))

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy of the checked config."""
        return json.loads(json.dumps(self.raw))

    def resolve(self, path: str) -> Path:
        """Resolve a path from the config relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def to_toml(self) -> str:
        """The checked config as TOML (every setting, defaults included; no comments)."""
        from equicare.data._manifest import _toml_key, _toml_value

        def table(d: Mapping[str, Any], prefix: str) -> list[str]:
            flat = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d.items()
                    if not isinstance(v, Mapping) and v is not None]
            lines = ([f"[{prefix}]"] if prefix and flat else []) + flat
            for k, v in d.items():
                if isinstance(v, Mapping):
                    sub = table(v, f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k))
                    lines += ([""] if lines and sub else []) + sub
            return lines

        return "\n".join(table(self.to_dict(), "")) + "\n"

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A new checked config with dotted-key overrides applied (``{"learner.window": 4}``)."""
        d = copy.deepcopy(self.raw)
        for k, v in overrides.items():
            apply_override(d, k, v)
        return RunConfig.from_dict(d, self.source, self.base_dir)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run configuration TOML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Run config not found: {p}")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}).") from exc
    return RunConfig.from_dict(raw, source=str(p), base_dir=p.resolve().parent)


def apply_override(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d[a][b] = value`` for ``dotted = "a.b"`` (creating tables as needed)."""
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        if not isinstance(cur.get(p, {}), dict):
            raise ConfigError(f"Cannot set {dotted!r}: {p!r} is not a table.")
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def _bare(word: str) -> Any:
    """A bare grid value: a JSON number or true/false when it is one, else the string."""
    try:
        value = json.loads(word)
    except json.JSONDecodeError:
        return word
    return value if isinstance(value, int | float | bool) else word


def parse_grid(spec: str) -> tuple[str, list[Any]]:
    """Parse ``'learner.window=[2,4,6,8]'`` into ``("learner.window", [2, 4, 6, 8])``.

    The key is a dotted config key, or ``seed`` (each point then runs with that seed).

    Values are JSON (numbers, strings in double quotes, true/false); bare words are strings,
    and in a list that is not JSON (``[mlp,lstm]``, or ``10,20`` without brackets) each value
    that is a number or true/false is read as one.
    """
    if "=" not in spec:
        raise ConfigError(f"A --grid must look like 'section.key=[v1,v2,...]', got {spec!r}.")
    key, _, vals = spec.partition("=")
    key, vals = key.strip(), vals.strip()
    if not key or ("." not in key and key != "seed"):
        raise ConfigError(f"A --grid key must be dotted like 'learner.window' (or be 'seed'), "
                          f"got {key!r}.")
    try:
        parsed = json.loads(vals)
    except json.JSONDecodeError:  # bare words: [mlp,lstm], or no brackets: 10,20
        parsed = [_bare(v.strip()) for v in vals.strip("[]").split(",") if v.strip()]
    if not isinstance(parsed, list) or not parsed:
        raise ConfigError(f"A --grid value must be a non-empty list, got {vals!r} for {key!r}.")
    return key, parsed
