"""Mapper base class, config dataclass and the architecture registry.

A mapper learns ``f: R^{d_source} -> R^{d_target}`` from paired residual-stream activations.
A new architecture is one file: subclass :class:`Mapper` (and :class:`MapperConfig` if it has
hyperparameters) and decorate it with ``@register_mapper("name")``. The file can live outside
this package: import it before mappers are listed (``pytest bench -p my_mapper``), or declare it
in the ``steering_transfer.mappers`` entry-point group of an installed distribution, which the
registry loads the first time mappers are listed or looked up (:func:`load_entry_point_mappers`).
Artifacts are a folder holding ``mapper.safetensors`` (weights) + ``config.json`` (architecture,
config, fit report), written as one unit (see :meth:`Mapper.save`).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from steering_transfer.config import DictConfig
from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import (
    atomic_directory,
    interrupted_swaps,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from steering_transfer.validate import check_finite, check_matrix

WEIGHTS_FILE = "mapper.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
#: Entry-point group of mappers from other distributions: a module (registering on import) or a
#: :class:`Mapper` subclass (registered under the entry point's name unless it registers itself).
ENTRY_POINT_GROUP = "steering_transfer.mappers"


@dataclass
class MapperConfig(DictConfig):
    """Hyperparameters shared by all mappers; subclasses add their own fields.

    ``val_fraction`` of the paired rows (a split seeded by ``seed``, the same for every
    architecture) is held out of every fit: closed-form mappers never see it, trained ones stop
    early on it, and every fit reports its FVU on it (``FitReport.val_fvu``), so mappers are
    compared on the same training tokens and scored on the same held-out ones.
    """

    source_dim: int
    target_dim: int
    seed: int = 0
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("source_dim", "target_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise SteeringTransferError(f"{name} must be a positive int, got {value!r}")
        value = self.val_fraction
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0.0 <= value < 1.0
        ):
            raise SteeringTransferError(
                f"val_fraction must be a number in [0.0, 1.0), got {value!r} (0 holds nothing "
                "out: no early stopping and no held-out FVU)"
            )


def validation_size(n: int, val_fraction: float) -> int:
    """Validation rows: ``floor(n * val_fraction)``, at least 1 if requested and n >= 2."""
    if val_fraction <= 0 or n < 2:
        return 0
    return min(max(int(n * val_fraction), 1), n - 1)


@dataclass
class FitSplit:
    """The rows a fit trains on and the rows it holds out, and the seeded generator that drew
    them (a trainer continues it for its epoch shuffles, so a fit is one seeded stream)."""

    train_rows: torch.Tensor
    val_rows: torch.Tensor
    generator: torch.Generator

    @classmethod
    def draw(cls, n: int, val_fraction: float, seed: int) -> FitSplit:
        """A random permutation of the ``n`` rows from ``seed``; its first rows are held out."""
        generator = torch.Generator().manual_seed((seed + 1) % 2**63)
        perm = torch.randperm(n, generator=generator)
        n_val = validation_size(n, val_fraction)
        return cls(perm[n_val:], perm[:n_val], generator)


@dataclass
class FitReport:
    """What a fit did: sizes, time, and (for iterative fits) the loss curves.

    ``seconds`` is wall time: it is kept in memory but not saved (it would make two saves of
    the same fit differ byte-wise), is NaN after :func:`load_mapper`, and is left out of ``==``.
    """

    n_train: int
    n_val: int
    seconds: float = field(default=math.nan, compare=False)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    epochs: int = 0
    stopped_early: bool = False
    #: FVU of the returned weights on the held-out rows (None: nothing held out), set by
    #: :meth:`Mapper.fit` the same way for every architecture
    val_fvu: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_artifact(self) -> dict[str, Any]:
        """The fields that describe the fit itself, without wall time (see the class doc)."""
        return {k: v for k, v in self.to_dict().items() if k != "seconds"}


M = TypeVar("M", bound="Mapper")


class Mapper(nn.Module, ABC):
    """Maps source-model activations ``(..., d_source)`` to target-model activations."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MapperConfig]] = MapperConfig

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        self.config = config
        self.fit_report: FitReport | None = None

    @property
    def source_dim(self) -> int:
        return self.config.source_dim

    @property
    def target_dim(self) -> int:
        return self.config.target_dim

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., d_source)`` to ``(..., d_target)``."""

    @abstractmethod
    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        """Fit on validated float tensors ``(n, d_source)`` and ``(n, d_target)`` (the training
        rows of the split; the held-out rows never reach it)."""

    def _fit_split(
        self, source: torch.Tensor, target: torch.Tensor, split: FitSplit, show_progress: bool
    ) -> FitReport:
        """Fit given every row and the split. The default trains :meth:`_fit` on the training
        rows (in their original order); a trainer that stops early on the held-out rows
        overrides this instead."""
        rows = split.train_rows.sort().values
        if rows.numel() == source.shape[0]:
            return self._fit(source, target, show_progress)
        return self._fit(source[rows], target[rows], show_progress)

    def fit(
        self, source: torch.Tensor, target: torch.Tensor, *, show_progress: bool = True
    ) -> FitReport:
        """Fit on paired token activations (rows of ``source`` and ``target`` correspond).

        ``config.val_fraction`` of the rows (seeded by ``config.seed``) are held out of the
        fit and scored afterwards (``val_fvu``); ``n_train`` / ``n_val`` count the rows.
        """
        check_matrix(source, param="source", dim=self.source_dim)
        check_matrix(target, param="target", dim=self.target_dim)
        if source.shape[0] != target.shape[0]:
            raise SteeringTransferError(
                f"source has {source.shape[0]} rows but target has {target.shape[0]}; "
                "pass paired activations (one row per aligned token)"
            )
        check_finite(source, param="source")
        check_finite(target, param="target")
        source, target = source.float(), target.float()
        split = FitSplit.draw(source.shape[0], self.config.val_fraction, self.config.seed)
        report = self._fit_split(source, target, split, show_progress)
        report.n_train, report.n_val = split.train_rows.numel(), split.val_rows.numel()
        report.val_fvu = self._held_out_fvu(source, target, split.val_rows)
        self.fit_report = report
        return report

    def _held_out_fvu(
        self, source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor
    ) -> float | None:
        """FVU (per-dimension mean, float64) of the fitted map on the held-out rows."""
        if rows.numel() < 2:
            return None
        rows = rows.sort().values
        y = target[rows].double()
        pred = self.map(source[rows]).double()
        denom = float((y - y.mean(0)).square().sum())
        return float((pred - y).square().sum()) / denom if denom > 0 else None

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """Map activations with input validation and no autograd."""
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.source_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise SteeringTransferError(
                f"input has shape {shape} but this {self.name} mapper expects last dimension "
                f"{self.source_dim} (source hidden size)"
            )
        # Buffers too: a closed-form mapper may hold only buffers (e.g. procrustes).
        param = next(itertools.chain(self.parameters(), self.buffers()), None)
        with torch.no_grad():
            out = self(x.to(param.device, param.dtype)) if param is not None else self(x)
        return out.to(x.dtype)

    # ------------------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write the folder ``directory`` with ``mapper.safetensors`` and ``config.json``.

        The two files must change together (new weights under an old config would load without
        error), so the folder is built as a unit: both files are written into a temporary
        sibling folder, which then replaces ``directory`` in one atomic exchange
        (:func:`~steering_transfer.io.atomic_directory`). A killed save leaves the complete
        old mapper or the complete new one, never a mix. (Without an atomic exchange, i.e. off
        Linux, a kill between moving the old folder aside and the new one in leaves no folder;
        :func:`load_mapper` then names the aside copy.) Because the whole folder is replaced,
        ``directory`` must hold nothing but a mapper. Same mapper, same bytes: no wall time
        is saved and the safetensors header is canonical.
        """
        directory = Path(directory)
        if directory.is_dir():
            foreign = sorted(p.name for p in directory.iterdir()
                             if p.name not in (WEIGHTS_FILE, CONFIG_FILE))
            if foreign:
                raise SteeringTransferError(
                    f"directory {str(directory)!r} holds files other than a mapper's "
                    f"({', '.join(foreign[:5])}); a save replaces the whole folder, so pass a "
                    "folder of its own (e.g. a new sub-folder) for the mapper"
                )
        meta: dict[str, Any] = {
            "architecture": self.name,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
        }
        if self.fit_report is not None:
            meta["fit_report"] = self.fit_report.to_artifact()
        with atomic_directory(directory) as tmp:
            write_tensors(tmp / WEIGHTS_FILE, self.state_dict(),
                          metadata={"architecture": self.name,
                                    "format_version": str(FORMAT_VERSION)})
            write_json(tmp / CONFIG_FILE, meta)
        return directory

    @classmethod
    def from_config(cls: type[M], config: MapperConfig) -> M:
        return cls(config)


_REGISTRY: dict[str, type[Mapper]] = {}


def register_mapper(name: str) -> Any:
    """Class decorator adding a mapper architecture to the registry under ``name``."""

    def decorator(cls: type[Mapper]) -> type[Mapper]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise SteeringTransferError(f"a mapper named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


#: "pending" until the entry points have loaded ("loading" while they do, so a plugin that
#: lists mappers on import does not recurse; back to "pending" after a failure, so it repeats).
_entry_points_state = "pending"


def _describe(entry: metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    origin = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"mapper entry point {entry.name!r} = {entry.value!r}{origin}"


def _load_entry_point(entry: metadata.EntryPoint) -> None:
    """Import one entry point; register it when it is a class not registered by its module."""
    try:
        loaded = entry.load()
    except Exception as exc:  # any import-time failure of third-party code
        raise SteeringTransferError(
            f"{_describe(entry)} (group {ENTRY_POINT_GROUP!r}) failed to load: "
            f"{type(exc).__name__}: {exc}; fix or uninstall the distribution that declares it"
        ) from exc
    if inspect.ismodule(loaded):
        return  # its @register_mapper classes registered on import
    if inspect.isclass(loaded) and issubclass(loaded, Mapper):
        if loaded not in _REGISTRY.values():
            try:
                register_mapper(entry.name)(loaded)
            except SteeringTransferError as exc:
                raise SteeringTransferError(f"{_describe(entry)}: {exc}") from exc
        return
    raise SteeringTransferError(
        f"{_describe(entry)} is a {type(loaded).__name__}, not a module or a Mapper subclass; "
        "point it at the module that registers the mapper or at the Mapper class"
    )


def load_entry_point_mappers() -> None:
    """Register the mappers of the ``steering_transfer.mappers`` entry-point group, once.

    Called by :func:`available_mappers` and :func:`get_mapper_class` (so lazily: importing the
    library imports no third-party mapper). A broken entry point raises
    :class:`SteeringTransferError` naming it, on every call until it is fixed.
    """
    global _entry_points_state
    if _entry_points_state != "pending":
        return
    _entry_points_state = "loading"
    try:
        for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            _load_entry_point(entry)
    except BaseException:
        _entry_points_state = "pending"
        raise
    _entry_points_state = "done"


def available_mappers() -> list[str]:
    """Names of all registered architectures (entry-point mappers included)."""
    load_entry_point_mappers()
    return sorted(_REGISTRY)


def get_mapper_class(name: str) -> type[Mapper]:
    """The registered class of ``name`` (entry-point mappers included)."""
    load_entry_point_mappers()
    if name not in _REGISTRY:
        raise SteeringTransferError(
            f"unknown mapper {name!r}; known mappers: {', '.join(available_mappers())}"
        )
    return _REGISTRY[name]


def create_mapper(name: str, source_dim: int, target_dim: int, **hyperparameters: Any) -> Mapper:
    """Instantiate a registered mapper for the given widths."""
    cls = get_mapper_class(name)
    config = cls.config_cls.from_dict(
        {"source_dim": source_dim, "target_dim": target_dim, **hyperparameters}
    )
    return cls.from_config(config)


def load_mapper(
    directory: str | Path,
    *,
    source_dim: int | None = None,
    target_dim: int | None = None,
) -> Mapper:
    """Load a mapper saved with :meth:`Mapper.save`; optionally check the expected widths."""
    directory = Path(directory)
    if not directory.is_dir():
        asides = interrupted_swaps(directory)
        if asides:
            raise SteeringTransferError(
                f"mapper directory {str(directory)!r} does not exist: a save into it was killed "
                f"while swapping folders and left the previous mapper at {str(asides[0])!r}; "
                "rename that folder to the directory to recover it, or save the mapper again"
            )
        raise SteeringTransferError(
            f"mapper directory {str(directory)!r} does not exist; pass the folder given to "
            "Mapper.save"
        )
    meta = read_json(directory / CONFIG_FILE)
    if meta.get("format_version") != FORMAT_VERSION or "architecture" not in meta:
        raise SteeringTransferError(
            f"{directory / CONFIG_FILE} is not a steering-transfer mapper config "
            f"(format_version {FORMAT_VERSION} expected)"
        )
    cls = get_mapper_class(str(meta["architecture"]))
    config = cls.config_cls.from_dict(dict(meta["config"]))
    for name, expected in (("source_dim", source_dim), ("target_dim", target_dim)):
        if expected is not None and getattr(config, name) != expected:
            raise SteeringTransferError(
                f"mapper in {directory} has {name}={getattr(config, name)} but {expected} was "
                "expected; it was trained for a different model or layer pair"
            )
    mapper = cls.from_config(config)
    state = read_tensors(directory / WEIGHTS_FILE)
    try:
        mapper.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SteeringTransferError(
            f"weights in {directory / WEIGHTS_FILE} do not match the config ({exc})"
        ) from exc
    if "fit_report" in meta:
        mapper.fit_report = FitReport(**meta["fit_report"])
    mapper.eval()
    return mapper
