"""The paper's figures beside ours: ``fixtures/paper.toml`` in, ``paper_vs_ours.md`` out.

Why a data file: the paper's numbers are hand-copied facts, each with the table or section it
comes from. Kept apart from code, they are checked once when loaded (an unknown key or a
malformed value stops the run, naming the key and the file) and cited in one place; ours are
never typed in anywhere, they are looked up in ``results.json`` by each entry's selector, so
the report can only say "not measured yet" where we have no row, never show an invented figure.

The report is rendered by the plugin at the end of a bench session, beside the other reports,
when ``<rootdir>/fixtures/paper.toml`` exists, and offline from a ``results.json`` by
``python -m steering_transfer.suite.paper`` (same lock as a bench run). Like every generic
suite module this one imports no torch: the plugin loads it at start-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from tabulate import tabulate

from steering_transfer.config import reject_unknown_keys
from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import write_text

from .leaderboard import package_versions, report_header
from .records import UNKNOWN_COMMIT, ResultRow

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

__all__ = [
    "NOT_MEASURED",
    "PAPER_FILE",
    "REPORT_FILE",
    "REPORT_TITLE",
    "LayerRange",
    "PaperEntry",
    "PaperFigure",
    "PaperFile",
    "RowSelector",
    "load_paper",
    "main",
    "render_paper_report",
]

#: Where the plugin looks for the paper's figures, relative to pytest's rootdir.
PAPER_FILE = Path("fixtures") / "paper.toml"
#: The report it writes into the reports directory.
REPORT_FILE = "paper_vs_ours.md"
REPORT_TITLE = "Paper vs ours"
#: What an entry says where no results row matches its selector.
NOT_MEASURED = "not measured yet"

PaperValue = float | str | tuple[float, ...]

SELECTOR_KEYS = ("table", "source", "target", "organism", "task", "mapper", "dataset")
FIGURE_KEYS = ("label", "paper", "source", "figure", "column", "config", "digits", "note")
ENTRY_KEYS = (
    "id", "section", "what", "source", "paper_pair", "different_pair", "unit", "digits", "note",
    "match", "layers", "figure",
)
FILE_KEYS = ("paper", "entry")
PAPER_KEYS = ("citation",)
UNITS = ("", "%")
_LAYER_KEY = re.compile(r"^(\d+)(?:-(\d+))?$")


# ----------------------------------------------------------------------------- checking values


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SteeringTransferError(f"{where} must be a table, got {type(value).__name__}")
    return value


def _optional_text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    """A non-empty string field, or ``None`` when absent."""
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise SteeringTransferError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    """A required non-empty string field."""
    value = _optional_text(data, key, where)
    if value is None:
        raise SteeringTransferError(f"{where} needs {key} = \"...\"")
    return value


def _texts(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings, as a tuple (empty when absent)."""
    if key not in data:
        return ()
    value = data[key]
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v.strip() for v in values)
    ):
        raise SteeringTransferError(
            f"{where}: {key} must be a string or a non-empty list of strings, got {value!r}"
        )
    return tuple(values)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _digits(data: Mapping[str, Any], where: str) -> int | None:
    value = data.get("digits")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
        raise SteeringTransferError(f"{where}: digits must be an integer 0-6, got {value!r}")
    return value


def _paper_value(value: Any, where: str) -> PaperValue:
    """A number, a non-empty list of numbers, or words (what the paper says without a number)."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        return tuple(float(v) for v in value)
    raise SteeringTransferError(
        f"{where}: paper must be a finite number, a list of numbers or a non-empty string, "
        f"got {value!r}"
    )


# ----------------------------------------------------------------------------- the data model


@dataclass(frozen=True)
class RowSelector:
    """Which ``results.json`` rows an entry compares with: the table, then every key given.

    Values are exact ids or shell-style patterns (``qwen2.5-coder-0.5b*``); a key given with
    several values matches any of them. ``organism`` is the swept model of a layer sweep.
    """

    table: str
    source: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    organism: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    mapper: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> RowSelector:
        data = _table(data, where)
        reject_unknown_keys(data, SELECTOR_KEYS, where=where)
        keys = {key: _texts(data, key, where) for key in SELECTOR_KEYS[1:]}
        return cls(_text(data, "table", where), **keys)

    def conditions(self) -> list[tuple[str, tuple[str, ...]]]:
        """The keys given beside the table, in a fixed order."""
        return [(key, getattr(self, key)) for key in SELECTOR_KEYS[1:] if getattr(self, key)]

    def matches(self, row: ResultRow) -> bool:
        if row.record.table != self.table:
            return False
        return all(
            any(fnmatchcase(value, pattern) for value in _row_values(row, key) for pattern in pats)
            for key, pats in self.conditions()
        )

    def describe(self) -> str:
        parts = [f"{key} {' or '.join(f'`{v}`' for v in values)}"
                 for key, values in self.conditions()]
        return f"`{self.table}` rows" + (" with " + ", ".join(parts) if parts else "")


def _row_values(row: ResultRow, key: str) -> list[str]:
    """What a row says about ``key``: its config first, then its columns (layer sweeps keep
    the swept model in the ``model`` column and in the cell id ``layers-<model>``)."""
    record = row.record
    if key == "organism":
        found = [record.columns.get("model"), record.config.get("model")]
        if record.cell_id.startswith("layers-"):
            found.append(record.cell_id.removeprefix("layers-"))
    else:
        found = [record.config.get(key), record.columns.get(key)]
    return [value for value in found if isinstance(value, str)]


@dataclass(frozen=True)
class LayerRange:
    """The paper's figure for layers ``first`` to ``last`` (inclusive), as one table cell of it."""

    first: int
    last: int
    value: float

    @classmethod
    def parse(cls, key: str, value: Any, *, where: str) -> LayerRange:
        found = _LAYER_KEY.match(key)
        if found is None:
            raise SteeringTransferError(
                f"{where}: layer key {key!r} must be a layer (\"13\") or a range (\"2-7\")"
            )
        first = int(found.group(1))
        last = int(found.group(2) or first)
        if last < first:
            raise SteeringTransferError(f"{where}: layer range {key!r} runs backwards")
        if not _is_number(value):
            raise SteeringTransferError(
                f"{where}: the paper's figure for layer(s) {key} must be a number, got {value!r}"
            )
        return cls(first, last, float(value))


@dataclass(frozen=True)
class PaperFigure:
    """One line of a comparison: the paper's figure (with its source) and where ours is.

    Ours is a figure of the row (value, interval, n), a column (or several, shown "a / b") or a
    dotted path into its config (or several); none when we have no counterpart. A line may
    also be ours only (no ``paper``): context the paper does not report, e.g. our verdict.
    """

    label: str
    paper: PaperValue | None = None
    source: str | None = None
    figure: str | None = None
    column: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    digits: int | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, data: Any, *, where: str, default_source: str) -> PaperFigure:
        data = _table(data, where)
        label = _text(data, "label", where)
        where = f"{where} {label!r}"
        reject_unknown_keys(data, FIGURE_KEYS, where=where)
        paper = _paper_value(data["paper"], where) if "paper" in data else None
        ours = [key for key in ("figure", "column", "config") if key in data]
        if len(ours) > 1:
            raise SteeringTransferError(
                f"{where}: give ours as one of figure, column or config, not {' and '.join(ours)}"
            )
        if paper is None and not ours:
            raise SteeringTransferError(
                f"{where} has neither a paper figure nor one of ours (figure, column, config)"
            )
        source = _optional_text(data, "source", where)
        return cls(
            label=label,
            paper=paper,
            source=(source or default_source) if paper is not None else source,
            figure=_optional_text(data, "figure", where),
            column=_texts(data, "column", where),
            config=_texts(data, "config", where),
            digits=_digits(data, where),
            note=_optional_text(data, "note", where),
        )


@dataclass(frozen=True)
class PaperEntry:
    """One comparison: what the paper measured, its figures, and the rows of ours beside them.

    An entry is either a layer sweep (``layers``: the paper's figure per layer, ours from the
    ``L<n>`` figures of each ``organism``'s row) or a list of ``figures``.
    """

    id: str
    section: str
    what: str
    source: str
    paper_pair: str
    match: RowSelector
    different_pair: bool = False
    unit: str = ""
    digits: int | None = None
    note: str | None = None
    layers: tuple[LayerRange, ...] = ()
    figures: tuple[PaperFigure, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> PaperEntry:
        data = _table(data, where)
        raw_id = data.get("id")
        if isinstance(raw_id, str) and raw_id.strip():
            where = f"{where} {raw_id!r}"
        reject_unknown_keys(data, ENTRY_KEYS, where=where)
        entry_id, section, what, source, paper_pair = (
            _text(data, key, where) for key in ("id", "section", "what", "source", "paper_pair")
        )
        different = data.get("different_pair", False)
        if not isinstance(different, bool):
            raise SteeringTransferError(
                f"{where}: different_pair must be true or false, got {different!r}"
            )
        unit = data.get("unit", "")
        if unit not in UNITS:
            raise SteeringTransferError(
                f"{where}: unit must be one of {', '.join(repr(u) for u in UNITS)}, got {unit!r}"
            )
        if "match" not in data:
            raise SteeringTransferError(f"{where} needs a [entry.match] table (at least table)")
        match = RowSelector.from_dict(data["match"], where=f"{where} [entry.match]")
        layers = cls._layers(data, where, match)
        raw_figures = data.get("figure", [])
        if not isinstance(raw_figures, list):
            raise SteeringTransferError(f"{where}: figure must be [[entry.figure]] tables")
        figures = tuple(
            PaperFigure.from_dict(raw, where=f"{where} [[entry.figure]]", default_source=source)
            for raw in raw_figures
        )
        if bool(layers) == bool(figures):
            raise SteeringTransferError(
                f"{where} needs either [entry.layers] (a layer sweep) or [[entry.figure]] lines, "
                "not both and not neither"
            )
        labels = [f.label for f in figures]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise SteeringTransferError(f"{where}: figure label(s) {', '.join(twice)} repeated")
        return cls(
            id=entry_id,
            section=section,
            what=what,
            source=source,
            paper_pair=paper_pair,
            match=match,
            different_pair=different,
            unit=unit,
            digits=_digits(data, where),
            note=_optional_text(data, "note", where),
            layers=layers,
            figures=figures,
        )

    @staticmethod
    def _layers(
        data: Mapping[str, Any], where: str, match: RowSelector
    ) -> tuple[LayerRange, ...]:
        if "layers" not in data:
            return ()
        raw = _table(data["layers"], f"{where} [entry.layers]")
        if not raw:
            raise SteeringTransferError(f"{where} [entry.layers] is empty")
        ranges = sorted(
            (LayerRange.parse(str(k), v, where=f"{where} [entry.layers]") for k, v in raw.items()),
            key=lambda r: r.first,
        )
        for before, after in itertools.pairwise(ranges):
            if after.first <= before.last:
                raise SteeringTransferError(
                    f"{where} [entry.layers]: layers {before.first}-{before.last} and "
                    f"{after.first}-{after.last} overlap"
                )
        if not match.organism:
            raise SteeringTransferError(
                f"{where}: a layer sweep's [entry.match] needs organism (one column each)"
            )
        return tuple(ranges)

    def paper_layer(self, layer: int) -> float | None:
        for span in self.layers:
            if span.first <= layer <= span.last:
                return span.value
        return None


@dataclass(frozen=True)
class PaperFile:
    """``fixtures/paper.toml``, checked: the citation and the entries in file order."""

    path: Path
    citation: str
    entries: tuple[PaperEntry, ...]

    @classmethod
    def from_dict(cls, data: Any, *, path: Path) -> PaperFile:
        where = str(path)
        data = _table(data, where)
        reject_unknown_keys(data, FILE_KEYS, where=where, what="top-level key(s)")
        paper = _table(data.get("paper", {}), f"{where} [paper]")
        reject_unknown_keys(paper, PAPER_KEYS, where=f"{where} [paper]")
        citation = _text(paper, "citation", f"{where} [paper]")
        raw_entries = data.get("entry", [])
        if not isinstance(raw_entries, list) or not raw_entries:
            raise SteeringTransferError(f"{where} needs at least one [[entry]]")
        entries = tuple(
            PaperEntry.from_dict(raw, where=f"{where}: [[entry]] #{i + 1}")
            for i, raw in enumerate(raw_entries)
        )
        ids = [e.id for e in entries]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise SteeringTransferError(f"{where}: entry id(s) {', '.join(twice)} repeated")
        return cls(path=path, citation=citation, entries=entries)


def load_paper(path: str | Path) -> PaperFile:
    """Read and check a paper file; every problem is a :class:`SteeringTransferError` naming
    the file (and the entry, figure and key where there is one)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SteeringTransferError(f"cannot read the paper's figures {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SteeringTransferError(f"{path} is not valid TOML: {exc}") from exc
    return PaperFile.from_dict(data, path=path)


# ----------------------------------------------------------------------------- rendering


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _number(value: float, digits: int | None) -> str:
    return f"{value:.{digits}f}" if digits is not None else f"{value:g}"


def _paper_text(value: PaperValue | None, digits: int | None, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    values = value if isinstance(value, tuple) else (value,)
    suffix = f" {unit}" if unit else ""
    return " / ".join(_number(v, digits) + suffix for v in values)


def _plain(value: Any) -> str:
    """A column or config value as the row stores it."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _figure_text(fig: Mapping[str, Any], unit: str) -> str:
    """Value, 95 % interval and n of one of our figures."""
    value, low, high, n = fig.get("value"), fig.get("low"), fig.get("high"), fig.get("n")
    if not isinstance(value, int | float):
        return "–"
    if low is not None and high is not None:
        if unit == "%":
            text = f"{100 * value:.0f} % [{100 * low:.0f}, {100 * high:.0f}]"
        else:
            text = f"{value:.2f} [{low:.2f}, {high:.2f}]"
    else:
        text = f"{value:.3g}"
    return text + (f", n = {n}" if n is not None else "")


def _config_value(config: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _ours(fig: PaperFigure, row: ResultRow | None, unit: str) -> str:
    """Our side of one line: "not measured yet" without a row, "not in row" when the row lacks
    what the line names, "no counterpart" when we measure nothing of the kind."""
    if row is None:
        return NOT_MEASURED
    record = row.record
    if fig.figure is not None:
        found = record.figures.get(fig.figure)
        return _figure_text(found, unit) if found is not None else "not in row"
    if fig.column:
        if not all(name in record.columns for name in fig.column):
            return "not in row"
        return " / ".join(_plain(record.columns[name]) for name in fig.column)
    if fig.config:
        values = [_config_value(record.config, path) for path in fig.config]
        if not all(ok for ok, _ in values):
            return "not in row"
        return " / ".join(_plain(value) for _, value in values)
    return "no counterpart"


def _measured_at(row: ResultRow | None) -> str:
    """Which code measured a row, when, and how its test ended."""
    if row is None:
        return NOT_MEASURED
    commit = row.commit
    if not commit:
        commit = "commit not recorded"
    elif commit != UNKNOWN_COMMIT:
        head, _, dirty = commit.partition("+")
        commit = head[:10] + (f"+{dirty}" if dirty else "")
    parts = [commit, row.recorded or "date not recorded"]
    if row.outcome != "passed":
        parts.append(row.outcome)
    return " · ".join(parts)


def _columns(entry: PaperEntry, rows: Sequence[ResultRow]) -> list[tuple[str, ResultRow | None]]:
    """Our side's columns: for a sweep one per organism pattern (its rows, or one empty column),
    otherwise one per matched row, or a single empty column."""
    matched = sorted((r for r in rows if entry.match.matches(r)), key=lambda r: r.record.cell_id)
    if not entry.layers:
        return [(f"ours: `{r.record.cell_id}`", r) for r in matched] or [("ours", None)]
    columns: list[tuple[str, ResultRow | None]] = []
    for pattern in entry.match.organism:
        mine = [
            r for r in matched
            if any(fnmatchcase(v, pattern) for v in _row_values(r, "organism"))
        ]
        columns += [(f"ours: `{r.record.cell_id}`", r) for r in mine] or [
            (f"ours: `{pattern}`", None)
        ]
    return columns


def _row_layers(row: ResultRow | None) -> set[int]:
    if row is None:
        return set()
    return {int(name[1:]) for name in row.record.figures if re.fullmatch(r"L\d+", name)}


def _layer_table(entry: PaperEntry, columns: list[tuple[str, ResultRow | None]]) -> str:
    layers = {layer for span in entry.layers for layer in range(span.first, span.last + 1)}
    for _, row in columns:
        layers |= _row_layers(row)
    headers = ["layer", f"paper ({entry.source})", *(name for name, _ in columns)]
    body = []
    for layer in sorted(layers):
        paper = entry.paper_layer(layer)
        line = [f"L{layer}", _paper_text(paper, entry.digits, entry.unit)]
        for _, row in columns:
            if row is None:
                line.append(NOT_MEASURED)
            else:
                fig = row.record.figures.get(f"L{layer}")
                line.append(_figure_text(fig, entry.unit) if fig is not None else "—")
        body.append(line)
    body.append(["measured at", "—", *(_measured_at(row) for _, row in columns)])
    return _tabulate(headers, body)


def _figure_table(entry: PaperEntry, columns: list[tuple[str, ResultRow | None]]) -> str:
    with_notes = any(fig.note for fig in entry.figures)
    headers = ["", "paper", "source", *(name for name, _ in columns)]
    headers += ["note"] if with_notes else []
    body = []
    for fig in entry.figures:
        digits = fig.digits if fig.digits is not None else entry.digits
        line = [fig.label, _paper_text(fig.paper, digits, entry.unit), fig.source or "—"]
        line += [_ours(fig, row, entry.unit) for _, row in columns]
        line += [fig.note or ""] if with_notes else []
        body.append(line)
    footer = ["measured at", "—", "—", *(_measured_at(row) for _, row in columns)]
    body.append(footer + ([""] if with_notes else []))
    return _tabulate(headers, body)


def _tabulate(headers: list[str], body: list[list[str]]) -> str:
    return tabulate(
        [[_md(cell) for cell in line] for line in body],
        headers=[_md(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,  # keep "0.50" and "13 / 8" exactly as written
    )


def _our_pair(match: RowSelector) -> str:
    if match.source or match.target:
        return f"{' or '.join(match.source) or '?'} → {' or '.join(match.target) or '?'}"
    return ", ".join(match.organism) or match.table


def _entry_section(entry: PaperEntry, rows: Sequence[ResultRow]) -> str:
    columns = _columns(entry, rows)
    measured = sum(row is not None for _, row in columns)
    lines = [
        f"### {entry.what}",
        "",
        f"`{entry.id}` · paper: {entry.paper_pair} (source: {entry.source})  ",
        f"ours: {entry.match.describe()}: "
        + (f"{measured} row{'s' if measured != 1 else ''}" if measured else NOT_MEASURED),
    ]
    if entry.different_pair:
        lines += [
            "",
            f"**different pair**: the paper measured {entry.paper_pair}; "
            f"ours is {_our_pair(entry.match)}.",
        ]
    if entry.note:
        lines += ["", entry.note]
    table = _layer_table(entry, columns) if entry.layers else _figure_table(entry, columns)
    return "\n".join([*lines, "", table]) + "\n"


def _summary(paper: PaperFile, rows: Sequence[ResultRow]) -> str:
    body = []
    for entry in paper.entries:
        count = sum(entry.match.matches(row) for row in rows)
        body.append([
            entry.section,
            f"`{entry.id}`",
            entry.source,
            entry.paper_pair + (" (**different pair**)" if entry.different_pair else ""),
            f"{count} row{'s' if count != 1 else ''}" if count else NOT_MEASURED,
        ])
    return _tabulate(["section", "entry", "paper source", "paper measured", "ours"], body)


def render_paper_report(
    paper: PaperFile,
    rows: Iterable[ResultRow],
    *,
    date: str,
    command: str,
    versions: Mapping[str, str] | None = None,
) -> str:
    """``paper_vs_ours.md``: a summary table, then per section each entry's paper figures
    beside the matching rows of ``rows`` (value, 95 % interval, n, commit)."""
    rows = list(rows)
    header = report_header(REPORT_TITLE, date=date, command=command, versions=versions)
    intro = [
        f"The paper: {paper.citation}. Its figures are copied by hand into "
        f"`{PAPER_FILE.as_posix()}`, each with the table, figure or section it comes from "
        "(`source`); numbers the paper shows only in plots are not quoted.",
        "",
        "Ours: rows of `results.json` (next to this file) that each entry's selector matches, "
        "never typed in. Rates read `value [95 % Wilson interval], n = prompts`; `measured at` "
        "gives the commit (`+dirty`: uncommitted changes), the date and, unless it passed, how "
        f"the row's test ended. \"{NOT_MEASURED}\": no row matches yet; \"not in row\": the row "
        "lacks that figure; \"no counterpart\": we do not measure it. Our organisms, prompts, "
        "judges and strengths are our own, so each entry's note says how far a line compares.",
        "",
        _summary(paper, rows),
    ]
    sections: dict[str, list[PaperEntry]] = {}
    for entry in paper.entries:
        sections.setdefault(entry.section, []).append(entry)
    parts = ["\n".join([*header, *intro]) + "\n"]
    for section, entries in sections.items():
        parts.append(f"## {section}\n")
        parts += [_entry_section(entry, rows) for entry in entries]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- offline command


def main(argv: Sequence[str] | None = None) -> int:
    """Re-render ``paper_vs_ours.md`` from a reports folder's ``results.json``, no benchmark.

    Holds the reports folder's lock, as a bench run does, so it never reads a half-merged file.
    """
    parser = argparse.ArgumentParser(
        prog="python -m steering_transfer.suite.paper",
        description=f"Render {REPORT_FILE} (the paper's figures beside ours) from results.json.",
    )
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"),
                        help="folder with results.json, where the report goes (default: reports)")
    parser.add_argument("--paper", type=Path, default=PAPER_FILE,
                        help=f"the paper's figures (default: {PAPER_FILE.as_posix()})")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"write here instead of <reports-dir>/{REPORT_FILE}")
    args = parser.parse_args(argv)
    import pytest  # here: only the command needs the lock and its settings

    from .baseline import load_results
    from .options import _lock_timeout
    from .session import RESULTS_FILE, reports_lock

    given = list(argv) if argv is not None else sys.argv[1:]
    try:
        paper = load_paper(args.paper)
        with reports_lock(args.reports_dir, _lock_timeout()):
            rows = load_results(args.reports_dir / RESULTS_FILE).values()
            text = render_paper_report(
                paper, rows, date=dt.date.today().isoformat(),
                command=" ".join([parser.prog, shlex.join(given)]).strip(),
                versions=package_versions(),
            )
            out = write_text(args.output or args.reports_dir / REPORT_FILE, text)
    except (SteeringTransferError, pytest.UsageError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through main()
    raise SystemExit(main())
