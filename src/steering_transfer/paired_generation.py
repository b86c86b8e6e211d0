"""Greedy lockstep generation of a model beside a donor that shares its tokenizer.

Why: an experiment that compares a model untouched, with one block's output transformed
(``M(output)``) and with that block's output taken from another model (the donor's true
activations on the same tokens) must decode all three the same way, or a difference in the
figures may be the decoder's rather than the intervention's. This module is that one decoder:
left-padded prompts, KV caches for both models, token ids carried from step to step (never
re-tokenized), greedy choice, and the same padding, positions and end-of-sequence handling as
``model.generate`` (with no replacement it reproduces :func:`steering_transfer.generation.generate`
token for token).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from . import hooks
from .errors import SteeringTransferError
from .models import ModelHandle
from .validate import check_count, check_has_tokens, check_texts

#: ``fn(block_output) -> new_output`` of the same shape (e.g. a mapper's ``map``).
Transform = Callable[[torch.Tensor], torch.Tensor]


class StepHook(Protocol):
    """Runs before the model's forward at each step of :func:`greedy_batch`, with that step's
    inputs (the chunk's ``input_ids``: the left-padded prompts at prefill, then each row's last
    token; the full ``attention_mask``; the chunk's ``position_ids``), e.g. a donor model that
    runs beside on the same tokens, or whatever prepares the step's replacement."""

    def step(self, inputs: dict[str, torch.Tensor]) -> None: ...


def _eos_ids(handle: ModelHandle) -> list[int]:
    """The ids that end a row, as ``model.generate`` reads them (generation config first)."""
    config = getattr(handle.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = handle.tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _new_cache(handle: ModelHandle) -> Any:
    """An empty KV cache the caller holds (a donor forward that stops early returns nothing)."""
    from transformers import DynamicCache

    return DynamicCache(config=handle.model.config)


class Donor:
    """The donor's side of the lockstep: its own KV cache and the block output of each step."""

    def __init__(self, handle: ModelHandle, layer: int) -> None:
        self.handle = handle
        self.layer = layer
        self.cache: Any = None
        self.current: torch.Tensor | None = None

    def reset(self) -> None:
        self.cache = _new_cache(self.handle)
        self.current = None

    def step(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run the donor up to its block ``layer`` on this step's tokens (later blocks are
        skipped: nothing reads them) and keep that block's output."""
        device = self.handle.device
        moved = {k: v.to(device) for k, v in inputs.items()}
        with hooks.capture(self.handle, [self.layer], stop_forward=True) as cap:
            self.handle.model(**moved, cache=self.cache, use_cache=True)
        self.current = cap[self.layer]

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.current is None:  # pragma: no cover - step() always runs first
            raise SteeringTransferError("the donor has not run on this step's tokens")
        return self.current.to(device=hidden.device, dtype=hidden.dtype)


def lockstep_token_ids(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    layer: int | None = None,
    transform: Transform | None = None,
    donor: ModelHandle | None = None,
    donor_layer: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    add_special_tokens: bool = True,
    show_progress: bool = False,
) -> list[list[int]]:
    """Greedy new-token ids of ``handle`` on each prompt (rows padded after their end token,
    as ``model.generate`` pads them), under at most one replacement of block ``layer``'s output:

    * nothing (``transform`` and ``donor`` both ``None``): the model untouched;
    * ``transform``: the output is replaced by ``transform(output)`` at every position;
    * ``donor``: the output is replaced by the donor's block ``donor_layer`` output (default:
      ``layer``) on the same tokens, the donor running beside with its own KV cache.
    """
    prompts = check_texts(prompts, param="prompts")
    check_count(max_new_tokens, param="max_new_tokens")
    check_count(batch_size, param="batch_size")
    if transform is not None and donor is not None:
        raise SteeringTransferError(
            "pass transform (switch: M(output)) or donor (patch: the donor's activations), "
            "not both; each call generates one condition"
        )
    replaced = transform is not None or donor is not None
    if replaced and layer is None:
        raise SteeringTransferError("layer is None; name the block whose output is replaced")
    if not replaced and (layer is not None or donor_layer is not None):
        raise SteeringTransferError(
            "layer was given without transform or donor; pass one of them, or no layer for "
            "untouched generation"
        )
    resolved = handle.layer(layer, param="layer") if layer is not None else None
    helper: Donor | None = None
    if donor is not None:
        assert resolved is not None
        if donor.hidden_size != handle.hidden_size:
            raise SteeringTransferError(
                f"donor {donor.model_id} has hidden size {donor.hidden_size} but "
                f"{handle.model_id} has {handle.hidden_size}; patching needs equal sizes"
            )
        src_layer = donor.layer(resolved if donor_layer is None else donor_layer,
                                param="donor_layer")
        helper = Donor(donor, src_layer)

    fn: Transform | None = transform if transform is not None else (
        helper.output if helper is not None else None
    )

    def replacing() -> AbstractContextManager[object]:
        # entered around the model's own forward only: a donor that is the model itself
        # (patching a model with its own activations) must run unreplaced
        if fn is None or resolved is None:
            return nullcontext()
        return hooks.replace(handle, resolved, fn)

    out: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="lockstep", disable=not show_progress, unit="batch"):
            batch = list(prompts[start : start + batch_size])
            enc = handle.tokenize(batch, padding_side="left", add_special_tokens=add_special_tokens)
            check_has_tokens(enc["attention_mask"], param="prompts", start=start)
            if helper is not None:
                _check_same_tokens(handle, helper.handle, batch, enc, add_special_tokens)
                helper.reset()
            out.extend(greedy_batch(
                handle, enc, step_hook=helper, replacing=replacing,
                max_new_tokens=max_new_tokens, where=(start, len(batch), replaced),
            ))
    return out


def _check_same_tokens(
    handle: ModelHandle, donor: ModelHandle, batch: list[str], enc: dict[str, torch.Tensor],
    add_special_tokens: bool,
) -> None:
    """The donor must read the very ids the model reads (a shared tokenizer)."""
    theirs = donor.tokenize(batch, padding_side="left", add_special_tokens=add_special_tokens)
    same = theirs["input_ids"].shape == enc["input_ids"].shape and bool(
        (theirs["input_ids"].cpu() == enc["input_ids"].cpu()).all()
    )
    if not same:
        raise SteeringTransferError(
            f"{donor.model_id} tokenizes the prompts differently from {handle.model_id}; "
            "lockstep patching carries one sequence of token ids, so pair a fine-tuned model "
            "with the base model whose tokenizer it kept"
        )


def greedy_batch(
    handle: ModelHandle,
    enc: dict[str, torch.Tensor],
    *,
    step_hook: StepHook | None = None,
    replacing: Callable[[], AbstractContextManager[object]] = nullcontext,
    max_new_tokens: int,
    where: tuple[int, int, bool],
) -> list[list[int]]:
    """One left-padded batch (``enc`` from ``handle.tokenize(..., padding_side="left")``), step
    by step, as ``model.generate``'s greedy loop does it: new-token ids per row, padded after
    the row's end token. ``step_hook.step`` runs before each forward; ``replacing()`` is entered
    around the model's own forward only. ``where`` is ``(start, size, replaced)`` for the
    NaN/inf error. Shared by every KV-cached greedy decoder of the package (one decoder, so
    conditions differ only by their replacement)."""
    tok = handle.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = _eos_ids(handle)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    device = ids.device
    # positions from the mask, padding at 0 (transformers' _prepare_position_ids_for_generation)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    eos_t = torch.tensor(eos, device=device, dtype=torch.long)
    unfinished = torch.ones(ids.shape[0], dtype=torch.long, device=device)
    cache = _new_cache(handle)
    current, step_positions = ids, positions
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        inputs = {"input_ids": current, "attention_mask": mask, "position_ids": step_positions}
        if step_hook is not None:
            step_hook.step(inputs)
        with replacing():
            output = handle.model(**inputs, cache=cache, use_cache=True)
        cache = _cache_of(output)
        logits = output.logits[:, -1].to(dtype=torch.float32)
        if not bool((logits < math.inf).all()):  # NaN or +inf: argmax would pick padding
            _non_finite(handle, *where)
        chosen = logits.argmax(dim=-1)
        if eos:
            chosen = chosen * unfinished + pad * (1 - unfinished)
        generated.append(chosen)
        if eos:
            unfinished = unfinished & ~torch.isin(chosen, eos_t).long()
            if int(unfinished.max()) == 0:
                break
        current = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        step_positions = step_positions[:, -1:] + 1
    return torch.stack(generated, dim=1).tolist()


def _non_finite(handle: ModelHandle, start: int, size: int, replaced: bool) -> None:
    where = f"{handle.model_id} produced NaN/inf logits on prompts[{start}:{start + size}]"
    if replaced:
        raise SteeringTransferError(
            f"{where} with its block output replaced; the replacement (mapper output or donor "
            "activations) is out of range for the model: refit the mapper or check the donor"
        )
    raise SteeringTransferError(
        f"{where} without any replacement; check the model dtype (use float32) or its weights"
    )


def lockstep_generate(
    handle: ModelHandle,
    prompts: Sequence[str],
    **kwargs: Any,
) -> list[str]:
    """Greedy completions (new text only, special tokens stripped), in prompt order; the
    arguments are :func:`lockstep_token_ids`'s."""
    ids = lockstep_token_ids(handle, prompts, **kwargs)
    return list(handle.tokenizer.batch_decode(ids, skip_special_tokens=True))
