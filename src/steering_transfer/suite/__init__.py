"""The benchmark suite's reporting layer: records, leaderboards, baselines and the pytest plugin.

Benchmark cells build a :class:`Record` and pass it to the ``st_record`` fixture; the plugin
(registered as the ``steering_transfer`` pytest11 entry point) aggregates records on the xdist
controller into ``reports/results.json`` and ``reports/leaderboard.md``.
"""

from .baseline import Baseline, Comparison, compare, load_results
from .leaderboard import (
    register_table_file,
    register_table_renderer,
    render_leaderboard,
    render_table,
    unregister_table_renderer,
)
from .plugin import (
    Selection,
    Settings,
    format_selection,
    parse_layers,
    parse_names,
    parse_pairs,
    selection,
    settings,
    transfer_min_rate,
)
from .records import Record, ResultRow, figure, rate_figure

__all__ = [
    "Baseline",
    "Comparison",
    "Record",
    "ResultRow",
    "Selection",
    "Settings",
    "compare",
    "figure",
    "format_selection",
    "load_results",
    "parse_layers",
    "parse_names",
    "parse_pairs",
    "rate_figure",
    "register_table_file",
    "register_table_renderer",
    "render_leaderboard",
    "render_table",
    "selection",
    "settings",
    "transfer_min_rate",
    "unregister_table_renderer",
]
