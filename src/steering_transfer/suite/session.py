"""The controller side of the plugin: records from test reports in, report files out.

:class:`RecordSession` is registered on the xdist controller (or in a plain run) only. It reads
the records the ``st_record`` fixture attached to each test report in
``pytest_runtest_logreport``, so ``pytest -n 2`` sees exactly what a serial run sees; at session
end it merges them into ``<reports>/results.json`` and renders every Markdown report (the main
``leaderboard.md`` and the files :class:`~steering_transfer.suite.TableSpec` entries name, as
returned by the ``pytest_steering_transfer_tables`` hook).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import write_text

from .baseline import load_results
from .fixtures import BASELINE_PROPERTY, RECORD_PROPERTY
from .leaderboard import (
    TableSpec,
    check_tables,
    merge_rows,
    package_versions,
    render_leaderboard,
    report_files,
    results_json,
)
from .options import settings
from .records import Record, ResultRow

__all__ = ["RESULTS_FILE", "SESSION_PLUGIN_NAME", "RecordSession", "table_specs"]

RESULTS_FILE = "results.json"
#: The name :class:`RecordSession` is registered under in the plugin manager.
SESSION_PLUGIN_NAME = "steering-transfer-session"


def table_specs(config: pytest.Config) -> tuple[TableSpec, ...]:
    """Every ``pytest_steering_transfer_tables`` implementation's specs, checked together."""
    found: list[TableSpec] = []
    for specs in config.hook.pytest_steering_transfer_tables(config=config):
        if isinstance(specs, TableSpec) or not isinstance(specs, Iterable):
            raise SteeringTransferError(
                "pytest_steering_transfer_tables must return a list of TableSpec (or None), "
                f"got {specs!r}"
            )
        found.extend(specs)
    return check_tables(found)


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xpassed" if report.passed else "xfailed"
    return str(report.outcome)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


class RecordSession:
    """Controller-side collector: records from reports in, results.json + reports out."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = settings(config)
        self.found: dict[tuple[str, str], list[tuple[str, int, ResultRow]]] = {}
        self.baseline_notes: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []
        self.summary: list[str] = []
        self.today = dt.date.today().isoformat()
        self.versions = package_versions()

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for index, (name, value) in enumerate(report.user_properties):
            if name == RECORD_PROPERTY:
                try:
                    record = Record.from_json(str(value))
                except (SteeringTransferError, ValueError, TypeError) as exc:
                    self.problems.append(f"{report.nodeid}: unreadable record ({exc})")
                    continue
                row = ResultRow(record, report.nodeid, _outcome(report), self.today, self.versions)
                self.found.setdefault(record.key, []).append((report.nodeid, index, row))
            elif name == BASELINE_PROPERTY:
                note = json.loads(str(value))
                self.baseline_notes[(note["table"], note["cell_id"])] = note["status"]

    def _rows(self) -> list[ResultRow]:
        """One row per (table, cell_id); a duplicate key is reported and resolved by node id."""
        rows = []
        for key in sorted(self.found):
            entries = sorted(self.found[key], key=lambda e: (e[0], e[1]))
            nodeids = sorted({e[0] for e in entries})
            if len(entries) > 1:
                self.problems.append(
                    f"cell {key[1]!r} of table {key[0]!r} was recorded {len(entries)} times "
                    f"({', '.join(nodeids)}); kept the one from {entries[-1][0]}. "
                    "Give every cell a unique cell_id"
                )
            rows.append(entries[-1][2])
        return rows

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        rows = self._rows()
        if not rows:
            return
        conf = self.settings
        if not conf.write_reports:
            self.summary.append(f"--no-reports: {_plural(len(rows), 'record')} not written")
            return
        results_path = conf.reports_dir / RESULTS_FILE
        existing: dict[tuple[str, str], ResultRow] = {}
        if results_path.exists():
            try:
                existing = load_results(results_path)
            except SteeringTransferError as exc:
                self.problems.append(
                    f"nothing written, the existing results cannot be merged: {exc}; "
                    "fix or delete that file and re-run"
                )
                return
        merged, replaced = merge_rows(existing, rows)
        write_text(results_path, results_json(merged.values()))
        written = [_relative(results_path), *self._write_reports(list(merged.values()))]
        self.summary.append(
            f"{_plural(len(rows), 'record')} ({len(rows) - replaced} new, {replaced} replaced; "
            f"{len(merged)} rows in total) -> {', '.join(written)}"
        )

    def _write_reports(self, rows: list[ResultRow]) -> list[str]:
        """Render every Markdown report of ``rows``; the paths written."""
        try:
            tables = table_specs(self.config)
        except SteeringTransferError as exc:
            self.problems.append(f"no Markdown report written: {exc}")
            return []
        written = []
        for filename, title, file_rows in report_files(rows, tables):
            try:
                text = render_leaderboard(
                    file_rows,
                    date=self.today,
                    command=self._command(),
                    versions=self.versions,
                    title=title,
                    tables=tables,
                )
            except Exception as exc:  # a third-party preamble callable; results.json is safe
                self.problems.append(f"{filename} not written: rendering failed: {exc!r}")
                continue
            path = self.settings.reports_dir / filename
            write_text(path, text)
            written.append(_relative(path))
        return written

    def _command(self) -> str:
        return "pytest " + shlex.join(str(a) for a in self.config.invocation_params.args)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        notes = self._baseline_summary()
        if not (self.summary or self.problems or notes):
            return
        terminalreporter.section("steering-transfer")
        for line in self.summary + notes:
            terminalreporter.write_line(line)
        for line in self.problems:
            terminalreporter.write_line(f"WARNING: {line}", yellow=True)

    def _baseline_summary(self) -> list[str]:
        if not self.baseline_notes:
            return []
        counts: dict[str, list[str]] = {}
        for (_, cell), status in sorted(self.baseline_notes.items()):
            counts.setdefault(status, []).append(cell)
        path = self.settings.baseline_path
        parts = ", ".join(f"{len(cells)} {status}" for status, cells in sorted(counts.items()))
        lines = [f"baseline {_relative(path) if path else ''}: {parts}"]
        if "new" in counts:
            lines.append("  not in baseline (passed unchecked): " + ", ".join(counts["new"]))
        return lines
