"""Calibrating directional ablation to a model's own residual stream.

Why: some models keep a few *massive* residual dimensions at every token (Gemma-3-270M: one
dimension holds > 99 % of the stream's squared norm from block 5 on, at ordinary tokens, not
only at BOS). Arditi's ablation ``x - (x . r) r`` then adds a large, nearly constant vector at
each of the model's ablation sites, and every direction, random ones included, breaks the model,
so a refusal cell cannot tell a refusal direction from noise. :func:`calibrate_ablation` reads
the model on its own prompts once and returns the :class:`~steering_transfer.hooks.AblationFrame`
that :func:`~steering_transfer.hooks.ablate` uses; a model without massive dimensions gets an
inactive frame, i.e. Arditi's ablation unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import SteeringTransferError
from .hooks import AblationFrame, ablation_sites
from .models import ModelHandle

#: a dimension is massive when its mean |x| at ordinary tokens, at some block output, exceeds
#: this multiple of that block's median per-dimension RMS. Gemma-3-270M's dims reach 50-1,000x;
#: SmolLM2, Qwen2.5-Coder and the tiny models stay below it (tests/test_ablation_frame.py).
OUTLIER_FACTOR = 200.0


def outlier_rule(factor: float) -> str:
    return (
        f"dims whose mean |x| over non-special tokens exceeds {factor:g}x the median "
        "per-dim RMS at some block output"
    )


@torch.no_grad()
def calibrate_ablation(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    add_special_tokens: bool = True,
    factor: float = OUTLIER_FACTOR,
) -> AblationFrame:
    """The ablation frame of ``handle`` read on ``prompts`` (use training prompts: the frame is
    a choice made before anything is scored). Means and statistics cover the prompts' real,
    non-special tokens; inactive (plain Arditi) when no dimension is massive."""
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise SteeringTransferError("prompts must be a non-empty list of non-empty strings")
    if not factor > 1.0:
        raise SteeringTransferError(f"factor={factor!r}; pass a number > 1 (e.g. 20)")
    sites = ablation_sites(handle)
    blocks = {id(b) for b in handle.blocks}
    special = torch.tensor(sorted(set(handle.tokenizer.all_special_ids)), dtype=torch.long)
    sums: list[torch.Tensor | None] = [None] * len(sites)
    abs_sums: dict[int, torch.Tensor] = {}
    sq_sums: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def make_hook(index: int, module: nn.Module) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = (output[0] if isinstance(output, tuple) else output).double()
            m = state["mask"].to(x.device).unsqueeze(-1)
            xm = x * m
            total = xm.sum((0, 1)).cpu()
            sums[index] = total if sums[index] is None else sums[index] + total
            if id(module) in blocks:
                a, q = xm.abs().sum((0, 1)).cpu(), (xm * x).sum((0, 1)).cpu()
                abs_sums[index] = abs_sums.get(index, 0) + a
                sq_sums[index] = sq_sums.get(index, 0) + q

        return hook

    handles = [s.register_forward_hook(make_hook(i, s)) for i, s in enumerate(sites)]
    count = 0
    try:
        for lo in range(0, len(prompts), batch_size):
            enc = handle.tokenize(
                list(prompts[lo : lo + batch_size]), padding_side="right",
                add_special_tokens=add_special_tokens,
            )
            ids = enc["input_ids"].cpu()
            mask = enc["attention_mask"].cpu().bool() & ~torch.isin(ids, special)
            state["mask"] = mask.double()
            count += int(mask.sum())
            handle.model(**enc)
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise SteeringTransferError("prompts hold no non-special token to calibrate on")
    dims: set[int] = set()
    for index, a in abs_sums.items():
        mean_abs = a / count
        rms = (sq_sums[index] / count).sqrt()
        dims.update(int(d) for d in torch.nonzero(mean_abs > factor * rms.median()).flatten())
    rule = outlier_rule(factor)
    if not dims:
        return AblationFrame(rule=rule)
    means = tuple((s / count).float() for s in sums if s is not None)
    return AblationFrame(
        outlier_dims=tuple(sorted(dims)), means=means,
        special_ids=tuple(int(i) for i in special), rule=rule,
    )
