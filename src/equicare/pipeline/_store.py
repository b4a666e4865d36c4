"""The run store: an embedded DuckDB database of runs and metrics, plus an artifact folder per run.

Writes are atomic at the level that matters to a reader: a run's row is created as ``running``;
its artifacts are written into ``<root>/<run_id>.partial/`` and renamed to ``<root>/<run_id>/`` only
when everything is there; its metrics and its ``finished`` status are committed in one
transaction. A run that is killed stays ``running`` until the store is next opened, when runs
whose process is gone are marked ``interrupted``. A run stopped by a user mistake (bad config
or data, :data:`USER_ERRORS`) before its first stage finished is removed (:meth:`RunStore.discard`);
one that fails later is kept as ``failed``. Earlier runs are never touched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from equicare._provenance import file_fingerprint, git_revision
from equicare.exceptions import (
    USER_ERRORS,
    EquicareError,
    InvalidParameterError,
    UnknownNameError,
)

__all__ = ["RunStore", "Metric", "config_hash", "git_revision", "USER_ERRORS", "INPUTS_FILE",
           "file_fingerprint"]

#: A run folder's record of the files the run read (:meth:`RunStore.write_inputs`).
INPUTS_FILE = "inputs.json"


#: The run store stayed locked by another process (tests match it).
MSG_STORE_LOCKED = ("The run store {db} is locked by another process and stayed locked for 30 s "
                    "({detail}). Close that connection (a DuckDB session on the file, or an "
                    "equicare command that hangs) and run the command again.")

#: The run store's database cannot be opened for another reason than a lock (tests match it).
MSG_STORE_UNOPENED = ("Cannot open the run store {db} ({detail}). To only read a store (runs "
                      "list, show, compare), read access to it is enough.")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    config_hash VARCHAR,
    config_json VARCHAR,
    started TIMESTAMP,
    finished TIMESTAMP,
    status VARCHAR,
    git_revision VARCHAR,
    equicare_version VARCHAR,
    seed BIGINT,
    host VARCHAR,
    pid BIGINT,
    message VARCHAR
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR,
    name VARCHAR,
    grp VARCHAR,
    value DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE
);
"""


@dataclass(frozen=True)
class Metric:
    """One number of a run: ``name`` (e.g. ``ope.dr.learned``), optional group, value and CI."""

    name: str
    value: float | None
    group: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _pid_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell; leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Runs and metrics in DuckDB, artifacts in folders.

    Parameters
    ----------
    root : str or Path
        Folder holding ``equicare.duckdb`` and one artifact folder per run (default ``runs/``).
    """

    def __init__(self, root: str | os.PathLike[str] = "runs", *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only
        check_store_folder(self.root)
        self._made_root = not self.root.exists()  # what discard() may take back
        self.db_path = self.root / "equicare.duckdb"
        if read_only:  # to read a store one may not write (an auditor's copy): nothing changes
            self._made_db = False
            with self._connect():
                return
        self.root.mkdir(parents=True, exist_ok=True)
        self._made_db = not self.db_path.exists()
        with self._connect() as con:
            con.execute(_SCHEMA)
            self._mark_stale(con)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        import time

        import duckdb

        for attempt in range(50):  # another process may hold the write lock for a moment
            try:
                con = duckdb.connect(str(self.db_path), read_only=self.read_only)
                break
            except duckdb.IOException as exc:
                detail = " ".join(str(exc).split())
                if "lock" not in detail.lower():  # not busy: unreadable, read-only, ...
                    raise EquicareError(MSG_STORE_UNOPENED.format(
                        db=self.db_path, detail=detail)) from None
                if attempt == 49:  # ~30 s: not a moment; a user error, not a bug (exit 2)
                    raise EquicareError(MSG_STORE_LOCKED.format(
                        db=self.db_path, detail=detail)) from None
                time.sleep(0.1 + 0.02 * attempt)
        try:
            yield con
        finally:
            con.close()

    def _mark_stale(self, con: Any) -> None:
        rows = con.execute("SELECT run_id, pid, host FROM runs WHERE status = 'running'").fetchall()
        for run_id, pid, host in rows:
            if pid is not None and not _pid_alive(int(pid), host or ""):
                con.execute(
                    "UPDATE runs SET status = 'interrupted', message = 'process ended "
                    "before the run finished' WHERE run_id = ?",
                    [run_id],
                )

    # ------------------------------------------------------------------ lifecycle
    def start(self, config: dict[str, Any], *, name: str = "", seed: int | None = None) -> str:
        """Register a new run as ``running`` and create its partial artifact folder."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        h = config_hash(config)
        run_id = f"{stamp}-{h[:6]}-{os.getpid() % 10000:04d}"
        with self._connect() as con:
            while con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]:
                run_id += "x"
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', ?, ?, ?, ?, ?, NULL)",
                [
                    run_id,
                    name,
                    h,
                    json.dumps(config, sort_keys=True, default=str),
                    dt.datetime.now(dt.UTC).replace(tzinfo=None),
                    git_revision(),
                    _version(),
                    seed,
                    socket.gethostname(),
                    os.getpid(),
                ],
            )
        self.partial_dir(run_id).mkdir(parents=True, exist_ok=False)
        return run_id

    def partial_dir(self, run_id: str) -> Path:
        """Folder where a running run writes its artifacts."""
        return self.root / f"{run_id}.partial"

    def run_dir(self, run_id: str) -> Path:
        """Folder of a finished run's artifacts."""
        return self.root / run_id

    def finish(self, run_id: str, metrics: Iterable[Metric]) -> Path:
        """Publish the artifacts and commit metrics + ``finished`` status in one transaction.

        A SIGTERM during the commit is held until it is done; from then on it is ignored
        (:func:`equicare._signals.mark_committed`): the run is finished, and the command exits 0.
        """
        from equicare._signals import mark_committed, sigterm_deferred

        part, final = self.partial_dir(run_id), self.run_dir(run_id)
        if final.exists():
            raise FileExistsError(f"{final} exists; refusing to overwrite an earlier run.")
        rows = [
            (run_id, m.name, m.group, _num(m.value), _num(m.ci_low), _num(m.ci_high))
            for m in metrics
        ]
        with self._connect() as con:  # the store can be written: only then publish the files
            os.replace(part, final)
            con.execute("BEGIN TRANSACTION")
            try:
                if rows:
                    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", rows)
                con.execute(
                    "UPDATE runs SET status = 'finished', finished = ? WHERE run_id = ?",
                    [dt.datetime.now(dt.UTC).replace(tzinfo=None), run_id],
                )
                with sigterm_deferred():  # a SIGTERM now is handled once committed: ignored
                    con.execute("COMMIT")
                    mark_committed()  # recorded finished: a SIGTERM no longer fails the command
            except BaseException:
                con.execute("ROLLBACK")
                os.replace(final, part)
                raise
        return final

    def fail(self, run_id: str, status: str = "failed", message: str = "") -> None:
        """Mark a run ``failed`` or ``interrupted``.

        Its partial artifacts are kept for inspection.
        """
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished = ?, message = ? WHERE run_id = ?",
                [status, dt.datetime.now(dt.UTC).replace(tzinfo=None), message[:2000], run_id],
            )

    def write_inputs(self, run_id: str,
                     files: Mapping[str, Sequence[str | os.PathLike[str]]]) -> None:
        """Record the files a running run reads: ``inputs.json`` in its partial folder.

        ``files`` maps a role (``data``, ``manifest``) to the paths of that role (a sweep's
        grid may vary them); each gets :func:`file_fingerprint`. An empty list: none (a
        simulated panel, which the config's seed determines).
        """
        doc = {role: [file_fingerprint(f) for f in sorted({str(Path(x)) for x in paths})]
               for role, paths in files.items()}
        from equicare.utils import atomic_write_text

        atomic_write_text(self.partial_dir(run_id) / INPUTS_FILE,
                          json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def inputs(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``inputs.json`` (finished or partial folder), or None (an older run)."""
        rid = self.get_run(run_id)["run_id"]
        for d in (self.run_dir(rid), self.partial_dir(rid)):
            f = d / INPUTS_FILE
            if f.is_file():
                loaded: dict[str, Any] = json.loads(f.read_text(encoding="utf-8"))
                return loaded
        return None

    def inputs_diff(self, run_a: str, run_b: str) -> list[tuple[str, list[str], list[str]]]:
        """The input files two runs read that differ: ``(role, a's, b's)`` SHA-256 digests.

        Two runs whose configs name the same panel path read different data when the file
        changed between them (a panel regenerated in place); the digests say so. Runs without
        ``inputs.json`` (recorded before it existed) give no line.
        """
        ia, ib = self.inputs(run_a), self.inputs(run_b)
        if ia is None or ib is None:
            return []
        out = []
        for role in sorted(set(ia) | set(ib)):
            da = [f["sha256"] for f in ia.get(role, [])]
            db = [f["sha256"] for f in ib.get(role, [])]
            if sorted(da) != sorted(db):
                out.append((role, da, db))
        return out

    def discard(self, run_id: str) -> None:
        """Remove a run that did no work: its row, its metrics and its partial folder.

        For a user mistake found before the first stage finished (a config that does not fit
        the data): the command exits with an error and leaves no run behind. A store that this
        object created (no ``equicare.duckdb`` before) and that now holds no run is removed
        too, with its folder if it made it and it is empty: a mistake leaves no empty store.
        """
        with self._connect() as con:
            con.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            left = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        shutil.rmtree(self.partial_dir(run_id), ignore_errors=True)
        if self._made_db and not left:  # a store this run created holds nothing: take it back
            for f in (self.db_path, self.db_path.with_name(self.db_path.name + ".wal")):
                f.unlink(missing_ok=True)
            if self._made_root:
                with contextlib.suppress(OSError):  # not empty: something else is there
                    self.root.rmdir()

    # ------------------------------------------------------------------ queries
    def list_runs(self) -> pd.DataFrame:
        """All runs, newest first."""
        with self._connect() as con:
            return con.execute(
                "SELECT run_id, name, status, started, finished, seed, config_hash, "
                "git_revision FROM runs ORDER BY started DESC, run_id DESC"
            ).df()

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run's row by id or unique id prefix, as a dict.

        ``KeyError`` (:class:`~equicare.exceptions.UnknownNameError`) naming the recent runs if
        none matches, or every match of a prefix that matches several runs.
        """
        with self._connect() as con:
            df = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
            if df.empty:
                # allow a unique prefix
                df = con.execute("SELECT * FROM runs WHERE starts_with(run_id, ?) "
                                 "ORDER BY started DESC, run_id DESC", [run_id]).df()
                if len(df) > 1:
                    ids = [str(r) for r in df["run_id"]]
                    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
                    raise UnknownNameError(
                        f"Run id prefix {run_id!r} is ambiguous in {self.db_path}: it matches "
                        f"{len(ids)} runs ({', '.join(ids[:10])}{more}); give more characters "
                        "of the id.")
                if df.empty:
                    known = [
                        r[0]
                        for r in con.execute(
                            "SELECT run_id FROM runs ORDER BY started DESC LIMIT 5"
                        ).fetchall()
                    ]
                    raise UnknownNameError(
                        f"No run {run_id!r} in {self.db_path}; recent runs: {known}.")
        row = df.iloc[0].to_dict()
        row["config"] = json.loads(row.pop("config_json") or "{}")
        return row

    def metrics(self, run_id: str) -> pd.DataFrame:
        """Long table of a run's metrics: name, group, value, ci_low, ci_high."""
        rid = self.get_run(run_id)["run_id"]
        with self._connect() as con:
            return con.execute(
                'SELECT name, grp AS "group", value, ci_low, ci_high FROM metrics '
                "WHERE run_id = ? ORDER BY name, grp",
                [rid],
            ).df()

    def compare(self, run_a: str, run_b: str) -> pd.DataFrame:
        """Metrics of two runs side by side with their difference.

        A metric named after the run's learner (``ope.dr.bc``, ``audit.parity_gap_pp.awr``)
        is compared under its role, ``learned`` (``ope.dr.learned``), so two runs with
        different learners line up; :meth:`config_diff` says what else differs.
        """
        self.check_comparable(run_a, run_b)
        a, b = (_by_role(self.metrics(r), _learner(self.get_run(r)["config"]))
                for r in (run_a, run_b))
        key = ["name", "group"]
        a["group"] = a["group"].fillna("")
        b["group"] = b["group"].fillna("")
        m = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"))
        m["diff"] = m["value_b"] - m["value_a"]
        return m[key + ["value_a", "value_b", "diff"]]


    def check_comparable(self, run_a: str, run_b: str) -> None:
        """Raise :class:`InvalidParameterError` when one run is a sweep and the other is not.

        A sweep records ``sweep.*`` metrics, one per grid point, and nests its config under
        ``base.``; a single run records ``ope.*``/``audit.*`` metrics: no metric and no config
        key of the one lines up with the other's.
        """
        ra, rb = self.get_run(run_a), self.get_run(run_b)
        sweeps = [r["run_id"] for r in (ra, rb) if _is_sweep(r["config"])]
        if len(sweeps) == 1:
            single = rb if sweeps[0] == ra["run_id"] else ra
            raise InvalidParameterError(
                f"{sweeps[0]} is a sweep and {single['run_id']} a single run: they do not "
                "compare (a sweep records one sweep.* metric per grid point, a run its ope.* "
                "and audit.* metrics). Compare two runs or two sweeps; to set a sweep point "
                "against a run, rerun the point with `equicare run --seed S --set KEY=VALUE` "
                "(S is its seed column) and compare that run.")

    def config_diff(self, run_a: str, run_b: str) -> list[tuple[str, Any, Any]]:
        """The settings two runs' configs differ in: ``(dotted key, a, b)``, sorted.

        ``output.*`` (where results went and how: store, executor, jobs) and ``name`` are left
        out, also under a sweep's ``base.`` (its config is ``{"sweep": grid, "base": config}``).
        """
        self.check_comparable(run_a, run_b)
        fa, fb = (_flatten(self.get_run(r)["config"]) for r in (run_a, run_b))

        def setting(key: str) -> bool:
            k = key.removeprefix("base.")
            return not k.startswith("output.") and k != "name"

        keys = sorted(k for k in set(fa) | set(fb) if setting(k))
        return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]


def check_store_folder(root: str | os.PathLike[str]) -> None:
    """Raise :class:`InvalidParameterError` when ``root`` or a folder above it is a file.

    A run store is a folder (holding ``equicare.duckdb`` and one folder per run); for the
    database file itself the message names its folder.
    """
    path = Path(root)
    what = "a folder holding equicare.duckdb and one folder per run"
    if path.exists() and not path.is_dir():
        hint = (f"; pass its folder, {path.parent}" if path.name == "equicare.duckdb" else "")
        raise InvalidParameterError(
            f"The run store (--store, output.store) is {what}; {root} is a file{hint}.")
    for up in path.parents:
        if up.exists() and not up.is_dir():
            raise InvalidParameterError(
                f"The run store (--store, output.store) is {what}; {root} cannot be one "
                f"because {up} is a file.")


def _is_sweep(config: dict[str, Any]) -> bool:
    """A sweep's config is ``{"sweep": grid, "base": run config}`` (:func:`run_sweep`)."""
    return set(config) == {"sweep", "base"}


def _learner(config: dict[str, Any]) -> str:
    return str((config.get("learner") or {}).get("algo", "awr"))


def _by_role(metrics: pd.DataFrame, learner: str) -> pd.DataFrame:
    """Metric names with the learner's name segment replaced by ``learned``."""
    out = metrics.copy()
    out["name"] = [".".join("learned" if seg == learner else seg for seg in str(n).split("."))
                   for n in out["name"]]
    return out


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def _version() -> str:
    from equicare import __version__

    return __version__


def remove_partial(path: Path) -> None:
    """Delete a partial artifact folder (used by tests and cleanup)."""
    shutil.rmtree(path, ignore_errors=True)
