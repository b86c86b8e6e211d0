"""Hooks the steering-transfer plugin adds to pytest (registered in ``pytest_addhooks``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .leaderboard import TableSpec
    from .options import Cell


@pytest.hookspec
def pytest_steering_transfer_tables(config: pytest.Config) -> Iterable[TableSpec] | None:
    """Return the :class:`~steering_transfer.suite.TableSpec` of the tables a suite records.

    A spec sends the tables whose name starts with its prefix to their own report file and
    gives them a preamble. Implement it in the benchmark suite's ``conftest.py``::

        def pytest_steering_transfer_tables(config):
            return [TableSpec("transfer:", "transfer.md", "Transfer", TRANSFER_PREAMBLE)]

    Called once, on the xdist controller (or the only process), when the reports are written;
    the results of every implementation are combined, and two implementations disagreeing
    about a prefix is reported as a warning (results.json is still written).
    """


@pytest.hookspec
def pytest_steering_transfer_cells(config: pytest.Config) -> Iterable[Cell] | None:
    """Return every :class:`~steering_transfer.suite.Cell` the suite could run.

    ``--pairs/--mappers/--layers/--tasks`` values are checked against them in
    ``pytest_configure`` (before collection, on the xdist controller too), so a typo is a usage
    error listing the valid values rather than a run that selects nothing. Items carry their own
    cells (marker ``st_cell``); those are checked after collection as well, so the hook is
    optional. Implement it in the suite's ``conftest.py``; the results of every implementation
    are combined.
    """
