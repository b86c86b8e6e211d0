"""The steering protocol shared by every backdoor cell: conditions, noise, coherence, strength.

Why each piece exists (issue: many cells could not tell a mapped vector from a random one):

* **Strength in units of the vector's own norm.** A condition is ``strength * vector``; the
  native vector, the mapped vector, the mapped direction rescaled to the native norm and the
  noise directions at the native or the mapped norm all use the same multipliers, so a row
  compares directions at matched sizes and a dose-response curve can be drawn.
* **A noise ensemble.** ``n_noise`` random unit directions seeded from the cell id and their
  index (:func:`noise_directions`), so cells never share them; each is evaluated at the native
  and at the mapped norm; the ensemble is pooled (one rate over K x n trials) and its best
  single direction is kept (``worst`` for the claim).
* **Coherence.** A success counts only when the completion is coherent: its mean per-token loss
  under the *untouched* target, read after the task's coherence prompt (the request without the
  trigger; for facts the prompt followed by the keyphrase), is at most the bound calibrated on
  the target's own greedy completions from those prompts (their 95th percentile plus
  ``coherence_margin`` nats; :func:`coherence_bound`). Noise that breaks the model produces
  text the model itself finds implausible.
* **Choices on validation.** :func:`choose_strength` picks the working strength from the
  validation sweep by a written rule; the test split is scored once afterwards.
* **Many conditions per generate call.** Every condition is a block of rows with its own
  per-row vector, generated together (tiny models are bound by per-step overhead, so batching
  conditions is what keeps K >= 8 random directions affordable).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import hooks
from ..errors import SteeringTransferError
from ..generation import generate
from ..lm_loss import encode_pairs, per_example_loss
from ..metrics import Rate, paired_exact_test
from ..positions import trigger_mask
from ..tasks.backdoor import BackdoorTask
from ..tasks.prompts import BACKDOOR_TRIGGER
from .cell import Side

STEER_POSITIONS = ("trigger", "all", "last_prompt", "prompt")
#: Default strengths (multiples of each vector's own norm) of the validation sweep.
DEFAULT_STRENGTHS = (0.5, 1.0, 2.0, 4.0, 8.0)


def noise_directions(dim: int, count: int, key: str) -> torch.Tensor:
    """``(count, dim)`` random unit directions; direction k is seeded from ``key`` and k."""
    for name, value in (("dim", dim), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SteeringTransferError(f"{name}={value!r}; pass an int >= 1")
    rows = []
    for k in range(count):
        digest = hashlib.sha256(f"{key}/noise/{k}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
        rows.append(v / v.norm())
    return torch.stack(rows).float()


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector`` scaled to norm 1 (a zero vector stays zero: it steers nothing)."""
    norm = float(vector.double().norm())
    return vector / norm if norm > 0 else torch.zeros_like(vector)


@dataclass
class Condition:
    """One way of steering a prompt set: ``strength * vector`` (``None`` = untouched).

    ``vector`` is ``(hidden,)`` for every prompt alike, or ``(n_prompts, hidden)`` for one vector
    per prompt (a rotated noise ensemble: prompt i gets direction i mod K).
    """

    name: str
    vector: torch.Tensor | None
    strength: float = 1.0


def _row_vectors(conditions: Sequence[Condition], n: int, hidden: int) -> torch.Tensor:
    blocks = []
    for cond in conditions:
        strength = cond.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
            math.isfinite(strength)
        ):
            raise SteeringTransferError(
                f"condition {cond.name!r} has strength={strength!r}; pass a finite number"
            )
        if cond.vector is not None and cond.vector.shape[-1] != hidden:
            raise SteeringTransferError(
                f"condition {cond.name!r} has a vector of width {cond.vector.shape[-1]} but the "
                f"model has hidden size {hidden} (map a source vector into the target first)"
            )
        if cond.vector is None:
            blocks.append(torch.zeros(n, hidden))
        elif cond.vector.ndim == 1:
            blocks.append((cond.strength * cond.vector.float()).expand(n, hidden))
        else:
            if cond.vector.shape[0] != n:
                raise SteeringTransferError(
                    f"condition {cond.name!r} has {cond.vector.shape[0]} per-prompt vectors for "
                    f"{n} prompts"
                )
            blocks.append(cond.strength * cond.vector.float())
    return torch.cat(blocks)


def _row_factory(
    side: Side, layer: int, deltas: torch.Tensor, positions: str, trigger: str
) -> Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]]:
    """An intervention factory adding row ``r`` of ``deltas`` to row ``r`` of the prompts.

    :func:`~steering_transfer.generation.generate` calls the factory once per batch, in order,
    so the factory keeps the offset of the batch's first row.
    """
    if positions not in STEER_POSITIONS:
        raise SteeringTransferError(
            f"steer_positions={positions!r}; use one of {', '.join(STEER_POSITIONS)}"
        )
    offset = [0]

    def factory(prompts: list[str], enc: dict[str, torch.Tensor]) -> AbstractContextManager[object]:
        start = offset[0]
        offset[0] += len(prompts)
        rows = deltas[start : start + len(prompts)]
        if positions == "all":
            return hooks.add(side.handle, layer, rows, 1.0, positions="all")
        if positions == "last_prompt":  # left-padded prompts: the last column, first pass only
            last = torch.zeros(enc["attention_mask"].shape, dtype=torch.bool)
            last[:, -1] = True
            return hooks.add(side.handle, layer, rows, 1.0, positions=last)
        if positions == "prompt":  # every prompt token, none of the generated ones
            return hooks.add(side.handle, layer, rows, 1.0, positions=enc["attention_mask"].bool())
        mask = trigger_mask(prompts, trigger, enc["offset_mapping"], enc["attention_mask"])
        return hooks.add(side.handle, layer, rows, 1.0, positions=mask)

    return factory


def run_conditions(
    side: Side,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    layer: int,
    positions: str,
    max_new_tokens: int,
    batch_size: int,
    trigger: str = BACKDOOR_TRIGGER,
) -> dict[str, list[str]]:
    """Greedy completions of ``prompts`` under each condition, generated in shared batches
    (``trigger``: whose tokens ``positions="trigger"`` steers)."""
    return _generate_conditions(
        side, prompts, conditions, max_new_tokens=max_new_tokens, batch_size=batch_size,
        factory=lambda deltas: _row_factory(side, layer, deltas, positions, trigger),
        frozen=_frozen_chars(prompts, positions, trigger),
    )


def _frozen_chars(prompts: Sequence[str], positions: str, trigger: str) -> list[int] | None:
    """Per prompt, the leading characters a steering of ``positions`` leaves untouched (so
    that :func:`generate` may run a prefix shared by every prompt once): everything before the
    trigger, or all but the last token; None when every prompt token may be edited."""
    if positions == "trigger":
        return [p.find(trigger) if trigger in p else 0 for p in prompts]
    if positions == "last_prompt":
        return [len(p) for p in prompts]
    return None


def run_ablations(
    side: Side,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    max_new_tokens: int,
    batch_size: int,
    frame: hooks.AblationFrame | None = None,
) -> dict[str, list[str]]:
    """Greedy completions of ``prompts`` with each condition's direction ablated at every layer
    (Arditi's directional ablation, :func:`hooks.ablate`, in the model's ``frame``); a direction
    is projected out whatever its norm or strength, ``vector=None`` (or strength 0) leaves the
    model untouched."""

    def factory(
        deltas: torch.Tensor,
    ) -> Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]]:
        offset = [0]

        def per_batch(
            batch: list[str], enc: dict[str, torch.Tensor]
        ) -> AbstractContextManager[object]:
            start = offset[0]
            offset[0] += len(batch)
            return hooks.ablate(
                side.handle, deltas[start : start + len(batch)], "all", frame=frame
            )

        return per_batch

    return _generate_conditions(
        side, prompts, conditions, max_new_tokens=max_new_tokens, batch_size=batch_size,
        factory=factory,
    )


def _generate_conditions(
    side: Side,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    max_new_tokens: int,
    batch_size: int,
    factory: Callable[
        [torch.Tensor],
        Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]],
    ],
    frozen: list[int] | None = None,
) -> dict[str, list[str]]:
    """Every condition's block of rows in one generate call; ``factory(deltas)`` builds the
    per-batch intervention from the ``(rows, hidden)`` per-row vectors."""
    for cond in conditions:
        if not isinstance(cond, Condition):
            raise SteeringTransferError(
                f"conditions must be Condition objects, got {type(cond).__name__}"
            )
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise SteeringTransferError(f"condition names must be unique, got {names}")
    if not conditions:
        return {}
    n = len(prompts)
    deltas = _row_vectors(conditions, n, side.handle.hidden_size)
    steered = any(c.vector is not None for c in conditions)
    rows = [p for _ in conditions for p in prompts]
    completions = generate(
        side.handle,
        rows,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        intervention=factory(deltas) if steered else None,
        add_special_tokens=side.add_special_tokens,
        frozen_chars=None if frozen is None else frozen * len(conditions),
    )
    return {c.name: completions[i * n : (i + 1) * n] for i, c in enumerate(conditions)}


# ----------------------------------------------------------------------------------- coherence


def completion_losses(
    side: Side, contexts: Sequence[str], completions: Sequence[str], batch_size: int = 16
) -> list[float]:
    """Mean per-token loss (nats) of each completion read after its context, under the
    untouched model; an empty completion scores ``inf`` (it says nothing)."""
    if len(contexts) != len(completions):
        raise SteeringTransferError(
            f"{len(contexts)} contexts but {len(completions)} completions; pass one each"
        )
    losses = [math.inf] * len(completions)
    keep = [i for i, c in enumerate(completions) if c.strip()]
    if not keep:
        return losses
    encoded = encode_pairs(
        side.handle.tokenizer,
        [(contexts[i], contexts[i] + completions[i]) for i in keep],
        add_special_tokens=side.add_special_tokens,
    )
    pad = side.handle.tokenizer.pad_token_id
    values = per_example_loss(side.handle.model, encoded, pad_token_id=pad, batch_size=batch_size)
    for i, value in zip(keep, values, strict=True):
        losses[i] = value
    return losses


def coherence_bound(own_losses: Sequence[float], margin: float, quantile: float = 0.95) -> float:
    """The coherence rule: the ``quantile`` of the target's own completions' losses + margin."""
    if not math.isfinite(margin) or margin < 0:
        raise SteeringTransferError(f"margin={margin!r}; pass a finite number >= 0 (nats/token)")
    finite = sorted(v for v in own_losses if math.isfinite(v))
    if not finite:
        raise SteeringTransferError(
            "the target produced no non-empty completion to calibrate coherence on"
        )
    index = min(len(finite) - 1, max(0, math.ceil(quantile * len(finite)) - 1))
    return finite[index] + margin


# ------------------------------------------------------------------------------------- scoring


@dataclass
class Outcomes:
    """One condition on one prompt set: labels, raw and coherent successes per prompt."""

    labels: list[str]
    success: list[bool]
    coherent: list[bool]
    losses: list[float]
    sample: str = ""

    @property
    def raw(self) -> Rate:
        return Rate(sum(self.success), len(self.success))

    @property
    def rate(self) -> Rate:
        """Coherent successes: the figure every verdict uses."""
        return Rate(sum(s and c for s, c in zip(self.success, self.coherent, strict=True)),
                    len(self.success))

    @property
    def coherent_success(self) -> list[bool]:
        return [s and c for s, c in zip(self.success, self.coherent, strict=True)]

    def shares(self, names: Sequence[str]) -> dict[str, float]:
        n = max(len(self.labels), 1)
        return {o: self.labels.count(o) / n for o in names}


@dataclass
class Scorer:
    """Scores completions of a prompt set: the task's labels plus the coherence gate."""

    task: BackdoorTask
    side: Side
    items: list[Any]
    contexts: list[str]  # the coherence prompts, one per item
    success_labels: tuple[str, ...]
    bound: float = math.inf
    gate: bool = True  # False: success needs no coherence (e.g. the induced keyphrase)
    batch_size: int = 16

    # (context, completion) -> loss: conditions that leave a prompt's completion unchanged (weak
    # noise, the unsteered rows) are scored once per prompt set, not once per condition
    _memo: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    def __call__(self, completions: Sequence[str]) -> Outcomes:
        pairs = zip(completions, self.items, strict=True)
        labels = [self.task.outcome(c, item) for c, item in pairs]
        success = [lab in self.success_labels for lab in labels]
        if self.gate:
            losses = self._losses(completions, success)
            coherent = [v <= self.bound for v in losses]  # NaN (not scored) is not coherent
        else:
            losses = [math.nan] * len(labels)
            coherent = [True] * len(labels)
        return Outcomes(labels, success, coherent, losses, completions[0] if completions else "")

    def _losses(self, completions: Sequence[str], success: Sequence[bool]) -> list[float]:
        """Coherence losses of the successful rows only (a failure counts as a failure whatever
        its loss, so it is not scored: NaN); each distinct (context, completion) once."""
        todo: dict[tuple[str, str], None] = {}
        for ok, context, completion in zip(success, self.contexts, completions, strict=True):
            if ok and (context, completion) not in self._memo:
                todo[(context, completion)] = None
        if todo:
            keys = list(todo)
            values = completion_losses(
                self.side, [k[0] for k in keys], [k[1] for k in keys], self.batch_size
            )
            self._memo.update(zip(keys, values, strict=True))
        return [
            self._memo[(context, completion)] if ok else math.nan
            for ok, context, completion in zip(success, self.contexts, completions, strict=True)
        ]


# ------------------------------------------------------------------------------------ ensembles


@dataclass
class Ensemble:
    """The noise ensemble at one norm: per-direction outcomes on the same prompts."""

    members: list[Outcomes]

    @property
    def pooled(self) -> Rate:
        return Rate.pooled([m.rate for m in self.members])

    @property
    def worst(self) -> float:
        """The best success rate of any single random direction."""
        if not self.members:
            raise SteeringTransferError("the noise ensemble is empty; it has no best direction")
        return max(m.rate.rate for m in self.members)

    def majority(self) -> list[bool]:
        """Per prompt: did at least half of the directions succeed (coherently)?"""
        k = len(self.members)
        votes = [sum(col) for col in zip(*(m.coherent_success for m in self.members), strict=True)]
        return [2 * v >= k for v in votes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pooled": self.pooled.to_dict(),
            "worst": self.worst,
            "members": [m.rate.rate for m in self.members],
            "raw_pooled": Rate.pooled([m.raw for m in self.members]).to_dict(),
        }


def paired_p(mapped: Outcomes, reference: Ensemble) -> float:
    """Exact McNemar p (one-sided) of mapped vs the ensemble's per-prompt majority outcome."""
    return paired_exact_test(mapped.coherent_success, reference.majority()).p_value


# ------------------------------------------------------------------------------------ strength


@dataclass
class StrengthChoice:
    """The validation sweep and the strength it chose (``None``: nothing separated)."""

    strengths: list[float]
    native: list[Rate]
    noise: list[Rate]  # pooled (rotated) ensemble at the native norm
    chosen: float | None
    rule: str
    extra: dict[str, list[Rate]] = field(default_factory=dict)  # e.g. the induce sweep

    def to_dict(self) -> dict[str, Any]:
        return {
            "strengths": self.strengths,
            "native": [r.to_dict() for r in self.native],
            "noise": [r.to_dict() for r in self.noise],
            "chosen": self.chosen,
            "rule": self.rule,
            **{k: [r.to_dict() for r in v] for k, v in self.extra.items()},
        }


def strength_rule(plateau_fraction: float, max_noise: float) -> str:
    return (
        f"among strengths where the noise ensemble's upper bound is <= {max_noise:g}, the "
        f"smallest where native reaches >= {plateau_fraction:g} x its best rate over those "
        "strengths and native's lower bound is above the noise upper bound (validation split, "
        "coherent successes)"
    )


def admissible(noise: Sequence[Rate], max_noise: float) -> list[bool]:
    """Strengths where noise stays low enough for success to mean something."""
    return [r.high <= max_noise for r in noise]


def choose_strength(
    strengths: Sequence[float],
    native: Sequence[Rate],
    noise: Sequence[Rate],
    *,
    plateau_fraction: float = 0.8,
    max_noise: float = 0.25,
) -> float | None:
    """The rule of :func:`strength_rule`; ``None`` when no strength separates native from noise."""
    if not (len(strengths) == len(native) == len(noise)) or not strengths:
        raise SteeringTransferError(
            f"strengths, native and noise must be non-empty and of one length, got "
            f"{len(strengths)}, {len(native)}, {len(noise)}"
        )
    ok = admissible(noise, max_noise)
    rates = [nat.rate for nat, keep in zip(native, ok, strict=True) if keep]
    if not rates:
        return None
    best = max(rates)
    for s, nat, noi, keep in zip(strengths, native, noise, ok, strict=True):
        if keep and nat.rate >= plateau_fraction * best and nat.low > noi.high:
            return float(s)
    return None
