"""The plugin's fixtures: ``st_record`` (record a cell, check it against a baseline) and
``st_selection``.

The fixture attaches each record to its test's report as a JSON user property, which xdist
ships to the controller, where :mod:`steering_transfer.suite.session` collects it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from steering_transfer.errors import SteeringTransferError

from .baseline import Baseline
from .options import Selection, selection, settings
from .records import Record

__all__ = [
    "BASELINE_PROPERTY",
    "RECORD_PROPERTY",
    "Recorder",
    "load_baseline",
    "st_record",
    "st_selection",
]

#: ``user_properties`` name carrying a record as a JSON string (also lands in JUnit XML).
RECORD_PROPERTY = "steering_transfer"
#: ``user_properties`` name carrying the outcome of a baseline check, for the summary.
BASELINE_PROPERTY = "steering_transfer_baseline"

_BASELINE = pytest.StashKey["Baseline | None"]()


def load_baseline(config: pytest.Config) -> Baseline | None:
    """Read ``--baseline`` once (in ``pytest_configure``); a bad file is a usage error."""
    if _BASELINE not in config.stash:
        conf = settings(config)
        baseline = None
        if conf.baseline_path is not None:
            try:
                baseline = Baseline(conf.baseline_path, conf.tolerance)
            except SteeringTransferError as exc:
                raise pytest.UsageError(f"--baseline: {exc}") from exc
        config.stash[_BASELINE] = baseline
    return config.stash[_BASELINE]


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
