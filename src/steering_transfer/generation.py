"""Batched greedy generation, optionally under an intervention built per batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import SteeringTransferError
from .models import ModelHandle
from .validate import check_texts

# Receives the batch's prompts and their left-padded encoding (input_ids, attention_mask and,
# for fast tokenizers, offset_mapping) and returns the context manager to generate under, e.g.
# ``lambda prompts, enc: hooks.add(h, 3, v, 4.0, positions="all")``.
InterventionFactory = Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]]


def generate(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    intervention: InterventionFactory | None = None,
    add_special_tokens: bool = True,
    show_progress: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy completions (new text only, special tokens stripped), in prompt order.

    Prompts are left-padded so that position ``-1`` is every row's last prompt token.
    ``generate_kwargs`` go to ``model.generate`` (e.g. ``min_new_tokens``).
    """
    prompts = check_texts(prompts, param="prompts")
    if max_new_tokens < 1:
        raise SteeringTransferError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise SteeringTransferError(f"batch_size must be >= 1, got {batch_size}")
    tok = handle.tokenizer
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not show_progress, unit="batch"):
        batch = list(prompts[start : start + batch_size])
        enc = handle.tokenize(
            batch,
            padding_side="left",
            add_special_tokens=add_special_tokens,
            return_offsets=bool(getattr(tok, "is_fast", False)),
        )
        context = intervention(batch, enc) if intervention is not None else nullcontext()
        with torch.no_grad(), context:
            out = handle.model.generate(  # type: ignore[operator]
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                **generate_kwargs,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        outputs.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs
