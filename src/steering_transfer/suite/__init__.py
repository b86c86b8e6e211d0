"""The benchmark suite's reporting layer: records, leaderboards, baselines and the pytest plugin.

Benchmark cells build a :class:`Record` and pass it to the ``st_record`` fixture; the plugin
(registered as the ``steering_transfer`` pytest11 entry point) aggregates records on the xdist
controller into ``reports/results.json`` and ``reports/leaderboard.md``, plus the report files
the suite's :class:`TableSpec`\\ s name (returned by a ``pytest_steering_transfer_tables`` hook
in its ``conftest.py``).

Nothing here imports torch: the plugin loads in every pytest run. The benchmark matrix
(:mod:`.matrix`) and the task cells (:mod:`.cells`) do, and are imported by the suite's own
conftest and tests only.
"""

from .baseline import Baseline, Comparison, compare, load_results
from .leaderboard import TableSpec, render_leaderboard, render_table
from .options import (
    Cell,
    Selection,
    Settings,
    parse_layers,
    parse_names,
    parse_pairs,
    selection,
    settings,
)
from .records import Record, ResultRow, figure, rate_figure

__all__ = [
    "Baseline",
    "Cell",
    "Comparison",
    "Record",
    "ResultRow",
    "Selection",
    "Settings",
    "TableSpec",
    "compare",
    "figure",
    "load_results",
    "parse_layers",
    "parse_names",
    "parse_pairs",
    "rate_figure",
    "render_leaderboard",
    "render_table",
    "selection",
    "settings",
]
