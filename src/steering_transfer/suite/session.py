"""The controller side of the plugin: records from test reports in, report files out.

:class:`RecordSession` is registered on the xdist controller (or in a plain run) only. It reads
the records the ``st_record`` fixture attached to each test report in
``pytest_runtest_logreport``, so ``pytest -n 2`` sees exactly what a serial run sees; at session
end it merges them into ``<reports>/results.json`` and renders every Markdown report (the main
``leaderboard.md`` and the files :class:`~steering_transfer.suite.TableSpec` entries name, as
returned by the ``pytest_steering_transfer_tables`` hook).

Two runs may share one reports directory: the read-merge-write of ``results.json`` and the
rendering of the reports happen under an exclusive lock (``fcntl.flock`` on
``<reports>/.results.lock``), so the second run merges into what the first wrote and no row is
lost. A run waits at most ``$STEERING_TRANSFER_LOCK_TIMEOUT`` seconds (default 300) for it. When
the reports cannot be written (the lock times out, ``results.json`` is unreadable, the directory
is not writable) the run fails: the reason is printed and the exit status is made non-zero.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import time
from collections.abc import Iterable, Iterator
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
from .options import LOCK_TIMEOUT_ENV, settings
from .paper import PAPER_FILE, REPORT_FILE, PaperFile, load_paper, render_paper_report
from .records import Record, ResultRow, source_commit

__all__ = [
    "LOCK_FILE",
    "RESULTS_FILE",
    "SELECTION_ERROR",
    "SESSION_PLUGIN_NAME",
    "RecordSession",
    "reports_dir_problem",
    "reports_lock",
    "table_specs",
]

RESULTS_FILE = "results.json"
#: The lock file in the reports directory, held while a run merges and writes its reports.
LOCK_FILE = ".results.lock"
#: ``workeroutput`` key through which an xdist worker reports a bad selection option.
SELECTION_ERROR = "steering_transfer_selection_error"
#: Tests only: seconds a run sleeps between reading and writing ``results.json`` (lock held),
#: so that a test can make two runs overlap.
MERGE_DELAY_ENV = "STEERING_TRANSFER_TEST_MERGE_DELAY"
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


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def reports_lock(folder: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on ``<folder>/.results.lock`` (created with ``folder``).

    Waits at most ``timeout`` seconds for another holder, then raises
    :class:`SteeringTransferError` naming the lock file and the holder's pid. The lock is
    ``fcntl.flock``: the system drops it when its holder dies, so a left-over lock file never
    blocks. Without ``fcntl`` (Windows) there is no cross-process lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        yield
        return
    with path.open("a+") as fh:  # "a+": opening must not truncate the holder's pid
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SteeringTransferError(
                        f"could not lock {path} within {timeout:g} s: another pytest run"
                        f"{_lock_holder(path)} is writing reports there; let it finish (or "
                        f"raise ${LOCK_TIMEOUT_ENV}) and re-run, or pass another --reports-dir"
                    ) from None
                time.sleep(0.05)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reports_dir_problem(folder: Path) -> str | None:
    """Why reports cannot be written to ``folder`` (``None`` when they can), without creating it:
    it is not a directory, cannot be created or written, or holds an unreadable results.json."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is not a directory"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{folder} cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == folder else f"cannot be created in {existing}"
        return f"{folder} {what} (permission denied)"
    results = folder / RESULTS_FILE
    if results.exists():
        try:
            load_results(results)
        except SteeringTransferError as exc:
            return (
                f"the existing results cannot be merged: {exc}; fix or delete that file, pass "
                "another --reports-dir, or --no-reports"
            )
    return None


class RecordSession:
    """Controller-side collector: records from reports in, results.json + reports out."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = settings(config)
        self.found: dict[tuple[str, str], list[tuple[str, int, ResultRow]]] = {}
        self.baseline_notes: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []  # warnings: results.json was still written
        self.errors: list[str] = []  # the reports were not written: the run fails
        self.usage_errors: list[str] = []  # from xdist workers: the run is a usage error
        self.summary: list[str] = []
        self.today = dt.date.today().isoformat()
        self.versions = package_versions()
        # once per run: two git calls, no torch; the reports it rewrites are not code
        self.commit = source_commit(config.rootpath, self.settings.reports_dir)
        self.paper = self._load_paper()

    def _load_paper(self) -> PaperFile | None:
        """``<rootdir>/fixtures/paper.toml`` when it exists and reports will be written, checked
        now: a typo there must stop the run before the benchmark, not after it."""
        path = self.config.rootpath / PAPER_FILE
        if not self.settings.write_reports or not path.is_file():
            return None
        try:
            return load_paper(path)
        except SteeringTransferError as exc:
            raise pytest.UsageError(f"{exc} (or pass --no-reports)") from exc

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: a worker that found a bad selection option ran nothing; report its message."""
        message = getattr(node, "workeroutput", {}).get(SELECTION_ERROR)
        if message and message not in self.usage_errors:
            self.usage_errors.append(message)

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
                row = ResultRow(
                    record, report.nodeid, _outcome(report), self.today, self.versions,
                    commit=self.commit,
                )
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
        if self.usage_errors:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        rows = self._rows()
        if not rows:
            return
        conf = self.settings
        if not conf.write_reports:
            self.summary.append(f"--no-reports: {_plural(len(rows), 'record')} not written")
            return
        try:
            with reports_lock(conf.reports_dir, conf.lock_timeout):
                self._merge_and_write(rows)
        except SteeringTransferError as exc:  # lock timeout, unreadable results.json
            self.errors.append(str(exc))
        except OSError as exc:  # not a directory, not writable, disk full
            self.errors.append(f"writing reports to {_relative(conf.reports_dir)} failed: {exc}")
        if self.errors and session.exitstatus in (
            pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _merge_and_write(self, rows: list[ResultRow]) -> None:
        """Read, merge and write results.json and the reports (the caller holds the lock)."""
        results_path = self.settings.reports_dir / RESULTS_FILE
        existing: dict[tuple[str, str], ResultRow] = {}
        if results_path.exists():
            try:
                existing = load_results(results_path)
            except SteeringTransferError as exc:
                raise SteeringTransferError(
                    f"nothing written, the existing results cannot be merged: {exc}; "
                    "fix or delete that file (or pass another --reports-dir) and re-run"
                ) from exc
        delay = os.environ.get(MERGE_DELAY_ENV)
        if delay:
            time.sleep(float(delay))
        merged, replaced = merge_rows(existing, rows)
        write_text(results_path, results_json(merged.values()))
        written = [_relative(results_path), *self._write_reports(list(merged.values()))]
        self.summary.append(
            f"{_plural(len(rows), 'record')} ({len(rows) - replaced} new, {replaced} replaced; "
            f"{len(merged)} rows in total) -> {', '.join(written)}"
        )

    def _write_reports(self, rows: list[ResultRow]) -> list[str]:
        """Render every Markdown report of ``rows`` (with its plots); the paths written."""
        try:
            tables = table_specs(self.config)
        except SteeringTransferError as exc:
            self.problems.append(f"no Markdown report written: {exc}")
            return []
        from .plots import PLOTS_DIR, write_plots  # matplotlib loads only if there is data

        folder = self.settings.reports_dir
        try:
            plots = write_plots(rows, folder, tables=tables)
        except Exception as exc:  # a picture must not cost the reports; results.json is safe
            self.problems.append(f"plots not written: {exc!r}")
            plots = {}
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
                    plots=plots.get(filename, ()),
                )
            except Exception as exc:  # a third-party preamble callable; results.json is safe
                self.problems.append(f"{filename} not written: rendering failed: {exc!r}")
                continue
            path = self.settings.reports_dir / filename
            write_text(path, text)
            written.append(_relative(path))
        written += self._write_paper_report(rows)
        if plots:
            count = len({path for paths in plots.values() for path in paths})
            written.append(f"{_relative(folder / PLOTS_DIR)}/ ({_plural(count, 'plot')})")
        return written

    def _write_paper_report(self, rows: list[ResultRow]) -> list[str]:
        """``paper_vs_ours.md`` from every row (see :mod:`.paper`); the path written, if any."""
        if self.paper is None:
            return []
        try:
            text = render_paper_report(
                self.paper, rows, date=self.today, command=self._command(),
                versions=self.versions,
            )
        except Exception as exc:  # results.json and the other reports are safe
            self.problems.append(f"{REPORT_FILE} not written: rendering failed: {exc!r}")
            return []
        path = self.settings.reports_dir / REPORT_FILE
        write_text(path, text)
        return [_relative(path)]

    def _command(self) -> str:
        return "pytest " + shlex.join(str(a) for a in self.config.invocation_params.args)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        notes = self._baseline_summary()
        if not (self.summary or self.problems or self.errors or self.usage_errors or notes):
            return
        terminalreporter.section("steering-transfer")
        for line in self.summary + notes:
            terminalreporter.write_line(line)
        for line in self.problems:
            terminalreporter.write_line(f"WARNING: {line}", yellow=True)
        for line in self.errors:
            terminalreporter.write_line(f"ERROR: {line} (the run fails)", red=True, bold=True)
        for line in self.usage_errors:
            terminalreporter.write_line(f"ERROR: {line}", red=True, bold=True)

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
