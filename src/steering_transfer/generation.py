"""Batched greedy generation, optionally under an intervention built per batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .errors import SteeringTransferError
from .models import ModelHandle
from .validate import check_count, check_has_tokens, check_texts

# Receives the batch's prompts and their left-padded encoding (input_ids, attention_mask and,
# for fast tokenizers, offset_mapping) and returns the context manager to generate under, e.g.
# ``lambda prompts, enc: hooks.add(h, 3, v, 4.0, positions="all")``.
InterventionFactory = Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]]


class NonFiniteLogitsWatch(LogitsProcessor):
    """Records whether any step's scores held NaN or +inf; returns the scores untouched.

    NaN logits (a NaN/overflowing steering strength, a float16 overflow) make greedy decoding
    pick token 0, usually padding, so the completion silently comes out empty. ``-inf`` is
    allowed: other processors use it to mask tokens. The flag stays on the device (no sync per
    step); :meth:`seen` reads it once after ``generate``.
    """

    def __init__(self) -> None:
        self.bad: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bad = ~(scores < math.inf).all()  # NaN and +inf compare False
        self.bad = bad if self.bad is None else self.bad | bad
        return scores

    def seen(self) -> bool:
        return self.bad is not None and bool(self.bad)


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
    ``generate_kwargs`` go to ``model.generate`` (e.g. ``min_new_tokens``). A prompt that
    encodes to no tokens, or NaN/inf logits at any step (which greedy decoding would turn into
    padding, i.e. an empty completion), raise :class:`SteeringTransferError`.
    """
    prompts = check_texts(prompts, param="prompts")
    check_count(max_new_tokens, param="max_new_tokens")
    check_count(batch_size, param="batch_size")
    user_processors = generate_kwargs.pop("logits_processor", None) or []
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
        check_has_tokens(enc["attention_mask"], param="prompts", start=start)
        context = intervention(batch, enc) if intervention is not None else nullcontext()
        watch = NonFiniteLogitsWatch()
        with torch.no_grad(), context:
            out = handle.model.generate(  # type: ignore[operator]
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList([*user_processors, watch]),
                **generate_kwargs,
            )
        if watch.seen():
            _non_finite_error(handle, start, len(batch), intervention is not None)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        outputs.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def _non_finite_error(handle: ModelHandle, start: int, size: int, intervened: bool) -> None:
    where = f"{handle.model_id} produced NaN/inf logits on prompts[{start}:{start + size}]"
    if intervened:
        raise SteeringTransferError(
            f"{where} under the intervention; its strength (alpha) or vector is too large for "
            f"the model ({handle.dtype}): lower alpha or check the vector's norm"
        )
    raise SteeringTransferError(
        f"{where} without any intervention; check the model dtype (use float32) or its weights"
    )
