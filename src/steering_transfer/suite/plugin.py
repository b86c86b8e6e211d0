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
  which a suite's ``conftest.py`` declares its tables' report files and preambles.
"""

from __future__ import annotations

import re

import pytest

from . import hookspecs
from .fixtures import load_baseline, st_record, st_selection
from .options import add_options, selection, settings
from .session import SESSION_PLUGIN_NAME, RecordSession

__all__ = [
    "MARKERS",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_unconfigure",
    "st_record",
    "st_selection",
]

MARKERS = (
    "real: uses packaged pretrained models; deselected unless -m mentions 'real' or --run-real",
    "slow: takes more than a few seconds",
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
    selection(config)  # parse now so bad syntax stops the run before collection
    load_baseline(config)  # likewise a missing or malformed --baseline file
    if not hasattr(config, "workerinput"):  # the xdist controller or a plain run
        config.pluginmanager.register(RecordSession(config), SESSION_PLUGIN_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
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
