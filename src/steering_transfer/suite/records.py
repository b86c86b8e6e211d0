"""The record contract between benchmark cells and the reporting plugin.

A benchmark test computes its result, wraps it in a :class:`Record` and hands it to the
``st_record`` fixture. Records travel as JSON strings in ``TestReport.user_properties`` (so they
survive the hop from an xdist worker to the controller) and are stored in ``results.json`` as
:class:`ResultRow` objects, which add what the plugin knows about the run that produced them.

Everything is normalised on construction (tuples become lists, config keys are sorted, numpy or
torch scalars become Python numbers) so that ``Record.from_dict(r.to_dict()) == r`` and a record
serialises to the same bytes in every process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_transfer.config import reject_unknown_keys
from steering_transfer.errors import SteeringTransferError

__all__ = [
    "FORMAT_VERSION",
    "UNKNOWN_COMMIT",
    "Record",
    "ResultRow",
    "Scalar",
    "figure",
    "rate_figure",
    "source_commit",
]

#: Version of the ``results.json`` layout; bumped when a reader could misread an older file.
FORMAT_VERSION = 1

Scalar = str | int | float | bool | None
FIGURE_KEYS = ("value", "low", "high", "n")
#: ``ResultRow.commit`` when the code's commit cannot be told (no git checkout, no git).
UNKNOWN_COMMIT = "unknown"


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git -C root ARGS``, or ``None`` when git is missing, fails or hangs."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # status must not write
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
            env=env, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def source_commit(root: str | Path, outputs: str | Path | None = None) -> str:
    """The git commit the code under ``root`` is at: ``git rev-parse HEAD``, suffixed ``+dirty``
    when tracked files differ from it (or that cannot be checked); :data:`UNKNOWN_COMMIT` when
    ``root`` is not in a git checkout or git is missing.

    Why: a results row must say what code measured it, and a row measured on uncommitted changes
    must not pass for the commit's own figures. Untracked files (new reports, caches) do not
    count as dirty, nor do changes under ``outputs`` (the reports folder the run writes: an
    earlier run's regenerated reports are not a code change). Runs two git commands, no torch.
    """
    head = _git(Path(root), "rev-parse", "--verify", "HEAD")
    if not head or not head.strip():
        return UNKNOWN_COMMIT
    spec: list[str] = []
    if outputs is not None:
        spec = ["--", ":/", f":(exclude){Path(outputs).resolve()}"]
    status = _git(Path(root), "status", "--porcelain", "--untracked-files=no", *spec)
    dirty = status is None or bool(status.strip())
    return head.strip() + ("+dirty" if dirty else "")


def _scalar(value: Any, *, where: str) -> Scalar:
    """Coerce numpy/torch scalars to Python numbers; refuse anything a table cell cannot show."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SteeringTransferError(
                f"{where} is {value}; JSON cannot store NaN/inf, use None for a missing value"
            )
        return value
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalar, 0-dim tensor
        try:
            return _scalar(item(), where=where)
        except (ValueError, RuntimeError):
            pass
    raise SteeringTransferError(
        f"{where} must be a str, int, float, bool or None, got {type(value).__name__} {value!r}"
    )


def _optional_float(value: Any, *, where: str) -> float | None:
    if value is None:
        return None
    out = _scalar(value, where=where)
    if isinstance(out, bool) or not isinstance(out, int | float):
        raise SteeringTransferError(f"{where} must be a number or None, got {value!r}")
    return float(out)


def figure(
    value: float, low: float | None = None, high: float | None = None, n: int | None = None
) -> dict[str, Any]:
    """A figure dict ``{"value", "low", "high", "n"}``; ``low``/``high`` = 95 % interval of a rate.

    With an interval, a baseline check fails when a later value leaves ``[low, high]``;
    without one, it fails on a relative change above ``--baseline-tolerance``.
    """
    return _normalise_figure({"value": value, "low": low, "high": high, "n": n}, name="figure")


def rate_figure(rate: Any) -> dict[str, Any]:
    """Figure from a :class:`steering_transfer.metrics.Rate` (value, Wilson interval, n)."""
    return figure(rate.rate, rate.low, rate.high, rate.n)


def _normalise_figure(raw: Any, *, name: str) -> dict[str, Any]:
    where = f"figures[{name!r}]"
    if hasattr(raw, "rate") and hasattr(raw, "low") and hasattr(raw, "n"):
        raw = {"value": raw.rate, "low": raw.low, "high": raw.high, "n": raw.n}  # a Rate
    elif isinstance(raw, int | float):  # a bare number: a figure without interval
        raw = {"value": raw}
    if not isinstance(raw, Mapping):
        raise SteeringTransferError(
            f"{where} must be a dict {{'value', 'low', 'high', 'n'}} (see suite.figure()), "
            f"got {type(raw).__name__}"
        )
    reject_unknown_keys(raw, FIGURE_KEYS, where=where)
    value = _optional_float(raw.get("value"), where=f"{where}['value']")
    if value is None:
        raise SteeringTransferError(f"{where} needs a numeric 'value'")
    low = _optional_float(raw.get("low"), where=f"{where}['low']")
    high = _optional_float(raw.get("high"), where=f"{where}['high']")
    if (low is None) != (high is None):
        raise SteeringTransferError(f"{where} must give both 'low' and 'high', or neither")
    if low is not None and high is not None and low > high:
        raise SteeringTransferError(f"{where} has low={low} > high={high}")
    n = raw.get("n")
    if n is not None:
        n = _scalar(n, where=f"{where}['n']")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SteeringTransferError(f"{where}['n'] must be a non-negative int, got {n!r}")
    return {"value": value, "low": low, "high": high, "n": n}


def _plain_json(obj: Any, *, where: str) -> Any:
    """JSON-normal form with sorted keys, so a config serialises identically everywhere."""
    try:
        text = json.dumps(obj, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise SteeringTransferError(
            f"{where} must be JSON-serialisable (str, numbers, lists, dicts; no NaN): {exc}"
        ) from exc
    return json.loads(text)


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} {obj!r} is not JSON-serialisable")


@dataclass
class Record:
    """One leaderboard row produced by one benchmark cell.

    ``columns`` are what the leaderboard shows, in order; ``figures`` are the numbers regression
    checks compare against a baseline; ``config`` is what reproduces the cell (seed, n, layers,
    mapper hyperparameters). ``sort_key`` names the column the table is sorted by, descending.
    """

    table: str
    cell_id: str
    columns: dict[str, Scalar] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    sort_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("table", "cell_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise SteeringTransferError(
                    f"Record.{name} must be a non-empty string, got {value!r}"
                )
        if not isinstance(self.columns, Mapping):
            raise SteeringTransferError(
                f"Record.columns must be a dict of column name -> value, "
                f"got {type(self.columns).__name__}"
            )
        self.columns = {
            str(k): _scalar(v, where=f"Record({self.cell_id!r}).columns[{k!r}]")
            for k, v in self.columns.items()
        }
        if not isinstance(self.figures, Mapping):
            raise SteeringTransferError(
                f"Record.figures must be a dict of name -> figure, "
                f"got {type(self.figures).__name__}"
            )
        self.figures = {str(k): _normalise_figure(v, name=str(k)) for k, v in self.figures.items()}
        if not isinstance(self.config, Mapping):
            raise SteeringTransferError(
                f"Record.config must be a dict, got {type(self.config).__name__}"
            )
        self.config = _plain_json(dict(self.config), where=f"Record({self.cell_id!r}).config")
        if self.sort_key is not None and self.sort_key not in self.columns:
            raise SteeringTransferError(
                f"Record({self.cell_id!r}).sort_key={self.sort_key!r} is not one of its columns "
                f"{list(self.columns)}; name a column or pass None"
            )

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the row in ``results.json``: a re-run replaces the row with the same key."""
        return (self.table, self.cell_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "cell_id": self.cell_id,
            "columns": dict(self.columns),
            "figures": {k: dict(v) for k, v in self.figures.items()},
            "config": self.config,
            "sort_key": self.sort_key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        if not isinstance(data, Mapping):
            raise SteeringTransferError(
                f"a record must be a JSON object, got {type(data).__name__}"
            )
        missing = [k for k in ("table", "cell_id") if k not in data]
        if missing:
            raise SteeringTransferError(f"record is missing required keys {missing}: {data!r}")
        return cls(
            table=data["table"],
            cell_id=data["cell_id"],
            columns=dict(data.get("columns") or {}),
            figures=dict(data.get("figures") or {}),
            config=dict(data.get("config") or {}),
            sort_key=data.get("sort_key"),
        )

    def to_json(self) -> str:
        """Compact JSON, the form carried in ``user_properties``."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Record:
        return cls.from_dict(json.loads(text))


@dataclass
class ResultRow:
    """A :class:`Record` as stored in ``results.json``: plus where, when and with what it ran.

    ``recorded`` is the run's date (the only time stamp kept per row), ``commit`` the git commit
    of the code that ran (:func:`source_commit`; empty in rows written before it was recorded)
    and ``versions`` the package versions of that run, so rows merged from earlier runs stay
    honest about their origin. None of the three is part of a row's identity or its figures:
    merging replaces rows by :attr:`key` and baseline checks compare :attr:`record` only.
    """

    record: Record
    nodeid: str = ""
    outcome: str = "passed"
    recorded: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    commit: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.record.key

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "recorded": self.recorded,
            "commit": self.commit,
            "versions": dict(sorted(self.versions.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        return cls(
            record=Record.from_dict(data),
            nodeid=str(data.get("nodeid", "")),
            outcome=str(data.get("outcome", "passed")),
            recorded=str(data.get("recorded", "")),
            versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
            commit=str(data.get("commit") or ""),
        )
