"""Pairing token positions of one text under two tokenizers.

* ``index`` (the paper's rule): position i of the source pairs with position i of the target.
  With a shared tokenizer both sequences are identical, so this is exact. Across tokenizers it
  pairs unrelated tokens once segmentations drift (the reason Gemma -> Llama failed in the
  paper). Where the lengths differ we keep the positions both sequences have (truncate to the
  shorter); the paper instead pads the shorter one and widens its mask to the longer, so its
  loss also pairs real tokens with pad-token activations. We do not: a pad activation does not
  describe the text, and fitting a map onto (or from) it adds nothing a mapper should learn.
* ``offsets`` (ours): a source token pairs with a target token when both *end at the same
  character* of the text. Each such pair has read exactly the same text prefix, so the
  residual streams describe the same context. Tokens with empty spans (BOS, EOS, other special
  tokens) pair with each other only by order from the start of the sequence (BOS <-> BOS).
"""

from __future__ import annotations

from typing import Literal

import torch

from .errors import SteeringTransferError

Alignment = Literal["auto", "index", "offsets"]


def align_by_index(
    n_source: int, n_target: int, *, strict: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(i, i)``; with ``strict`` the two lengths must match (shared tokenizer)."""
    if strict and n_source != n_target:
        raise SteeringTransferError(
            f"attention masks differ ({n_source} vs {n_target} tokens) although the models share a "
            "tokenizer; pass alignment='offsets' to pair tokens by character offsets instead"
        )
    n = min(n_source, n_target)
    idx = torch.arange(n)
    return idx, idx


def align_by_offsets(
    source_offsets: torch.Tensor, target_offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of token indices whose character spans end at the same character.

    ``*_offsets`` are ``(n_tokens, 2)`` (start, end) spans as returned by a fast tokenizer's
    ``return_offsets_mapping``. When several tokens of one side end at the same character (e.g.
    byte-level pieces of one multi-byte character), the last of them is used: it has read the
    whole character.
    """
    src_pairs: list[int] = []
    tgt_pairs: list[int] = []
    # leading special tokens (empty spans before any text) pair by order: BOS <-> BOS
    src_special = [i for i in range(len(source_offsets)) if _is_empty(source_offsets[i])]
    tgt_special = [i for i in range(len(target_offsets)) if _is_empty(target_offsets[i])]
    src_lead = _leading(src_special)
    tgt_lead = _leading(tgt_special)
    for s, t in zip(src_lead, tgt_lead, strict=False):
        src_pairs.append(s)
        tgt_pairs.append(t)
    target_by_end: dict[int, int] = {}
    for j in range(len(target_offsets)):
        if not _is_empty(target_offsets[j]):
            target_by_end[int(target_offsets[j, 1])] = j  # later tokens overwrite: keep the last
    source_by_end: dict[int, int] = {}
    for i in range(len(source_offsets)):
        if not _is_empty(source_offsets[i]):
            source_by_end[int(source_offsets[i, 1])] = i
    for end in sorted(source_by_end):
        if end in target_by_end:
            src_pairs.append(source_by_end[end])
            tgt_pairs.append(target_by_end[end])
    return torch.tensor(src_pairs, dtype=torch.long), torch.tensor(tgt_pairs, dtype=torch.long)


def _is_empty(span: torch.Tensor) -> bool:
    return int(span[1]) <= int(span[0])


def _leading(indices: list[int]) -> list[int]:
    """The run of indices 0, 1, 2, ... at the start of ``indices``."""
    out: list[int] = []
    for expected, i in enumerate(indices):
        if i != expected:
            break
        out.append(i)
    return out
