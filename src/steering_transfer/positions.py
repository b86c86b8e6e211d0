"""Which token positions an intervention touches.

A position spec is one of:

* ``"all"`` - every position of every forward pass (prompt and generated tokens);
* ``"last"`` - the last position of every forward pass (the prompt's last token, then each new
  token during cached generation);
* a sequence of ints - absolute positions in the prompt; negative ints count from the prompt's end;
* a boolean tensor of shape ``(seq,)`` or ``(batch, seq)`` - a mask over the prompt positions;
* :class:`FromIndex` - every absolute position ``>= start`` (prompt and generated tokens).

Absolute positions survive cached generation: a hook learns how many tokens the KV cache already
holds and offsets the current chunk accordingly.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import SteeringTransferError


@dataclass(frozen=True)
class FromIndex:
    """All positions from ``start`` on (absolute token index), including generated ones."""

    start: int


PositionSpec = Literal["all", "last"] | Sequence[int] | torch.Tensor | FromIndex


def validate_positions(positions: PositionSpec, *, param: str = "positions") -> PositionSpec:
    """Reject malformed specs early, before any hook is registered."""
    if isinstance(positions, str):
        if positions not in ("all", "last"):
            raise SteeringTransferError(
                f"{param}={positions!r} is not a position spec; use 'all', 'last', a list of ints, "
                "a boolean mask or FromIndex(k)"
            )
        return positions
    if isinstance(positions, FromIndex):
        start = positions.start
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
            raise SteeringTransferError(
                f"{param}=FromIndex({start!r}) must start at an int >= 0"
            )
        return positions
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or positions.ndim not in (1, 2):
            raise SteeringTransferError(
                f"{param} tensor must be a boolean mask of shape (seq,) or (batch, seq), got "
                f"{positions.dtype} of shape {tuple(positions.shape)}"
            )
        return positions
    try:
        items = list(positions)
    except TypeError as exc:
        raise SteeringTransferError(
            f"{param} has an unsupported type {type(positions).__name__}"
        ) from exc
    ints: list[int] = []
    for i, p in enumerate(items):
        if isinstance(p, bool):
            raise SteeringTransferError(f"{param}[{i}] is a bool; pass token indices as ints")
        try:
            ints.append(operator.index(p))  # ints, NumPy ints, integer 0-d tensors; not 2.5
        except TypeError as exc:
            raise SteeringTransferError(
                f"{param}[{i}] is {type(p).__name__} {p!r}; pass token indices as ints"
            ) from exc
    if not ints:
        raise SteeringTransferError(
            f"{param} is an empty list; pass at least one position or 'all'"
        )
    return ints


def position_mask(
    positions: PositionSpec,
    *,
    batch: int,
    seq: int,
    offset: int,
    device: torch.device,
    param: str = "positions",
) -> torch.Tensor | None:
    """Boolean mask ``(batch, seq)`` of the current chunk's positions, or None for all of them.

    ``offset`` is the absolute index of the chunk's first token (the KV-cache length before it).
    """
    if isinstance(positions, str):
        if positions == "all":
            return None
        mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        mask[:, -1] = True
        return mask
    absolute = torch.arange(offset, offset + seq, device=device)
    if isinstance(positions, FromIndex):
        return (absolute >= positions.start).unsqueeze(0).expand(batch, seq)
    if isinstance(positions, torch.Tensor):
        mask = positions.to(device)
        if mask.ndim == 1:
            mask = mask.unsqueeze(0).expand(batch, -1)
        if mask.shape[0] != batch:
            raise SteeringTransferError(
                f"{param} mask has {mask.shape[0]} rows but the batch has {batch}"
            )
        width = mask.shape[1]
        if offset == 0 and width != seq:
            raise SteeringTransferError(
                f"{param} mask covers {width} positions but the prompt has {seq} tokens; "
                "build the mask from the same tokenization"
            )
        out = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        inside = absolute < width
        if bool(inside.any()):
            out[:, inside] = mask[:, absolute[inside]]
        return out
    out = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    for p in positions:  # type: ignore[union-attr]
        index = int(p)
        if offset == 0:
            if not -seq <= index < seq:
                raise SteeringTransferError(
                    f"{param} contains {index}, beyond the prompt's {seq} tokens; "
                    f"use indices in 0..{seq - 1} (or negative from the end)"
                )
            out[:, index % seq] = True
        elif index >= 0 and offset <= index < offset + seq:
            out[:, index - offset] = True
    return out


def trigger_mask(
    texts: list[str],
    trigger: str,
    offsets: torch.Tensor,
    attention: torch.Tensor,
    *,
    start: int = 0,
    param: str = "prompts",
) -> torch.Tensor:
    """Mask ``(batch, seq)`` of tokens whose span overlaps the first occurrence of ``trigger``.

    ``offsets`` and ``attention`` come from ``ModelHandle.tokenize(..., return_offsets=True)``
    (any padding side); ``start`` and ``param`` only make error messages point at the input.
    """
    mask = torch.zeros(attention.shape, dtype=torch.bool)
    for row, text in enumerate(texts):
        begin = text.find(trigger)
        if begin < 0:
            raise SteeringTransferError(
                f"trigger {trigger!r} does not occur in {param}[{start + row}]: {text[:80]!r}"
            )
        end = begin + len(trigger)
        s, e = offsets[row, :, 0], offsets[row, :, 1]
        mask[row] = (s < end) & (e > begin) & (e > s) & attention[row].bool().cpu()
        if not bool(mask[row].any()):
            raise SteeringTransferError(
                f"trigger {trigger!r} in {param}[{start + row}] maps to no token (truncated by "
                "max_length?); raise max_length or move the trigger earlier"
            )
    return mask
