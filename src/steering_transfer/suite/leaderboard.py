"""Markdown leaderboards and the ``results.json`` document built from :class:`ResultRow` objects.

Everything here is a pure function of the rows and the :class:`TableSpec` list (plus the
header's date, command and versions), with every collection sorted, so the same rows always
render to the same bytes: a serial run and an xdist run of the same cells produce identical
files apart from the header. There is no module-level registry: the plugin gathers the specs
through the ``pytest_steering_transfer_tables`` hook and passes them in.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from tabulate import tabulate

from steering_transfer.errors import SteeringTransferError

from .records import FORMAT_VERSION, ResultRow

__all__ = [
    "LEADERBOARD_FILE",
    "LEADERBOARD_TITLE",
    "TableRenderer",
    "TableSpec",
    "check_tables",
    "merge_rows",
    "package_versions",
    "render_leaderboard",
    "render_plots",
    "render_section",
    "render_table",
    "report_files",
    "report_header",
    "results_document",
    "results_json",
    "sort_rows",
    "table_spec",
]

#: The report a table goes to when no :class:`TableSpec` names another file.
LEADERBOARD_FILE = "leaderboard.md"
LEADERBOARD_TITLE = "Steering-transfer leaderboard"

#: Returns Markdown placed between a table's heading and the table (how to read it, calibration).
TableRenderer = Callable[[str, list[ResultRow]], str | None]

VERSIONED_PACKAGES = ("steering-transfer", "torch", "transformers")


@dataclass(frozen=True)
class TableSpec:
    """How the tables whose name starts with ``prefix`` are reported.

    ``file`` and ``title``: the Markdown report they go to (both or neither; neither means the
    main ``leaderboard.md``). ``preamble``: Markdown placed between a table's heading and the
    table (how to read it, calibration), or ``fn(table, rows) -> str | None``. For each table
    the spec with the longest matching prefix applies, wholly.

    A benchmark suite declares its specs next to its record builders and returns them from a
    ``pytest_steering_transfer_tables(config)`` hook in its ``conftest.py`` (the xdist
    controller, which renders the reports, loads conftests but never test modules).
    """

    prefix: str
    file: str | None = None
    title: str | None = None
    preamble: str | TableRenderer | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise SteeringTransferError(
                f"TableSpec prefix must be a str, got {type(self.prefix).__name__}"
            )
        if (self.file is None) != (self.title is None):
            raise SteeringTransferError(
                f"TableSpec {self.prefix!r}: give both file and title (its own report) or "
                "neither (the main leaderboard)"
            )
        if self.file is not None and (
            not isinstance(self.file, str)
            or not self.file.endswith(".md")
            or "/" in self.file
            or "\\" in self.file
        ):
            raise SteeringTransferError(
                f"TableSpec {self.prefix!r}: file={self.file!r} must be a Markdown file name "
                "such as refusal.md (no directories)"
            )
        if not (self.preamble is None or isinstance(self.preamble, str) or callable(self.preamble)):
            raise SteeringTransferError(
                f"TableSpec {self.prefix!r}: preamble must be Markdown text or a callable "
                f"fn(table, rows) -> str | None, got {type(self.preamble).__name__}"
            )

    @property
    def report(self) -> tuple[str, str]:
        """``(file, title)`` of the report this spec's tables go to."""
        if self.file is None or self.title is None:
            return (LEADERBOARD_FILE, LEADERBOARD_TITLE)
        return (self.file, self.title)


def check_tables(tables: Iterable[TableSpec]) -> tuple[TableSpec, ...]:
    """The specs, deduplicated, after checking that they agree with each other.

    Two different specs for one prefix, or two titles for one file, are errors (raised as
    :class:`SteeringTransferError` naming both).
    """
    by_prefix: dict[str, TableSpec] = {}
    titles: dict[str, tuple[str, str]] = {LEADERBOARD_FILE: (LEADERBOARD_TITLE, "the default")}
    for spec in tables:
        if not isinstance(spec, TableSpec):
            raise SteeringTransferError(
                f"table specs must be steering_transfer.suite.TableSpec, got {spec!r}"
            )
        seen = by_prefix.setdefault(spec.prefix, spec)
        if seen != spec:
            raise SteeringTransferError(
                f"two different table specs for prefix {spec.prefix!r}: {seen} and {spec}"
            )
        file, title = spec.report
        known, where = titles.setdefault(file, (title, repr(spec.prefix)))
        if known != title:
            raise SteeringTransferError(
                f"{file} has two titles: {known!r} ({where}) and {title!r} ({spec.prefix!r})"
            )
    return tuple(by_prefix.values())


def table_spec(table: str, tables: Iterable[TableSpec]) -> TableSpec | None:
    """The spec with the longest prefix of ``table``, or None (main leaderboard, no preamble)."""
    matches = [spec for spec in tables if table.startswith(spec.prefix)]
    return max(matches, key=lambda spec: len(spec.prefix)) if matches else None


def report_files(
    rows: Iterable[ResultRow], tables: Iterable[TableSpec] = ()
) -> list[tuple[str, str, list[ResultRow]]]:
    """``(file, title, rows)`` per report the rows go to, sorted by file name."""
    tables = tuple(tables)
    by_file: dict[tuple[str, str], list[ResultRow]] = {}
    for row in rows:
        spec = table_spec(row.record.table, tables)
        report = spec.report if spec is not None else (LEADERBOARD_FILE, LEADERBOARD_TITLE)
        by_file.setdefault(report, []).append(row)
    return [(file, title, file_rows) for (file, title), file_rows in sorted(by_file.items())]


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


def _preamble(table: str, rows: list[ResultRow], tables: Iterable[TableSpec]) -> str:
    spec = table_spec(table, tables)
    renderer = spec.preamble if spec is not None else None
    if renderer is None:
        return ""
    text = renderer if isinstance(renderer, str) else renderer(table, rows)
    if text is not None and not isinstance(text, str):
        raise SteeringTransferError(
            f"the table renderer for {table!r} returned {type(text).__name__}; "
            "it must return Markdown text or None"
        )
    return (text or "").strip()


def render_section(
    table: str, rows: Sequence[ResultRow], tables: Iterable[TableSpec] = ()
) -> str:
    """One table's section: heading, preamble (from its :class:`TableSpec`), count, table."""
    ordered = sort_rows(rows)
    parts = [f"## {table}"]
    preamble = _preamble(table, ordered, tables)
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


def render_plots(paths: Sequence[str]) -> str:
    """A ``## Plots`` section linking the PNGs (paths relative to the report), or ``""``."""
    if not paths:
        return ""
    from .plots import plot_label  # here: plots imports this module

    links = [f"![{plot_label(path)}]({path})" for path in sorted(paths)]
    return "## Plots\n\n" + "\n\n".join(links) + "\n"


def report_header(
    title: str, *, date: str, command: str, versions: Mapping[str, str] | None = None
) -> list[str]:
    """The lines every generated report opens with (title; when, by what command, with which
    package versions), ending in a blank line: the only part that differs between two runs of
    the same cells, so readers and tests can skip it."""
    versions = dict(versions or package_versions())
    env = ", ".join(f"{name} {versions[name]}" for name in sorted(versions))
    return [
        f"# {title}",
        "",
        f"Generated on {date} by `{command}` with {env} (Python {platform.python_version()}).",
        "",
    ]


def render_leaderboard(
    rows: Iterable[ResultRow],
    *,
    date: str,
    command: str,
    versions: Mapping[str, str] | None = None,
    title: str = LEADERBOARD_TITLE,
    tables: Iterable[TableSpec] = (),
    plots: Sequence[str] = (),
) -> str:
    """The whole leaderboard: a header block, then one section per table sorted by name.

    ``tables`` gives the tables' preambles (see :class:`TableSpec`); which rows belong in which
    file is :func:`report_files`' business. ``plots``: PNG paths relative to the report (from
    :func:`~.plots.write_plots`), linked in a closing ``## Plots`` section (none when empty).

    Tables start at the first line beginning with ``## ``; everything above it is the header
    (date, command, versions), the only part that differs between runs of the same cells.
    """
    by_table: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_table.setdefault(row.record.table, []).append(row)
    header = [
        *report_header(title, date=date, command=command, versions=versions),
        "Rows are merged across runs: a run replaces only the cells it measured, so rows from "
        "earlier runs keep their own recorded config, date and package versions (see the "
        "`recorded` and `versions` fields in `results.json`, next to this file).",
        "",
    ]
    if not by_table:
        header.append("No results recorded yet.")
        return "\n".join(header) + "\n"
    header.append("Tables: " + ", ".join(f"`{t}`" for t in sorted(by_table)) + ".")
    tables = tuple(tables)
    sections = [render_section(t, by_table[t], tables) for t in sorted(by_table)]
    plot_section = render_plots(plots)
    if plot_section:
        sections.append(plot_section)
    return "\n".join(header) + "\n\n" + "\n".join(sections)
