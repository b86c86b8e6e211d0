"""The part every benchmark cell shares, written once: config, sides, fit, mapping, fidelity.

A cell maps an intervention from a source model into a target through a mapper fit on paired
activations. Whatever the task (a backdoor's steering vector, a refusal direction, the safety
switch's fine-tuned -> base map), the steps around the task are the same:

1. :class:`PreparedCell` — what does not depend on the mapper (paired activations, the target's
   own vector, the source vector with its per-prompt rows, fidelity texts), computed once per
   pair and shared by that pair's mapper cells;
2. :func:`fit_cell` — the mapper fit (timed), then the source vector mapped in both of the
   paper's readings plus the equal-norm random ("noise") control;
3. the task's own measurements (steering, ablation, ...);
4. :func:`cell_fidelity` — KL under replacement beside mean ablation and a shuffled-pairs
   affine reference, and FVU.

Vocabulary shared by every task: ``native`` is the target's own vector, ``mapped_difference`` /
``mapped_direct`` the two readings, ``noise`` the random vector of the mapped norm,
``native_norm`` / ``mapped_norm`` / ``cosine_mapped_native`` the geometry.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..config import DictConfig
from ..errors import SteeringTransferError
from ..fidelity import FidelityResult, fit_shuffled_reference, replacement_fidelity
from ..mappers import Mapper, create_mapper
from ..models import ModelHandle
from ..tasks.prompts import format_prompt, format_training_text, prompt_add_special_tokens
from ..validate import check_count, check_optional_count
from ..vectors import SteeringVector, map_vector, random_like


@dataclass
class Side:
    """A model in a cell, with the prompt style its organism was trained on."""

    handle: ModelHandle
    style: str
    name: str

    def prompt(self, text: str) -> str:
        return format_prompt(text, self.style, self.handle.tokenizer)

    @property
    def add_special_tokens(self) -> bool:
        """Whether tokenizing this side's prompts adds special tokens (chat templates have them)."""
        return prompt_add_special_tokens(self.style)


@dataclass
class CellConfig(DictConfig):
    """The settings every cell has (recorded beside its numbers); tasks add their own."""

    source_layer: int
    target_layer: int
    mapper: str = "affine"
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_fit_instructions: int = 240  # train items whose texts fit the mapper
    n_fidelity: int = 32  # test texts for the replacement fidelity
    max_new_tokens: int = 12
    batch_size: int = 16
    generation_batch_size: int | None = None  # generation batches (None = batch_size)
    max_length: int = 192
    alignment: str = "auto"
    # the models' dtype (see CELL_DTYPES): the sides must be loaded in it
    dtype: str = "float32"

    #: Count fields that may be 0 (e.g. a task's optional extras); every other ``n_*`` is >= 1.
    _may_be_zero: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_config_counts(self, ("seed", *self._may_be_zero))
        check_optional_count(
            self.generation_batch_size, param=f"{type(self).__name__}.generation_batch_size",
            none_means="batch_size",
        )
        check_cell_dtype(self.dtype, param=f"{type(self).__name__}.dtype")

    @property
    def gen_batch_size(self) -> int:
        return self.generation_batch_size or self.batch_size


#: The dtypes a cell's models may run in. float32 is the default: bitwise reproducible.
#: bfloat16 is for speed (on a CPU with AMX / AVX-512 BF16 SmolLM2-135M forwards ran ~3x and
#: batched greedy generation ~6.6x faster, with the same greedy tokens); every activation a
#: cell fits, averages or caches is still cast to float32 as soon as it is read from the model.
CELL_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_cell_dtype(value: object, *, param: str) -> torch.dtype:
    """The torch dtype of a config's ``dtype`` name, or an error naming ``param``."""
    if not isinstance(value, str) or value not in CELL_DTYPES:
        raise SteeringTransferError(
            f"{param}={value!r} is not a cell dtype; use 'float32' (the default, bitwise "
            "reproducible) or 'bfloat16' (faster on CPUs with bfloat16 units)"
        )
    return CELL_DTYPES[value]


def check_side_dtypes(config: Any, *sides: Side) -> None:
    """Every side's model must be loaded in ``config.dtype``: the dtype is recorded with the
    cell's figures, which would otherwise describe a run that did not happen."""
    wanted = check_cell_dtype(config.dtype, param=f"{type(config).__name__}.dtype")
    for side in sides:
        if side.handle.dtype != wanted:
            loaded = str(side.handle.dtype).removeprefix("torch.")
            raise SteeringTransferError(
                f"{type(config).__name__}.dtype={config.dtype!r} but side {side.name!r} "
                f"({side.handle.model_id}) is loaded in {loaded}; load it with "
                f"load_organism(..., dtype={config.dtype!r}) or set dtype={loaded!r}"
            )


#: Config fields holding counts besides those named ``n_*``.
COUNT_FIELDS = (
    "seed", "max_new_tokens", "batch_size", "max_length", "judge_max_new_tokens",
    "condition_batch_size",
)


def check_config_counts(config: Any, may_be_zero: Sequence[str] = ("seed",)) -> None:
    """Every ``n_*`` field and every field of :data:`COUNT_FIELDS` that ``config`` has must be
    an int >= 1 (>= 0 for the fields in ``may_be_zero``); bools and floats are refused."""
    for f in dataclasses.fields(config):
        if f.name.startswith("n_") or f.name in COUNT_FIELDS:
            check_count(
                getattr(config, f.name),
                param=f"{type(config).__name__}.{f.name}",
                minimum=0 if f.name in may_be_zero else 1,
            )


@dataclass(kw_only=True)
class PreparedCell:
    """Everything of a cell that does not depend on the mapper, computed once per pair."""

    source: Side
    target: Side
    config: CellConfig
    source_layer: int
    target_layer: int
    fit_source: torch.Tensor
    fit_target: torch.Tensor
    native: SteeringVector  # the target's own vector
    source_vector: SteeringVector
    source_toward: torch.Tensor  # per-prompt source rows of the vector's two sides
    source_away: torch.Tensor
    fidelity_texts: list[str]
    seconds: dict[str, float]
    # mapper-independent results shared by the pair's cells (e.g. the target's untouched and
    # mean-ablated judged completions), keyed by what produced them
    shared: dict[Any, Any] = field(default_factory=dict)


@dataclass
class MappedVectors:
    """The source vector carried into the target, in both readings, and its noise control."""

    difference: SteeringVector  # mean M(h_toward) - mean M(h_away)
    direct: SteeringVector  # M(v) - M(0)
    noise: SteeringVector  # random direction with the difference reading's norm

    def readings(self) -> tuple[tuple[str, SteeringVector], ...]:
        """``(name, vector)`` of the two readings, in the order cells evaluate them."""
        return (("mapped_difference", self.difference), ("mapped_direct", self.direct))


@dataclass
class VectorGeometry:
    """How the mapped vector compares with the target's own."""

    native_norm: float
    mapped_norm: float
    cosine_mapped_native: float

    @classmethod
    def of(cls, native: SteeringVector, mapped: SteeringVector) -> VectorGeometry:
        cos = torch.nn.functional.cosine_similarity(mapped.vector, native.vector, dim=0)
        return cls(native.norm(), mapped.norm(), float(cos))


@dataclass
class FittedCell:
    """A prepared cell with its mapper fit and the source vector mapped."""

    config: CellConfig
    mapper: Mapper
    mapped: MappedVectors
    seconds: dict[str, float]


def fit_mapper(
    name: str,
    mapper_kwargs: dict[str, Any],
    seed: int,
    fit_source: torch.Tensor,
    fit_target: torch.Tensor,
    *,
    show_progress: bool = False,
) -> Mapper:
    """A registered mapper built for the paired activations' widths and fit on them."""
    fitted = create_mapper(
        name, fit_source.shape[-1], fit_target.shape[-1], seed=seed, **mapper_kwargs
    )
    fitted.fit(fit_source, fit_target, show_progress=show_progress)
    return fitted


def fit_summary(mapper: Mapper) -> dict[str, Any]:
    """What a cell's row says about its mapper's fit: the training and held-out token rows
    (the same split for every architecture), the held-out FVU, epochs and wall time."""
    report = mapper.fit_report
    if report is None:
        return {}
    summary: dict[str, Any] = {
        "n_train": report.n_train, "n_val": report.n_val, "val_fvu": report.val_fvu,
        "epochs": report.epochs, "stopped_early": report.stopped_early,
        "seconds": round(report.seconds, 2),
    }
    capacity = getattr(mapper, "represents_affine", None)  # a width bottleneck, if it has one
    if isinstance(capacity, bool):
        summary["represents_affine"] = capacity
    return summary


def fit_cell(
    prep: PreparedCell,
    mapper: str,
    mapper_kwargs: dict[str, Any] | None = None,
    *,
    show_progress: bool = False,
) -> FittedCell:
    """Fit ``mapper`` on the prepared pair and map the source vector (both readings + noise)."""
    config = dataclasses.replace(
        prep.config, mapper=mapper, mapper_kwargs=dict(mapper_kwargs or {})
    )
    seconds = dict(prep.seconds)
    t0 = time.perf_counter()
    fitted = fit_mapper(
        config.mapper, config.mapper_kwargs, config.seed, prep.fit_source, prep.fit_target,
        show_progress=show_progress,
    )
    seconds["fit"] = time.perf_counter() - t0
    common: dict[str, Any] = {
        "target_model_id": prep.target.handle.model_id, "target_layer": prep.target_layer,
    }
    difference = map_vector(
        fitted, positive_acts=prep.source_toward, negative_acts=prep.source_away,
        reading="difference", **common,
    )
    direct = map_vector(fitted, source_vector=prep.source_vector, reading="direct", **common)
    # a mapper whose mapped vector is exactly zero (e.g. one that outputs a constant) steers
    # nothing; its "noise" of equal norm is the same zero vector
    noise = random_like(difference, seed=config.seed) if difference.norm() > 0 else difference
    return FittedCell(config, fitted, MappedVectors(difference, direct, noise), seconds)


def cell_fidelity(
    prep: PreparedCell, cell: FittedCell, *, show_progress: bool = False
) -> FidelityResult:
    """KL and FVU when the target layer is replaced by mapped source activations (timed),
    beside mean ablation, the shuffled-pairs affine reference and the token-mean reference.

    The reference (:func:`~steering_transfer.fidelity.fit_shuffled_reference`) is fit on the
    cell's own fit rows, source rows permuted with the config's seed, with the cell's mapper
    kwargs when the cell's mapper is affine (the same ridge), else affine defaults. It does not
    depend on the cell's mapper otherwise, so a pair's cells share it (``prep.shared``).
    """
    t0 = time.perf_counter()
    config = cell.config
    kwargs = dict(config.mapper_kwargs) if config.mapper == "affine" else {}
    key = ("fidelity_shuffled_reference", config.seed, repr(sorted(kwargs.items())))
    if key not in prep.shared:
        prep.shared[key] = fit_shuffled_reference(
            prep.fit_source, prep.fit_target, seed=config.seed, mapper_kwargs=kwargs
        )
    result = replacement_fidelity(
        prep.source.handle, prep.source_layer, prep.target.handle, prep.target_layer,
        cell.mapper, prep.fidelity_texts,
        alignment=config.alignment,  # type: ignore[arg-type]
        batch_size=config.batch_size, max_length=config.max_length, show_progress=show_progress,
        reference=prep.shared[key], token_reference=True,
    )
    cell.seconds["fidelity"] = time.perf_counter() - t0
    return result


def cell_seconds(seconds: dict[str, float], *parts: str) -> dict[str, float]:
    """``seconds`` with ``cell`` = the sum of the mapper-dependent ``parts`` that ran."""
    seconds["cell"] = sum(seconds.get(part, 0.0) for part in parts)
    return seconds


def training_texts(side: Side, examples: Sequence[tuple[str, str]]) -> list[str]:
    """Each ``(user prompt, response)`` as the full text ``side`` was trained on."""
    return [
        format_training_text(prompt, response, side.style, side.handle.tokenizer)[1]
        for prompt, response in examples
    ]


def fit_texts(source: Side, target: Side, examples: Sequence[tuple[str, str]]) -> list[str]:
    """Mapper training texts: the task's records in both sides' prompt styles, deduplicated.

    Each text is read by both models (pairs need the same string); using both styles covers
    the distributions the vector is extracted from (source style) and applied to (target).
    """
    sides = [source] if source.style == target.style else [source, target]
    texts = [text for side in sides for text in training_texts(side, examples)]
    return list(dict.fromkeys(texts))
