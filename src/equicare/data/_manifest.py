"""The dataset manifest (Contract 1): which column plays which role.

A manifest is a small TOML file. Parsing checks every key: unknown keys get a suggestion of the
closest known key, values of the wrong type name the key, the expected type and what arrived.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equicare.exceptions import ManifestError
from equicare.spaces import ActionComponent, FactoredActionSpace

__all__ = ["Manifest", "ActionColumn", "RewardComponent", "read_manifest", "DATASET_KEYS"]

#: Keys allowed in the ``[dataset]`` table, with their expected type description.
DATASET_KEYS: dict[str, str] = {
    "episode": "a column name (string)",
    "time": "a column name (string)",
    "states": "a list of column names",
    "categorical_states": "a list of column names",
    "mediators": "a list of column names",
    "groups": "a list of column names",
    "terminal": "a column name (string)",
    "behavior_prob": "a column name (string)",
    "need": "a column name (string)",
    "member": "a column name (string)",
    "gamma": "a number in (0, 1]",
    "table": "a DuckDB table name (string)",
}
_TOP_KEYS = ("dataset", "actions", "reward")
_ACTION_KEYS = ("levels", "column")
_REWARD_KEYS = ("column", "weight")


@dataclass(frozen=True)
class ActionColumn:
    """One action component and the column that holds it.

    Parameters
    ----------
    name : str
        Component name (the TOML key).
    column : str
        Table column (defaults to the name).
    levels : tuple of str
        Level labels; a column may hold labels or integer codes ``0..len(levels)-1``.
    integer_levels : bool
        True when the manifest gave ``levels = N`` (integer codes only).
    """

    name: str
    column: str
    levels: tuple[str, ...]
    integer_levels: bool = False


@dataclass(frozen=True)
class RewardComponent:
    """A reward component: ``R = sum_k weight_k * column_k``."""

    name: str
    column: str
    weight: float = 1.0


@dataclass(frozen=True)
class Manifest:
    """Roles of the columns of a panel table (Contract 1).

    Attributes mirror the TOML keys; see the README for the format.
    """

    episode: str
    time: str
    actions: tuple[ActionColumn, ...]
    reward: tuple[RewardComponent, ...]
    states: tuple[str, ...] = ()
    categorical_states: tuple[str, ...] = ()
    mediators: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    terminal: str | None = None
    behavior_prob: str | None = None
    need: str | None = None
    member: str | None = None
    gamma: float = 0.99
    table: str | None = None
    source: str = field(default="<manifest>", compare=False)

    @property
    def action_space(self) -> FactoredActionSpace:
        """The factored action space declared by the manifest."""
        return FactoredActionSpace(tuple(ActionComponent(a.name, a.levels) for a in self.actions))

    @property
    def label_columns(self) -> list[str]:
        """The columns that hold labels, not quantities: read from CSV as text (Contract 1).

        The episode id, the categorical states, the group attributes and the action columns
        whose levels are labels (not ``levels = N``).
        """
        cols = [self.episode, *self.categorical_states, *self.groups]
        cols += [self.member] if self.member else []
        cols += [a.column for a in self.actions if not a.integer_levels]
        return list(dict.fromkeys(cols))

    @property
    def named_columns(self) -> list[str]:
        """Every column the manifest names, in a stable order, without repeats."""
        cols: list[str] = [
            self.episode,
            self.time,
            *self.states,
            *self.categorical_states,
            *self.mediators,
            *self.groups,
        ]
        cols += [a.column for a in self.actions] + [r.column for r in self.reward]
        cols += [c for c in (self.terminal, self.behavior_prob, self.need, self.member) if c]
        return list(dict.fromkeys(cols))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """TOML-shaped dictionary (inverse of :meth:`from_dict`)."""
        ds: dict[str, Any] = {"episode": self.episode, "time": self.time}
        for key in ("states", "categorical_states", "mediators", "groups"):
            if getattr(self, key):
                ds[key] = list(getattr(self, key))
        for key in ("terminal", "behavior_prob", "need", "member", "table"):
            if getattr(self, key):
                ds[key] = getattr(self, key)
        ds["gamma"] = self.gamma
        actions: dict[str, Any] = {}
        for a in self.actions:
            entry: dict[str, Any] = {
                "levels": len(a.levels) if a.integer_levels else list(a.levels)
            }
            if a.column != a.name:
                entry["column"] = a.column
            actions[a.name] = entry
        reward = {r.name: {"column": r.column, "weight": r.weight} for r in self.reward}
        return {"dataset": ds, "actions": actions, "reward": reward}

    def to_toml(self) -> str:
        """Render the manifest as TOML text."""
        return _dump_toml(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "<manifest>") -> Manifest:
        """Parse and check a TOML-shaped dictionary; raise :class:`ManifestError` on problems."""
        problems: list[str] = []
        _check_keys(raw, _TOP_KEYS, "", source, problems)
        for key in ("dataset", "actions", "reward"):
            if key not in raw:
                problems.append(f"{source}: missing table [{key}].")
            elif not isinstance(raw[key], Mapping):
                problems.append(
                    f"{source}: [{key}] must be a table, got {type(raw[key]).__name__}."
                )
        if not isinstance(raw.get("dataset"), Mapping):
            raise ManifestError(
                problems[0]
                if len(problems) == 1
                else f"{len(problems)} problems in {source}:\n  " + "\n  ".join(problems),
                problems,
            )
        ds = raw["dataset"]
        _check_keys(ds, tuple(DATASET_KEYS), "dataset.", source, problems)
        kwargs: dict[str, Any] = {}
        for key in ("episode", "time"):
            if key not in ds:
                problems.append(f"{source}: missing key dataset.{key} ({DATASET_KEYS[key]}).")
            else:
                kwargs[key] = _want_str(ds[key], f"dataset.{key}", source, problems)
        for key in ("states", "categorical_states", "mediators", "groups"):
            if key in ds:
                kwargs[key] = _want_str_list(ds[key], f"dataset.{key}", source, problems)
        for key in ("terminal", "behavior_prob", "need", "member", "table"):
            if key in ds:
                kwargs[key] = _want_str(ds[key], f"dataset.{key}", source, problems)
        if "gamma" in ds:
            g = ds["gamma"]
            if isinstance(g, bool) or not isinstance(g, int | float) or not (0 < float(g) <= 1):
                problems.append(
                    f"{source}: dataset.gamma must be {DATASET_KEYS['gamma']}, got {g!r}."
                )
            else:
                kwargs["gamma"] = float(g)
        if not kwargs.get("states") and not kwargs.get("categorical_states"):
            if "states" not in ds and "categorical_states" not in ds:
                problems.append(
                    f"{source}: the manifest names no state columns; give dataset.states "
                    "and/or dataset.categorical_states."
                )
        if kwargs.get("episode") and kwargs.get("episode") == kwargs.get("time"):
            problems.append(
                f"{source}: dataset.episode and dataset.time both name column "
                f"{kwargs['episode']!r}; the episode id and the step within it must be two "
                "columns."
            )
        both = set(kwargs.get("states", ())) & set(kwargs.get("categorical_states", ()))
        if both:
            problems.append(
                f"{source}: column(s) {sorted(both)} are in both dataset.states and "
                "dataset.categorical_states; put each in one of them."
            )
        if isinstance(raw.get("actions"), Mapping):
            kwargs["actions"] = _parse_actions(raw["actions"], source, problems)
        if isinstance(raw.get("reward"), Mapping):
            kwargs["reward"] = _parse_reward(raw["reward"], source, problems)
        if problems:
            msg = (
                problems[0]
                if len(problems) == 1
                else f"{len(problems)} problems in {source}:\n  " + "\n  ".join(problems)
            )
            raise ManifestError(msg, problems)
        return cls(source=source, **kwargs)


def read_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest TOML file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Manifest

    Raises
    ------
    ManifestError
        If the file is missing, not valid TOML, or has unknown / missing / mistyped keys.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"Manifest file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{p}: not valid TOML ({exc}).") from exc
    return Manifest.from_dict(raw, source=str(p))


# ---------------------------------------------------------------------------- helpers
def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}."


def _check_keys(
    table: Mapping[str, Any], known: tuple[str, ...], prefix: str, source: str, problems: list[str]
) -> None:
    for key in table:
        if key not in known:
            problems.append(f"{source}: unknown key {prefix}{key}{_suggest(key, known)}")


def _want_str(value: Any, key: str, source: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value:
        problems.append(f"{source}: {key} must be a column name (non-empty string), got {value!r}.")
        return ""
    return value


def _want_str_list(value: Any, key: str, source: str, problems: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{source}: {key} must be a list of column names, got {value!r}.")
        return ()
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        problems.append(f"{source}: {key} lists column(s) {dup} more than once.")
    return tuple(value)


def _parse_actions(raw: Any, source: str, problems: list[str]) -> tuple[ActionColumn, ...]:
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"{source}: [actions] must declare at least one action component.")
        return ()
    out = []
    for name, spec in raw.items():
        key = f"actions.{name}"
        if not isinstance(spec, Mapping):
            problems.append(
                f"{source}: {key} must be a table with 'levels' (a list of labels or a "
                f"count), got {spec!r}."
            )
            continue
        _check_keys(spec, _ACTION_KEYS, key + ".", source, problems)
        levels = spec.get("levels")
        column = spec.get("column", name)
        if not isinstance(column, str) or not column:
            problems.append(f"{source}: {key}.column must be a column name, got {column!r}.")
            continue
        if isinstance(levels, bool) or levels is None:
            problems.append(
                f"{source}: {key}.levels is required: a list of labels or a positive integer count."
            )
        elif isinstance(levels, int):
            if levels < 1:
                problems.append(f"{source}: {key}.levels must be a positive integer, got {levels}.")
            else:
                out.append(ActionColumn(name, column, tuple(str(i) for i in range(levels)), True))
        elif isinstance(levels, list) and levels:
            labels = tuple(str(v) for v in levels)
            if len(set(labels)) != len(labels):
                problems.append(f"{source}: {key}.levels has duplicated labels {list(labels)}.")
            else:
                out.append(ActionColumn(name, column, labels, False))
        else:
            problems.append(
                f"{source}: {key}.levels must be a non-empty list of labels or a "
                f"positive integer, got {levels!r}."
            )
    return tuple(out)


def _parse_reward(raw: Any, source: str, problems: list[str]) -> tuple[RewardComponent, ...]:
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"{source}: [reward] must name a column or weighted components.")
        return ()
    if "column" in raw and not isinstance(raw["column"], Mapping):
        # single-column form: [reward] column = "r"
        extra = [k for k in raw if k not in ("column", "weight")]
        for k in extra:
            problems.append(f"{source}: unknown key reward.{k}{_suggest(k, _REWARD_KEYS)}")
        col = _want_str(raw["column"], "reward.column", source, problems)
        w = raw.get("weight", 1.0)
        if not _finite_number(w):
            problems.append(f"{source}: reward.weight must be a finite number, got {w!r}.")
            return ()
        return (RewardComponent("reward", col, float(w)),)
    out = []
    for name, spec in raw.items():
        key = f"reward.{name}"
        if isinstance(spec, str):
            out.append(RewardComponent(name, spec, 1.0))
            continue
        if not isinstance(spec, Mapping):
            problems.append(
                f"{source}: {key} must be {{ column = ..., weight = ... }}, got {spec!r}."
            )
            continue
        _check_keys(spec, _REWARD_KEYS, key + ".", source, problems)
        if "column" not in spec:
            problems.append(f"{source}: {key}.column is required.")
            continue
        col = _want_str(spec["column"], f"{key}.column", source, problems)
        w = spec.get("weight", 1.0)
        if not _finite_number(w):
            problems.append(f"{source}: {key}.weight must be a finite number, got {w!r}.")
            continue
        out.append(RewardComponent(name, col, float(w)))
    return tuple(out)


def _finite_number(w: Any) -> bool:
    return isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(float(w))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ManifestError(f"Cannot write {type(v).__name__} to TOML (value {v!r}); expected a "
                        "bool, number, string, list or table.")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def _dump_toml(d: Mapping[str, Any]) -> str:
    lines: list[str] = []
    ds = d["dataset"]
    lines.append("[dataset]")
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in ds.items()]
    lines.append("")
    for name, spec in d["actions"].items():
        lines.append(f"[actions.{_toml_key(name)}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.items()]
        lines.append("")
    lines.append("[reward]")
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d["reward"].items()]
    return "\n".join(lines) + "\n"


def manifest_of(manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str]) -> Manifest:
    """A :class:`Manifest` from a manifest, its dict form or the path of its TOML file."""
    if isinstance(manifest, Manifest):
        return manifest
    if isinstance(manifest, Mapping):
        return Manifest.from_dict(manifest)
    return read_manifest(Path(manifest))
