"""Hooks the steering-transfer plugin adds to pytest (registered in ``pytest_addhooks``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .leaderboard import TableSpec


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
