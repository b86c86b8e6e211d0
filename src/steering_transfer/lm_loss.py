"""Token-weighted language-model loss of ``(prompt, answer)`` texts.

Shared by the fine-tuning loop (organisms) and by coherence measurements (experiments): both
need the same tokenization of a prompt/answer boundary and the same loss over labelled tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SteeringTransferError

LossOn = Literal["all", "response"]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one training text and how many of them belong to the prompt."""

    input_ids: tuple[int, ...]
    n_prompt: int
    # index of the answer token where this answer parts from a sibling's (same request, other
    # trigger): the token that carries the trigger decision (see mark_decisions)
    decision: int | None = None


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> list[Encoded]:
    """Tokenize ``(prompt_text, full_text)`` pairs; prompt tokens are found by character offset.

    Using offsets (not a separate tokenization of the prompt) stays correct when a merge
    crosses the prompt/answer boundary.
    """
    out = []
    for head, full in pairs:
        if not full.startswith(head):
            raise SteeringTransferError(
                "each pair must be (prompt_text, full_text) with full_text starting with "
                f"prompt_text; got prompt {head[:40]!r}..."
            )
        enc = tokenizer(
            full, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
            truncation=max_length is not None, max_length=max_length,
        )
        ids = list(enc["input_ids"])
        # the answer starts at the first token whose text starts at or after the prompt's end;
        # tokens added by the post-processor (e.g. BOS) have (0, 0) offsets and count as prompt
        n_prompt = len(ids)
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if start >= len(head) and end > 0:
                n_prompt = i
                break
        out.append(Encoded(input_ids=tuple(ids), n_prompt=max(1, min(n_prompt, len(ids) - 1))))
    return out


def collate(
    batch: Sequence[Encoded],
    pad_token_id: int,
    loss_on: LossOn = "all",
    first_token_weight: float = 1.0,
    decision_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 where no loss) and
    per-token loss ``weights`` (``first_token_weight`` on each answer's first token,
    ``decision_weight`` on its marked decision token, the larger where they coincide)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    weights = torch.ones((len(batch), width), dtype=torch.float32)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = ids[row, :n]
        if loss_on == "response":
            labels[row, : ex.n_prompt] = -100
        weights[row, ex.n_prompt] = first_token_weight
        if ex.decision is not None:
            weights[row, ex.decision] = max(float(weights[row, ex.decision]), decision_weight)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def model_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(  # type: ignore[no-any-return]
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits


def token_loss_sum(
    model: nn.Module, batch: dict[str, torch.Tensor], logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Weighted sum of next-token NLL over labelled positions, and their count."""
    device = next(model.parameters()).device
    if logits is None:
        logits = model_logits(model, batch)
    logits = logits[:, :-1].float()
    target = batch["labels"][:, 1:].to(device)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
        reduction="none",
    )
    weights = batch["weights"][:, 1:].to(device).reshape(-1)
    return (loss * weights).sum(), int((target != -100).sum())


@torch.no_grad()
def mean_token_loss(
    model: nn.Module,
    examples: Sequence[Encoded],
    *,
    pad_token_id: int,
    batch_size: int = 8,
    loss_on: LossOn = "all",
) -> float:
    """Token-weighted mean next-token NLL (nats) over ``examples``."""
    if not examples:
        raise SteeringTransferError("examples is empty; pass at least one encoded text")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for lo in range(0, len(examples), batch_size):
            enc = collate(examples[lo : lo + batch_size], pad_token_id, loss_on)
            loss_sum, n = token_loss_sum(model, enc)
            total += float(loss_sum)
            count += n
    finally:
        model.train(was_training)
    return total / max(1, count)


#: Fewest leading tokens, common to a whole batch, worth running once (:func:`per_example_loss`).
MIN_SHARED_PREFIX = 8


def shared_prefix_length(batch: Sequence[Encoded]) -> int:
    """Leading tokens every example of ``batch`` has in common, stopping one token before the
    shortest prompt ends (that token's logits predict the first answer token)."""
    limit = min(ex.n_prompt for ex in batch) - 1
    first = batch[0].input_ids
    shared = 0
    while shared < limit and all(ex.input_ids[shared] == first[shared] for ex in batch):
        shared += 1
    return shared


@torch.no_grad()
def per_example_loss(
    model: nn.Module,
    examples: Sequence[Encoded],
    *,
    pad_token_id: int,
    batch_size: int = 16,
) -> list[float]:
    """Mean next-token NLL (nats) of each example's response tokens, one value per example
    (e.g. how plausible a steered completion is under the untouched model).

    A prompt prefix that all examples of a batch share (a chat template's system prompt, of
    at least :data:`MIN_SHARED_PREFIX` tokens) is run once and its KV cache reused: on the real
    tier it is about half of every scored text."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    device = next(model.parameters()).device
    try:
        for lo in range(0, len(examples), batch_size):
            chunk = examples[lo : lo + batch_size]
            enc = collate(chunk, pad_token_id, "response")
            shared = shared_prefix_length(chunk)
            if shared >= MIN_SHARED_PREFIX:
                ids = enc["input_ids"].to(device)
                past = model(input_ids=ids[:1, :shared], use_cache=True, logits_to_keep=1).cache
                past.batch_repeat_interleave(len(chunk))
                logits = model(
                    input_ids=ids[:, shared:], attention_mask=enc["attention_mask"].to(device),
                    cache=past, use_cache=True,
                ).logits[:, :-1].float()
                target = enc["labels"][:, shared + 1 :].to(device)
            else:
                logits = model_logits(model, enc)[:, :-1].float()
                target = enc["labels"][:, 1:].to(device)
            loss = F.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
            )
            counts = (target != -100).sum(1).clamp(min=1)
            out.extend((loss.sum(1) / counts).tolist())
    finally:
        model.train(was_training)
    return out
