"""Markdown leaderboards and the ``results.json`` document built from :class:`ResultRow` objects.

Everything here is a pure function of the rows (plus the header's date, command and versions),
with every collection sorted, so the same rows always render to the same bytes: a serial run and
an xdist run of the same cells produce identical files apart from the header.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from tabulate import tabulate

from steering_transfer.errors import SteeringTransferError

from .records import FORMAT_VERSION, ResultRow

__all__ = [
    "TableRenderer",
    "merge_rows",
    "package_versions",
    "register_table_renderer",
    "render_leaderboard",
    "render_table",
    "renderer_for",
    "results_document",
    "results_json",
    "sort_rows",
    "unregister_table_renderer",
]

#: Returns Markdown placed between a table's heading and the table (how to read it, calibration).
TableRenderer = Callable[[str, list[ResultRow]], str | None]

_RENDERERS: dict[str, TableRenderer | str] = {}

VERSIONED_PACKAGES = ("steering-transfer", "torch", "transformers")


def register_table_renderer(table_prefix: str, renderer: TableRenderer | str) -> None:
    """Add a preamble above every table whose name starts with ``table_prefix``.

    ``renderer`` is fixed Markdown or ``fn(table, rows) -> str | None``. The longest matching
    prefix wins; registering a prefix again replaces it (conftests can be re-imported). Register
    from a ``conftest.py`` or a library module: under xdist the controller, which renders the
    leaderboard, never imports test modules.
    """
    if not isinstance(table_prefix, str):
        raise SteeringTransferError(
            f"table_prefix must be a str, got {type(table_prefix).__name__}"
        )
    if not (isinstance(renderer, str) or callable(renderer)):
        raise SteeringTransferError(
            "renderer must be Markdown text or a callable fn(table, rows) -> str | None, "
            f"got {type(renderer).__name__}"
        )
    _RENDERERS[table_prefix] = renderer


def unregister_table_renderer(table_prefix: str) -> None:
    """Remove a preamble renderer (no error when none is registered)."""
    _RENDERERS.pop(table_prefix, None)


def renderer_for(table: str) -> TableRenderer | str | None:
    """The renderer with the longest prefix of ``table``, or None for the plain table."""
    matches = [prefix for prefix in _RENDERERS if table.startswith(prefix)]
    return _RENDERERS[max(matches, key=len)] if matches else None


def package_versions() -> dict[str, str]:
    """Versions of the packages whose changes move the numbers (read from metadata, no import)."""
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def merge_rows(
    existing: Mapping[tuple[str, str], ResultRow], new: Iterable[ResultRow]
) -> tuple[dict[tuple[str, str], ResultRow], int]:
    """Rows of ``existing`` with same-key rows replaced by ``new``; also the count replaced."""
    merged = dict(existing)
    replaced = 0
    for row in new:
        replaced += row.key in merged
        merged[row.key] = row
    return merged, replaced


def results_document(rows: Iterable[ResultRow]) -> dict[str, Any]:
    """The ``results.json`` object: format version and rows sorted by (table, cell_id)."""
    ordered = sorted(rows, key=lambda r: r.key)
    return {"format_version": FORMAT_VERSION, "rows": [r.to_dict() for r in ordered]}


def results_json(rows: Iterable[ResultRow]) -> str:
    """Serialised results document. Key order inside a row is kept (columns are ordered)."""
    return json.dumps(results_document(rows), indent=2, allow_nan=False) + "\n"


def _sort_value(row: ResultRow) -> tuple[bool, bool, float, str]:
    """(has value, is numeric, number, text): sorting this descending puts the best rows first."""
    record = row.record
    value = record.columns.get(record.sort_key) if record.sort_key else None
    if value is None:
        return (False, False, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (True, True, float(value), "")
    return (True, False, 0.0, str(value))


def sort_rows(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """Rows by sort_key descending, ties (and rows without a sort value) by cell_id ascending."""
    by_id = sorted(rows, key=lambda r: r.record.cell_id)
    return sorted(by_id, key=_sort_value, reverse=True)  # reverse keeps ties in cell_id order


def _cell(value: Any) -> Any:
    """Keep numbers for tabulate's alignment; make text safe inside a Markdown table."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float):
        return value
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _header_cell(name: str) -> str:
    return str(name).replace("|", "\\|").replace("\n", " ")


def render_table(rows: Sequence[ResultRow]) -> str:
    """One table in GitHub Markdown: cell id, the records' columns, n and seed, status."""
    ordered = sort_rows(rows)
    columns: list[str] = []
    for row in ordered:
        columns += [c for c in row.record.columns if c not in columns]
    extras = [
        key
        for key in ("n", "seed")
        if key not in columns and any(key in row.record.config for row in ordered)
    ]
    show_status = any(row.outcome != "passed" for row in ordered)
    headers = ["cell", *columns, *extras] + (["status"] if show_status else [])
    body = []
    for row in ordered:
        record = row.record
        line = [_cell(record.cell_id)]
        line += [_cell(record.columns.get(c)) for c in columns]
        line += [_cell(record.config.get(k)) for k in extras]
        if show_status:
            line.append(row.outcome)
        body.append(line)
    return tabulate(
        body, headers=[_header_cell(h) for h in headers], tablefmt="github", missingval=""
    )


def _preamble(table: str, rows: list[ResultRow]) -> str:
    renderer = renderer_for(table)
    if renderer is None:
        return ""
    text = renderer if isinstance(renderer, str) else renderer(table, rows)
    if text is not None and not isinstance(text, str):
        raise SteeringTransferError(
            f"the table renderer for {table!r} returned {type(text).__name__}; "
            "it must return Markdown text or None"
        )
    return (text or "").strip()


def render_section(table: str, rows: Sequence[ResultRow]) -> str:
    ordered = sort_rows(rows)
    parts = [f"## {table}"]
    preamble = _preamble(table, ordered)
    if preamble:
        parts.append(preamble)
    sort_keys = sorted({r.record.sort_key for r in ordered if r.record.sort_key})
    count = f"{len(ordered)} row{'s' if len(ordered) != 1 else ''}"
    if sort_keys:
        keys = ", ".join(f"`{k}`" for k in sort_keys)
        parts.append(f"{count}, sorted by {keys} (descending), ties by cell id.")
    else:
        parts.append(f"{count}, sorted by cell id.")
    parts.append(render_table(ordered))
    return "\n\n".join(parts) + "\n"


_TABLE_FILES: dict[str, tuple[str, str]] = {}


def register_table_file(table_prefix: str, filename: str, title: str) -> None:
    """Send tables whose name starts with ``table_prefix`` to their own Markdown file."""
    _TABLE_FILES[table_prefix] = (filename, title)


def table_file(table: str, default: tuple[str, str]) -> tuple[str, str]:
    """``(filename, title)`` of the report a table belongs in (longest prefix wins)."""
    matches = [p for p in _TABLE_FILES if table.startswith(p)]
    return _TABLE_FILES[max(matches, key=len)] if matches else default


def render_leaderboard(
    rows: Iterable[ResultRow],
    *,
    date: str,
    command: str,
    versions: Mapping[str, str] | None = None,
    title: str = "Steering-transfer leaderboard",
) -> str:
    """The whole leaderboard: a header block, then one section per table sorted by name.

    Tables start at the first line beginning with ``## ``; everything above it is the header
    (date, command, versions), the only part that differs between runs of the same cells.
    """
    versions = dict(versions or package_versions())
    by_table: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_table.setdefault(row.record.table, []).append(row)
    env = ", ".join(f"{name} {versions[name]}" for name in sorted(versions))
    header = [
        f"# {title}",
        "",
        f"Generated on {date} by `{command}` with {env} (Python {platform.python_version()}).",
        "",
        "Rows are merged across runs: a run replaces only the cells it measured, so rows from "
        "earlier runs keep their own recorded config, date and package versions (see the "
        "`recorded` and `versions` fields in `results.json`, next to this file).",
        "",
    ]
    if not by_table:
        header.append("No results recorded yet.")
        return "\n".join(header) + "\n"
    header.append("Tables: " + ", ".join(f"`{t}`" for t in sorted(by_table)) + ".")
    sections = [render_section(t, by_table[t]) for t in sorted(by_table)]
    return "\n".join(header) + "\n\n" + "\n".join(sections)
