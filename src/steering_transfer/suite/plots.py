"""PNG pictures next to the Markdown reports: dose-response per pair, layer sweep per model.

Reports show numbers; a curve shows at a glance whether a mapped vector follows the native
one across strengths and where steering works across depth. Everything is drawn from the
``results.json`` rows alone (no models), so a merged results file can be re-plotted any time.

* ``reports/plots/dose-<pair>.png``: success vs steering strength (log2 axis) for one pair:
  the native vector with its 95 % intervals, the pooled random-direction noise as a band,
  one marker series per mapper, the chosen strength dotted; a second panel for the
  ``induce_*`` series when a row carries them. Data: ``row["config"]["dose_response"]``.
* ``reports/plots/layers-<model>.png``: success per layer of a ``layers:`` row (figures
  ``L0``, ``L1``, ...), strong layers starred, used layers shaded, unsteered as a line.

Rows without the data (older results) or with malformed data are skipped silently: a picture
must never stop the reports from being written. The same rows give byte-identical PNGs (Agg,
default style, fixed size and dpi, no ``Software`` stamp); a file whose bytes would not change
is not rewritten. PNGs of pairs no longer present are left alone.

matplotlib is imported inside the drawing functions only: the plugin loads this module at
start-up and must stay light.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steering_transfer.io import atomic_path

from .leaderboard import LEADERBOARD_FILE, TableSpec, table_spec
from .records import ResultRow

if TYPE_CHECKING:  # typing only: matplotlib loads when something is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DOSE_PREFIX",
    "LAYERS_PREFIX",
    "PLOTS_DIR",
    "plot_label",
    "plot_name",
    "write_plots",
]

#: Sub-folder of the reports directory the PNGs go to (links are relative to the reports).
PLOTS_DIR = "plots"
DOSE_PREFIX = "dose-"
LAYERS_PREFIX = "layers-"
#: Tables whose rows are layer sweeps (``row["figures"]`` = ``L0``, ``L1``, ...).
LAYERS_TABLE_PREFIX = "layers:"

DPI = 100
DOSE_SIZE = (8.5, 4.5)
DOSE_SIZE_TWO_PANELS = (13.0, 4.5)
LAYERS_SIZE = (8.5, 4.0)
#: Legend order by label start ("" = anything else, e.g. the mappers, in drawing order).
_DOSE_LEGEND = ("native", "noise", "", "chosen")
_LAYERS_LEGEND = ("native success", "strong", "used", "unsteered", "")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LAYER_KEY = re.compile(r"L([0-9]+)")
_ARROW = "->"
_ARROW_NAME = "_to_"


# ------------------------------------------------------------------------------------ names


def plot_name(prefix: str, name: str) -> str:
    """``prefix + name + .png`` with ``->`` spelled ``_to_`` and anything outside
    ``[A-Za-z0-9._-]`` replaced by ``_``, so the name is safe in a path and a Markdown link."""
    return prefix + _UNSAFE.sub("_", name.replace(_ARROW, _ARROW_NAME)) + ".png"


def plot_label(path: str) -> str:
    """Alt text of a plot's Markdown link, read back from its file name."""
    stem = Path(path).name.removesuffix(".png")
    if stem.startswith(DOSE_PREFIX):
        return "dose-response " + stem[len(DOSE_PREFIX):].replace(_ARROW_NAME, "→")
    if stem.startswith(LAYERS_PREFIX):
        return "layer sweep " + stem[len(LAYERS_PREFIX):]
    return stem


def _unique_names(prefix: str, keys: Iterable[str]) -> dict[str, str]:
    """File name per key; keys whose sanitised names collide (also by case, for
    case-insensitive file systems) get a short hash of the key appended."""
    names = {key: plot_name(prefix, key) for key in keys}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    for key, name in names.items():
        if counts[name.lower()] > 1:
            digest = hashlib.sha256(key.encode()).hexdigest()[:8]
            names[key] = f"{name.removesuffix('.png')}-{digest}.png"
    return names


# ------------------------------------------------------------------------------ row parsing


@dataclass(frozen=True)
class _Point:
    """One rate with its 95 % interval."""

    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class _DoseRow:
    table: str
    cell_id: str
    pair: str
    mapper: str
    strengths: tuple[float, ...]
    native: tuple[_Point | None, ...] | None
    noise: tuple[_Point | None, ...] | None
    mapped: tuple[_Point | None, ...]
    chosen: float | None
    induce_native: tuple[_Point | None, ...] | None
    induce_noise: tuple[_Point | None, ...] | None
    induce_mapped: tuple[_Point | None, ...] | None


@dataclass(frozen=True)
class _LayersRow:
    table: str
    model: str
    layers: tuple[int, ...]
    points: tuple[_Point, ...]
    strong: frozenset[int]
    used: frozenset[int]
    unsteered: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _point(raw: Any, value_key: str) -> _Point | None:
    """A rate dict as a point; ``None`` when absent or malformed. A missing interval is the
    rate itself (no error bar)."""
    if not isinstance(raw, Mapping):
        return None
    rate = _number(raw.get(value_key))
    if rate is None:
        return None
    low, high = _number(raw.get("low")), _number(raw.get("high"))
    if low is None or high is None:
        low = high = rate
    return _Point(rate, min(low, rate), max(high, rate))


def _series(raw: Any, length: int) -> tuple[_Point | None, ...] | None:
    """A list of rate dicts (``null`` allowed) of the given length, else ``None``."""
    if not isinstance(raw, list) or len(raw) != length:
        return None
    return tuple(_point(item, "rate") for item in raw)


def _row_dict(row: Mapping[str, Any] | ResultRow) -> Mapping[str, Any]:
    return row.to_dict() if isinstance(row, ResultRow) else row


def _dose_row(row: Mapping[str, Any]) -> _DoseRow | None:
    config = row.get("config")
    data = config.get("dose_response") if isinstance(config, Mapping) else None
    if not isinstance(data, Mapping):
        return None
    pair = data.get("pair")
    raw_strengths = data.get("strengths")
    if not isinstance(pair, str) or not pair or not isinstance(raw_strengths, list):
        return None
    strengths = tuple(_number(s) for s in raw_strengths)
    if not strengths or any(s is None for s in strengths):
        return None
    n = len(strengths)
    mapped = _series(data.get("mapped"), n)
    if mapped is None:
        return None
    mapper = data.get("mapper")
    cell_id = str(row.get("cell_id", ""))
    return _DoseRow(
        table=str(row.get("table", "")),
        cell_id=cell_id,
        pair=pair,
        mapper=mapper if isinstance(mapper, str) and mapper else cell_id,
        strengths=tuple(float(s) for s in strengths if s is not None),
        native=_series(data.get("native"), n),
        noise=_series(data.get("noise"), n),
        mapped=mapped,
        chosen=_number(data.get("chosen")),
        induce_native=_series(data.get("induce_native"), n),
        induce_noise=_series(data.get("induce_noise"), n),
        induce_mapped=_series(data.get("induce_mapped"), n),
    )


def _layer_set(value: Any) -> frozenset[int]:
    """``"3,5"`` (or a number, or a list) as a set of layers; ``"none"`` and junk are empty."""
    if isinstance(value, int) and not isinstance(value, bool):
        return frozenset({value})
    parts = value if isinstance(value, list) else str(value or "").split(",")
    out = set()
    for part in parts:
        text = str(part).strip()
        if text.lstrip("-").isdigit():
            out.add(int(text))
    return frozenset(out)


def _layers_row(row: Mapping[str, Any]) -> _LayersRow | None:
    table = str(row.get("table", ""))
    columns, figures = row.get("columns"), row.get("figures")
    if not table.startswith(LAYERS_TABLE_PREFIX) or not isinstance(columns, Mapping):
        return None
    model = columns.get("model")
    if not isinstance(model, str) or not model or not isinstance(figures, Mapping):
        return None
    found = []
    for key, raw in figures.items():
        match = _LAYER_KEY.fullmatch(str(key))
        point = _point(raw, "value")
        if match is not None and point is not None:
            found.append((int(match[1]), point))
    if not found:
        return None
    found.sort(key=lambda item: item[0])
    return _LayersRow(
        table=table,
        model=model,
        layers=tuple(layer for layer, _ in found),
        points=tuple(point for _, point in found),
        strong=_layer_set(columns.get("strong")),
        used=_layer_set(columns.get("used")),
        unsteered=_number(columns.get("unsteered")),
    )


# ---------------------------------------------------------------------------------- drawing


def _new_figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on its own Agg canvas (no pyplot: no global state, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png_bytes(fig: Figure) -> bytes:
    """The figure as PNG without a ``Software`` stamp, so equal figures give equal bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _errors(points: Sequence[_Point]) -> list[list[float]]:
    return [[p.rate - p.low for p in points], [p.high - p.rate for p in points]]


def _present(
    xs: Sequence[float], series: Sequence[_Point | None]
) -> tuple[list[float], list[_Point]]:
    pairs = [(x, p) for x, p in zip(xs, series, strict=True) if p is not None]
    return [x for x, _ in pairs], [p for _, p in pairs]


def _rate_axis(ax: Axes, ylabel: str) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _strength_axis(ax: Axes, strengths: Sequence[float]) -> None:
    """log2 axis with a tick at every measured strength (symlog if one is <= 0)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    positive = [s for s in strengths if s > 0]
    if len(positive) == len(strengths):
        ax.set_xscale("log", base=2)
    else:
        ax.set_xscale("symlog", base=2, linthresh=min(positive, default=1.0))
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(strengths))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("steering strength (log2 scale)")


#: A series to draw: its strengths and one point (or a gap) per strength.
_Curve = tuple[tuple[float, ...], tuple[_Point | None, ...]]


def _dose_panel(
    ax: Axes,
    native: _Curve | None,
    noise: _Curve | None,
    mapped: Sequence[tuple[str, _Curve | None, float | None]],
    ylabel: str,
) -> None:
    """One panel: native with error bars, noise band, a marker series per mapper (label,
    curve, chosen strength), the chosen strengths dotted."""
    from matplotlib import colormaps

    if noise is not None:
        nx, npts = _present(*noise)
        if npts:
            ax.fill_between(
                nx, [p.low for p in npts], [p.high for p in npts],
                color="0.6", alpha=0.3, linewidth=0, label="noise 95 % interval",
            )
            ax.plot(nx, [p.rate for p in npts], color="0.45", linestyle="--", label="noise")
    if native is not None:
        vx, vpts = _present(*native)
        if vpts:
            ax.errorbar(
                vx, [p.rate for p in vpts], yerr=_errors(vpts), color="black", marker="o",
                markersize=4, capsize=3, label="native",
            )
    palette = colormaps["tab10"]
    markers = "sD^vP*Xph"
    width = len(mapped)
    for i, (label, curve, _) in enumerate(mapped):
        mx, mpts = _present(*curve) if curve is not None else ([], [])
        if not mpts:
            continue
        dodge = 2 ** ((i - (width - 1) / 2) * 0.05)  # side by side on the log axis
        ax.errorbar(
            [x * dodge for x in mx], [p.rate for p in mpts], yerr=_errors(mpts),
            color=palette(i % 10), marker=markers[i % len(markers)], markersize=6,
            linestyle="none", capsize=2, label=label,
        )
    chosen = [(value, i, label) for i, (label, _, value) in enumerate(mapped) if value is not None]
    values = sorted({value for value, _, _ in chosen})
    if len(values) == 1:
        ax.axvline(values[0], color="black", linestyle=":", label=f"chosen {values[0]:g}")
    else:  # mappers chose different strengths: one line each, in the mapper's colour
        for value, i, label in chosen:
            ax.axvline(
                value, color=palette(i % 10), linestyle=":", label=f"chosen {value:g} ({label})"
            )
    all_x = [x for curve in (native, noise, *(c for _, c, _ in mapped)) if curve for x in curve[0]]
    _strength_axis(ax, all_x)
    _rate_axis(ax, ylabel)


def _rank(label: str, order: Sequence[str]) -> int:
    """Legend position of a label: its first matching prefix in ``order``, else ``""``'s."""
    return next(
        (i for i, start in enumerate(order) if start and label.startswith(start)),
        order.index(""),
    )


def _outside_legend(fig: Figure, axes: Sequence[Axes], order: Sequence[str]) -> None:
    """One legend right of the plots (it never hides data), each label once, in ``order``."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    labels = sorted(seen, key=lambda label: _rank(label, order))  # stable: drawing order
    fig.legend(
        [seen[label] for label in labels], labels, loc="outside right upper", fontsize="small"
    )


def _mapper_labels(rows: Sequence[_DoseRow]) -> list[str]:
    """The mapper names, or cell ids where one mapper appears in several rows of a pair."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.mapper] = counts.get(row.mapper, 0) + 1
    return [row.mapper if counts[row.mapper] == 1 else row.cell_id for row in rows]


def _curve(row: _DoseRow, series: tuple[_Point | None, ...] | None) -> _Curve | None:
    return (row.strengths, series) if series is not None else None


def _first_curve(rows: Sequence[_DoseRow], name: str) -> _Curve | None:
    """The first row's ``name`` series (native and noise are the same in every row of a pair)."""
    return next((c for r in rows if (c := _curve(r, getattr(r, name))) is not None), None)


def _dose_png(pair: str, rows: Sequence[_DoseRow]) -> bytes:
    """The dose-response figure of one pair (rows sorted by mapper, then cell id)."""
    induce = any(r.induce_mapped is not None or r.induce_native is not None for r in rows)
    fig, axes = _new_figure(DOSE_SIZE_TWO_PANELS if induce else DOSE_SIZE, 2 if induce else 1)
    labels = _mapper_labels(rows)
    _dose_panel(
        axes[0], _first_curve(rows, "native"), _first_curve(rows, "noise"),
        [(label, _curve(r, r.mapped), r.chosen) for label, r in zip(labels, rows, strict=True)],
        "success rate",
    )
    if induce:  # same mapper order (and so colours) as the first panel
        _dose_panel(
            axes[1], _first_curve(rows, "induce_native"), _first_curve(rows, "induce_noise"),
            [
                (label, _curve(r, r.induce_mapped), r.chosen)
                for label, r in zip(labels, rows, strict=True)
            ],
            "induction rate",
        )
        axes[0].set_title("success")
        axes[1].set_title("induction")
    _outside_legend(fig, axes, _DOSE_LEGEND)
    fig.suptitle(pair)
    return _png_bytes(fig)


def _layers_png(model: str, rows: Sequence[_LayersRow]) -> bytes:
    """The layer-sweep figure of one model (one series per ``layers:`` table it appears in)."""
    from matplotlib import colormaps

    fig, (ax,) = _new_figure(LAYERS_SIZE)
    palette = colormaps["tab10"]
    several = len(rows) > 1
    for i, row in enumerate(rows):
        color = palette(i % 10)
        tag = f" ({row.table})" if several else ""
        for layer in sorted(row.used):
            ax.axvspan(
                layer - 0.4, layer + 0.4, color=color, alpha=0.12,
                label=f"used{tag}" if layer == min(row.used) else None,
            )
        ax.errorbar(
            row.layers, [p.rate for p in row.points], yerr=_errors(row.points), color=color,
            marker="o", markersize=4, capsize=3, label=f"native success{tag}",
        )
        strong = [(x, p) for x, p in zip(row.layers, row.points, strict=True) if x in row.strong]
        if strong:
            ax.plot(
                [x for x, _ in strong], [p.rate for _, p in strong], linestyle="none",
                marker="*", markersize=14, color=color, markeredgecolor="black",
                label=f"strong{tag}",
            )
        if row.unsteered is not None:
            ax.axhline(row.unsteered, color=color, linestyle="--", label=f"unsteered{tag}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    _rate_axis(ax, "success rate")
    ax.set_title(model)
    _outside_legend(fig, [ax], _LAYERS_LEGEND)
    return _png_bytes(fig)


# ------------------------------------------------------------------------------ entry point


def _report_file(table: str, tables: Sequence[TableSpec]) -> str:
    spec = table_spec(table, tables)
    return spec.report[0] if spec is not None else LEADERBOARD_FILE


def _write_png(path: Path, data: bytes) -> None:
    """Write atomically, and not at all when the file already holds these bytes."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_plots(
    rows: Sequence[Mapping[str, Any] | ResultRow],
    reports_dir: Path,
    *,
    tables: Iterable[TableSpec] = (),
) -> dict[str, list[str]]:
    """Draw every plot the rows have data for into ``<reports_dir>/plots``.

    ``rows`` are ``results.json`` rows (dicts, or :class:`ResultRow`); ``tables`` say which
    report a table goes to, as for :func:`~.leaderboard.report_files`. Returns, per report file
    name (``leaderboard.md``, ``layers.md``, ...), the sorted paths of its PNGs relative to
    ``reports_dir`` (``plots/dose-....png``), ready to link from that report. Nothing is drawn
    (and matplotlib is not imported) when no row has plot data.
    """
    tables = tuple(tables)
    dose: dict[str, list[_DoseRow]] = {}
    layers: dict[str, list[_LayersRow]] = {}
    for raw in rows:
        row = _row_dict(raw)
        parsed_dose = _dose_row(row)
        if parsed_dose is not None:
            dose.setdefault(parsed_dose.pair, []).append(parsed_dose)
        parsed_layers = _layers_row(row)
        if parsed_layers is not None:
            layers.setdefault(parsed_layers.model, []).append(parsed_layers)
    if not dose and not layers:
        return {}

    from matplotlib import style

    jobs: list[tuple[str, set[str], Callable[[], bytes]]] = []  # (file, reports, draw)
    dose_names = _unique_names(DOSE_PREFIX, dose)
    for pair, pair_rows in sorted(dose.items()):
        pair_rows.sort(key=lambda r: (r.mapper, r.cell_id, r.table))
        reports = {_report_file(r.table, tables) for r in pair_rows}
        jobs.append((dose_names[pair], reports, functools.partial(_dose_png, pair, pair_rows)))
    layer_names = _unique_names(LAYERS_PREFIX, layers)
    for model, model_rows in sorted(layers.items()):
        model_rows.sort(key=lambda r: r.table)
        reports = {_report_file(r.table, tables) for r in model_rows}
        jobs.append(
            (layer_names[model], reports, functools.partial(_layers_png, model, model_rows))
        )

    out: dict[str, list[str]] = {}
    folder = Path(reports_dir) / PLOTS_DIR
    with style.context("default"):  # ignore the user's matplotlibrc
        for name, reports, draw in jobs:
            _write_png(folder / name, draw())
            for report in reports:
                out.setdefault(report, []).append(f"{PLOTS_DIR}/{name}")
    return {report: sorted(paths) for report, paths in sorted(out.items())}
