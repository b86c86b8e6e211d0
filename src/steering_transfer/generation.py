"""Batched greedy generation, optionally under an intervention built per batch."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .errors import SteeringTransferError
from .lm_loss import MIN_SHARED_PREFIX
from .models import ModelHandle
from .validate import check_count, check_has_tokens, check_texts

# Receives the batch's prompts and their left-padded encoding (input_ids, attention_mask and,
# for fast tokenizers, offset_mapping) and returns the context manager to generate under, e.g.
# ``lambda prompts, enc: hooks.add(h, 3, v, 4.0, positions="all")``.
InterventionFactory = Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]]

# MIN_SHARED_PREFIX (lm_loss): fewest tokens worth running once for a whole batch (see
# ``frozen_chars`` of :func:`generate`); a shorter shared prefix is not split off, so such
# batches are generated exactly as without ``frozen_chars``.


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
    frozen_chars: Sequence[int] | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy completions (new text only, special tokens stripped), in prompt order.

    Prompts are left-padded so that position ``-1`` is every row's last prompt token.
    ``generate_kwargs`` go to ``model.generate`` (e.g. ``min_new_tokens``). A prompt that
    encodes to no tokens, or NaN/inf logits at any step (which greedy decoding would turn into
    padding, i.e. an empty completion), raise :class:`SteeringTransferError`.

    ``frozen_chars`` (one per prompt) promises that the intervention edits no token lying within
    the prompt's first ``frozen_chars[i]`` characters (e.g. everything before a trigger). Then
    the token prefix that every prompt of a batch shares inside those characters (a chat
    template's system prompt) is run once, without the intervention, and its KV cache is reused
    by the batch, whose rows are padded between that prefix and the rest. Why: on the real tier
    a shared system prompt is about half of every prompt, and prefilling prompts through the
    larger model is most of a cell's time.
    """
    prompts = check_texts(prompts, param="prompts")
    check_count(max_new_tokens, param="max_new_tokens")
    check_count(batch_size, param="batch_size")
    if frozen_chars is not None and len(frozen_chars) != len(prompts):
        raise SteeringTransferError(
            f"frozen_chars has {len(frozen_chars)} entries for {len(prompts)} prompts; pass "
            "one per prompt (or None)"
        )
    prefixes: dict[tuple[int, ...], Any] = {}  # shared prefix ids -> its KV cache
    window = _sliding_window(handle)
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
        cache: dict[str, Any] = {}
        if frozen_chars is not None:
            shared = _shared_prefix(enc, list(frozen_chars[start : start + len(batch)]))
            fits = window is None or enc["input_ids"].shape[1] + max_new_tokens <= window
            if shared >= MIN_SHARED_PREFIX and fits:
                enc = _pad_after_prefix(enc, shared, tok.pad_token_id)
                key = tuple(int(t) for t in enc["input_ids"][0, :shared])
                if key not in prefixes:
                    prefixes[key] = _prefix_cache(handle, enc["input_ids"][:1, :shared])
                past = copy.deepcopy(prefixes[key])
                past.batch_repeat_interleave(len(batch))
                cache["cache"] = past
        context = intervention(batch, enc) if intervention is not None else nullcontext()
        watch = NonFiniteLogitsWatch()
        with torch.no_grad(), context:
            out = handle.model.generate(  # type: ignore[operator]
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                **cache,
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


def _sliding_window(handle: ModelHandle) -> int | None:
    """The attention window of a model with sliding-window layers (None: every layer attends
    to the whole sequence). Padding inside a row moves tokens out of such a window, so a
    prefix is shared only by batches that fit in it."""
    config = getattr(handle.model, "config", None)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        sliding = any("sliding" in str(t) for t in types)
    else:
        sliding = bool(getattr(config, "use_sliding_window", True))
    return int(window) if sliding and window else None


def _shared_prefix(enc: dict[str, torch.Tensor], frozen: list[int]) -> int:
    """Tokens at the start of every (left-padded) row that are the same in all rows and lie
    within each row's frozen characters; at least one token of every row is left over."""
    offsets = enc.get("offset_mapping")
    if offsets is None:
        return 0
    ids = enc["input_ids"]
    width = ids.shape[1]
    lengths = [int(n) for n in enc["attention_mask"].sum(1)]
    rows = [ids[r, width - n :].tolist() for r, n in enumerate(lengths)]
    ends = [offsets[r, width - n :, 1].tolist() for r, n in enumerate(lengths)]
    shared = 0
    while shared < min(lengths) - 1:
        if any(row[shared] != rows[0][shared] for row in rows):
            break
        if any(end[shared] > f for end, f in zip(ends, frozen, strict=True)):
            break
        shared += 1
    return shared


def _pad_after_prefix(
    enc: dict[str, torch.Tensor], shared: int, pad_token_id: int | None
) -> dict[str, torch.Tensor]:
    """The left-padded batch re-laid as ``[shared prefix][padding][rest of the row]``: the
    last column stays every row's last prompt token, and positions come from the mask."""
    out = {k: v.clone() for k, v in enc.items()}
    width = enc["input_ids"].shape[1]
    fillers = {"input_ids": 0 if pad_token_id is None else pad_token_id,
               "attention_mask": 0, "offset_mapping": 0}
    for r, n in enumerate(int(v) for v in enc["attention_mask"].sum(1)):
        first = width - n  # the row's first token after its left padding
        for key, filler in fillers.items():
            if key in enc:
                row = enc[key][r]
                out[key][r, :shared] = row[first : first + shared]
                out[key][r, shared : shared + first] = filler
                out[key][r, shared + first :] = row[first + shared :]
    return out


def _prefix_cache(handle: ModelHandle, prefix_ids: torch.Tensor) -> Any:
    """The KV cache of one run of the shared prefix through the untouched model."""
    with torch.no_grad():
        out = handle.model(  # type: ignore[operator]
            input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True,
            logits_to_keep=1,
        )
    return out.cache


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
