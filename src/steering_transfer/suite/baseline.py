"""Regression checks of a record's figures against a stored baseline ``results.json``.

A figure with a 95 % interval in the baseline fails when the new value leaves that interval
(either way: an improvement also means the baseline is stale and should be refreshed). A figure
without an interval fails on a relative change above the tolerance (absolute change when the
baseline value is 0). Cells or figures the baseline does not know pass, with a note.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from steering_transfer.errors import SteeringTransferError

from .records import FORMAT_VERSION, Record, ResultRow

__all__ = ["Baseline", "Comparison", "FigureCheck", "compare", "load_results"]

DEFAULT_TOLERANCE = 0.1


def load_results(path: str | Path) -> dict[tuple[str, str], ResultRow]:
    """Rows of a ``results.json`` keyed by ``(table, cell_id)``; a directory means its results.json.

    Raises :class:`SteeringTransferError` naming the file when it is missing or malformed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise SteeringTransferError(
            f"results file {str(path)!r} does not exist; pass a results.json written by a "
            "previous run (e.g. reports/results.json) or the directory holding it"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SteeringTransferError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list):
        raise SteeringTransferError(
            f"{path} is not a steering-transfer results file (expected an object with 'rows')"
        )
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SteeringTransferError(
            f"{path} has format_version {version!r}; this version of steering-transfer reads "
            f"{FORMAT_VERSION}. Re-create it with the current version"
        )
    rows: dict[tuple[str, str], ResultRow] = {}
    for i, raw in enumerate(data["rows"]):
        try:
            row = ResultRow.from_dict(raw)
        except SteeringTransferError as exc:
            raise SteeringTransferError(f"{path}: rows[{i}] is invalid: {exc}") from exc
        rows[row.key] = row
    return rows


@dataclass
class FigureCheck:
    """The verdict on one figure: ``status`` is ok, FAIL, new (not in baseline) or missing."""

    name: str
    current: float | None
    baseline: float | None
    low: float | None
    high: float | None
    tolerance: float | None
    status: str

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def row(self) -> dict[str, Any]:
        if self.low is not None and self.high is not None:
            allowed = f"[{_fmt(self.low)}, {_fmt(self.high)}]"
        elif self.tolerance is not None and self.baseline is not None:
            allowed = f"±{self.tolerance:.0%} rel."
        else:
            allowed = ""
        change = ""
        if self.current is not None and self.baseline is not None:
            delta = self.current - self.baseline
            change = f"{delta:+.4g}"
            if self.baseline != 0:
                change += f" ({delta / abs(self.baseline):+.1%})"
        return {
            "figure": self.name,
            "baseline": _fmt(self.baseline),
            "allowed": allowed,
            "current": _fmt(self.current),
            "change": change,
            "status": self.status,
        }


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


@dataclass
class Comparison:
    """All figure checks of one cell against the baseline."""

    cell_id: str
    table: str
    source: str
    checks: list[FigureCheck] = field(default_factory=list)
    in_baseline: bool = True

    @property
    def failed(self) -> bool:
        return any(c.failed for c in self.checks)

    @property
    def status(self) -> str:
        if not self.in_baseline:
            return "new"
        return "failed" if self.failed else "ok"

    def table_text(self) -> str:
        """The diff as a GitHub-style table (what the assertion message shows)."""
        return tabulate([c.row() for c in self.checks], headers="keys", tablefmt="github")

    def message(self) -> str:
        if not self.in_baseline:
            return f"cell {self.cell_id!r} (table {self.table!r}) is not in baseline {self.source}"
        bad = [c.name for c in self.checks if c.failed]
        head = (
            f"steering-transfer baseline regression in cell {self.cell_id!r} "
            f"(table {self.table!r}): {', '.join(bad) or 'no figure'} outside the allowed range "
            f"of baseline {self.source}"
        )
        return f"{head}\n\n{self.table_text()}\n"


def _check(
    name: str, current: Mapping[str, Any] | None, base: Mapping[str, Any] | None, tolerance: float
) -> FigureCheck:
    cur = None if current is None else current["value"]
    if base is None:
        return FigureCheck(name, cur, None, None, None, None, "new")
    ref, low, high = base["value"], base.get("low"), base.get("high")
    if cur is None:
        return FigureCheck(name, None, ref, low, high, tolerance, "missing")
    if low is not None and high is not None:
        ok = low <= cur <= high
        return FigureCheck(name, cur, ref, low, high, None, "ok" if ok else "FAIL")
    scale = abs(ref) if ref != 0 else 1.0
    ok = abs(cur - ref) <= tolerance * scale
    return FigureCheck(name, cur, ref, None, None, tolerance, "ok" if ok else "FAIL")


def compare(
    record: Record,
    baseline: Record | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    source: str = "baseline",
) -> Comparison:
    """Check every figure of ``record`` against the same-named figure of ``baseline``."""
    if tolerance < 0:
        raise SteeringTransferError(f"tolerance must be >= 0, got {tolerance}")
    comparison = Comparison(record.cell_id, record.table, source, in_baseline=baseline is not None)
    if baseline is None:
        return comparison
    names = list(record.figures) + sorted(set(baseline.figures) - set(record.figures))
    for name in names:
        comparison.checks.append(
            _check(name, record.figures.get(name), baseline.figures.get(name), tolerance)
        )
    return comparison


class Baseline:
    """A loaded baseline file; :meth:`check` raises ``AssertionError`` with the diff table."""

    def __init__(self, path: str | Path, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.path = Path(path)
        self.tolerance = tolerance
        self.rows = load_results(self.path)

    def lookup(self, record: Record) -> Record | None:
        """The baseline row with the same (table, cell_id), else the one with the same cell_id.

        The fallback keeps a baseline usable after a table is renamed, as long as the cell id
        is unambiguous in the baseline file.
        """
        row = self.rows.get(record.key)
        if row is None:
            same_id = [r for key, r in self.rows.items() if key[1] == record.cell_id]
            row = same_id[0] if len(same_id) == 1 else None
        return None if row is None else row.record

    def compare(self, record: Record) -> Comparison:
        return compare(record, self.lookup(record), tolerance=self.tolerance, source=str(self.path))

    def check(self, record: Record) -> Comparison:
        comparison = self.compare(record)
        if comparison.failed:
            raise AssertionError(comparison.message())
        return comparison
