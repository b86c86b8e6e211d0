"""The pytest plugin pytest loads (``pytest11`` entry point ``steering_transfer``): hooks only.

Every pytest run in an environment with steering-transfer installed loads it, so it imports
neither torch nor transformers; it stays silent unless a test records something. Its parts:

* :mod:`~steering_transfer.suite.options`: ``--pairs/--mappers/--layers/--tasks``, the reports
  and baseline options, and their ini forms, parsed into ``Selection`` and ``Settings``;
* :mod:`~steering_transfer.suite.fixtures`: ``st_record`` (a benchmark test passes it a
  :class:`~steering_transfer.suite.Record` per cell; with ``--baseline`` it checks the figures)
  and ``st_selection``;
* :mod:`~steering_transfer.suite.session`: on the xdist controller (or in a plain run), the
  records from every test report merged into ``<reports>/results.json`` and rendered into
  ``leaderboard.md`` and the report files the suite's ``TableSpec``\\ s name;
* :mod:`~steering_transfer.suite.hookspecs`: ``pytest_steering_transfer_tables``, through
  which a suite's ``conftest.py`` declares its tables' report files and preambles, and
  ``pytest_steering_transfer_cells``, through which it declares every cell it could run.

The selection is strict: items carry :class:`~steering_transfer.suite.Cell`\\ s (marker
``st_cell``); a ``--pairs/--mappers/--layers/--tasks`` value that no cell has is a usage error
listing the valid values, and items whose cells do not match are deselected (items without the
marker are left alone). The reports directory is checked before the tests run (``--reports-dir``
when given, else once a collected test uses ``st_record``): a file, an unwritable location or an
unreadable ``results.json`` is a usage error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from steering_transfer.errors import SteeringTransferError

from . import hookspecs
from .fixtures import load_baseline, st_record, st_selection
from .options import Cell, add_options, selection, settings
from .session import SELECTION_ERROR, SESSION_PLUGIN_NAME, RecordSession, reports_dir_problem

__all__ = [
    "CELL_MARKER",
    "MARKERS",
    "declared_cells",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_unconfigure",
    "st_record",
    "st_selection",
]

#: The marker that tells the selection options what an item covers: ``st_cell(Cell(...), ...)``.
CELL_MARKER = "st_cell"

MARKERS = (
    "real: uses packaged pretrained models; deselected unless -m mentions 'real' or --run-real",
    "slow: takes more than a few seconds",
    f"{CELL_MARKER}(*cells): what the item covers for --pairs/--mappers/--layers/--tasks "
    "(steering_transfer.suite.Cell)",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    declared = {re.split(r"[(:]", line, maxsplit=1)[0].strip() for line in config.getini("markers")}
    for line in MARKERS:
        if re.split(r"[(:]", line, maxsplit=1)[0] not in declared:  # a project ini may have it
            config.addinivalue_line("markers", line)
    sel = selection(config)  # parse now so bad syntax stops the run before collection
    if sel.restricted:
        cells = declared_cells(config)  # the suite's conftest, when it is an initial one
        if cells:
            sel.check(cells)
    load_baseline(config)  # likewise a missing or malformed --baseline file
    conf = settings(config)
    controller = not hasattr(config, "workerinput")  # the xdist controller or a plain run
    named = conf.reports_origin is not None
    if controller and named and conf.write_reports and not _collect_only(config):
        _check_reports_dir(config)
    if controller:
        config.pluginmanager.register(RecordSession(config), SESSION_PLUGIN_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


def _collect_only(config: pytest.Config) -> bool:
    return bool(config.getoption("collectonly", False))


def _check_reports_dir(config: pytest.Config) -> None:
    conf = settings(config)
    problem = reports_dir_problem(conf.reports_dir)
    if problem is not None:
        option = conf.reports_origin or "--reports-dir (default: reports)"
        raise pytest.UsageError(f"{option}: {problem}")


def _cells(values: Iterable[object], where: str) -> list[Cell]:
    cells = []
    for cell in values:
        if not isinstance(cell, Cell):
            raise SteeringTransferError(
                f"{where} must give steering_transfer.suite.Cell objects, got {cell!r}"
            )
        cells.append(cell)
    return cells


def declared_cells(config: pytest.Config) -> list[Cell]:
    """Every cell the ``pytest_steering_transfer_cells`` implementations return.

    A suite whose matrix file is broken cannot say what is valid: its error (a
    :class:`SteeringTransferError` naming the file and the entry) stops the run as a usage
    error, one line rather than an internal-error traceback.
    """
    found: list[Cell] = []
    try:
        for cells in config.hook.pytest_steering_transfer_cells(config=config):
            found.extend(_cells(cells, "pytest_steering_transfer_cells"))
    except SteeringTransferError as exc:
        raise pytest.UsageError(f"cannot check the selection options: {exc}") from exc
    return found


def _item_cells(item: pytest.Item) -> list[Cell] | None:
    """The cells of an item's ``st_cell`` markers; ``None`` when it has none."""
    marks = list(item.iter_markers(CELL_MARKER))
    if not marks:
        return None
    return [cell for mark in marks for cell in _cells(mark.args, f"{item.nodeid}: {CELL_MARKER}")]


def _deselect(config: pytest.Config, items: list[pytest.Item], drop: list[pytest.Item]) -> None:
    if drop:
        config.hook.pytest_deselected(items=drop)
        dropped = {id(item) for item in drop}
        items[:] = [item for item in items if id(item) not in dropped]


def _apply_selection(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check the selection against every known cell, then deselect the items it excludes."""
    sel = selection(config)
    if not sel.restricted:
        return
    per_item = [(item, _item_cells(item)) for item in items]
    known = declared_cells(config) + [c for _, cells in per_item if cells for c in cells]
    if not known:  # nothing here takes part in the selection
        return
    try:
        sel.check(known)
    except pytest.UsageError as exc:
        workeroutput = getattr(config, "workeroutput", None)
        if workeroutput is None:
            raise
        # an xdist worker cannot stop the run with a usage error (the controller would report
        # a crash without the message): it runs nothing and hands the message to the
        # controller, whose RecordSession prints it and fails the run with a usage error
        workeroutput[SELECTION_ERROR] = str(exc)
        _deselect(config, items, list(items))
        return
    excluded = [
        item for item, cells in per_item if cells is not None and not any(map(sel.matches, cells))
    ]
    _deselect(config, items, excluded)


def _mentions_real(markexpr: str | None) -> bool:
    return markexpr is not None and re.search(r"\breal\b", markexpr) is not None


@pytest.hookimpl(tryfirst=True)  # before -k/-m: the valid values are those of every item
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply ``--pairs/--mappers/--layers/--tasks``; deselect ``real`` items unless asked for
    (they load packaged models and take minutes); check the reports directory when a test
    records (before the tests run rather than after)."""
    _apply_selection(config, items)
    conf = settings(config)
    if (
        conf.reports_origin is None  # a named one was checked in pytest_configure
        and conf.write_reports
        and not _collect_only(config)
        and not hasattr(config, "workerinput")
        and any("st_record" in getattr(item, "fixturenames", ()) for item in items)
    ):
        _check_reports_dir(config)
    if conf.run_real or _mentions_real(config.getoption("markexpr", None)):
        return
    _deselect(config, items, [item for item in items if item.get_closest_marker("real")])
