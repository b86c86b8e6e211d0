"""Fidelity under replacement: run the target with one layer replaced by mapped source activations.

This is the paper's validation (App. A, Table 1): if the mapper is good, the target's next-token
distributions barely move. The baseline replaces the same activations by their mean across the
text's tokens (mean ablation), which destroys token-specific information.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import hooks
from .activations import forward_layer, shares_tokenizer
from .alignment import Alignment, align_by_index, align_by_offsets
from .errors import SteeringTransferError
from .mappers.base import Mapper
from .metrics import cosine, fvu, mse
from .models import ModelHandle
from .validate import check_count, check_has_tokens, check_optional_count, check_texts


@dataclass
class FidelityResult:
    """Per-token averages over aligned, non-pad target positions."""

    n_texts: int
    n_tokens: int
    kl_mapped: float  # KL(original || mapped replacement), nats per token
    kl_mean_ablation: float  # KL(original || mean-ablated), nats per token
    loss_original: float  # next-token cross-entropy of the untouched target
    loss_mapped: float
    loss_mean_ablation: float
    mse: float
    cosine: float
    fvu: float

    @property
    def loss_delta_mapped(self) -> float:
        return self.loss_mapped - self.loss_original

    @property
    def loss_delta_mean_ablation(self) -> float:
        return self.loss_mean_ablation - self.loss_original

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loss_delta_mapped"] = self.loss_delta_mapped
        out["loss_delta_mean_ablation"] = self.loss_delta_mean_ablation
        return out


def replacement_positions(
    src_enc: dict[str, torch.Tensor],
    tgt_enc: dict[str, torch.Tensor],
    alignment: str,
    same_tokenizer: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per text: aligned (source positions, target positions) to replace."""
    src_pos: list[torch.Tensor] = []
    tgt_pos: list[torch.Tensor] = []
    for row in range(src_enc["input_ids"].shape[0]):
        n_s = int(src_enc["attention_mask"][row].sum())
        n_t = int(tgt_enc["attention_mask"][row].sum())
        if alignment == "index":
            s, t = align_by_index(n_s, n_t, strict=same_tokenizer)
        else:
            s, t = align_by_offsets(
                src_enc["offset_mapping"][row, :n_s], tgt_enc["offset_mapping"][row, :n_t]
            )
        src_pos.append(s)
        tgt_pos.append(t)
    return src_pos, tgt_pos


@dataclass
class Replacements:
    """A layer's activations with the aligned positions replaced two ways."""

    mapped: torch.Tensor  # mapped source activations at the aligned positions
    mean_ablated: torch.Tensor  # the text's mean target activation at the same positions
    mask: torch.Tensor  # (batch, seq) bool: replaced positions
    predicted: list[torch.Tensor]  # per row, mapped activations (float, CPU)
    true: list[torch.Tensor]  # per row, the true target activations they replace


def build_replacements(
    true_acts: torch.Tensor,
    attention_mask: torch.Tensor,
    source_acts: torch.Tensor,
    source_positions: Sequence[torch.Tensor],
    target_positions: Sequence[torch.Tensor],
    mapper: Mapper,
) -> Replacements:
    """Mapped and mean-ablated copies of ``true_acts`` (batch, seq, d) at aligned positions,
    in ``true_acts``'s dtype; ``predicted`` / ``true`` are float32."""
    mapped_full = true_acts.clone()
    mean_full = true_acts.clone()
    mask = torch.zeros(true_acts.shape[:2], dtype=torch.bool, device=true_acts.device)
    preds: list[torch.Tensor] = []
    trues: list[torch.Tensor] = []
    for row, (s, t) in enumerate(zip(source_positions, target_positions, strict=True)):
        if t.numel() == 0:
            continue
        # the mapper reads float32 whatever the models' dtype (FVU and the other activation
        # metrics then see its float32 output); the replacement goes back in the block's dtype
        rows = source_acts[row, s.to(source_acts.device)].float()
        mapped = mapper.map(rows).to(true_acts.device)
        t_dev = t.to(true_acts.device)
        mapped_full[row, t_dev] = mapped.to(true_acts.dtype)
        n_real = int(attention_mask[row].sum())
        mean_full[row, t_dev] = true_acts[row, :n_real].float().mean(0).to(true_acts.dtype)
        mask[row, t_dev] = True
        preds.append(mapped.float().cpu())
        trues.append(true_acts[row, t_dev].float().cpu())
    return Replacements(mapped_full, mean_full, mask, preds, trues)


def _kl_sum(logits_ref: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over masked positions of KL(ref || logits)."""
    logp_ref = F.log_softmax(logits_ref.float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)  # (batch, seq)
    return float((kl * mask).sum())


def _next_token_ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, attn: torch.Tensor) -> float:
    """Sum of next-token cross-entropy over positions whose next token is real."""
    next_mask = attn[:, 1:] * attn[:, :-1]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
    return float((ce * next_mask).sum())


def replacement_fidelity(
    source: ModelHandle,
    source_layer: int,
    target: ModelHandle,
    target_layer: int,
    mapper: Mapper,
    texts: Sequence[str],
    *,
    alignment: Alignment = "auto",
    batch_size: int = 8,
    max_length: int | None = 512,
    show_progress: bool = True,
) -> FidelityResult:
    """KL and LM-loss change when target block ``target_layer`` is replaced by mapped source acts.

    Only aligned positions are replaced (all non-pad positions for a shared tokenizer); KL and
    the activation metrics are averaged over those positions; the LM loss is over all next-token
    predictions of the text.
    """
    texts = check_texts(texts)
    check_count(batch_size, param="batch_size")
    check_optional_count(max_length, param="max_length")
    s_layer, t_layer = (
        source.layer(source_layer, param="source_layer"),
        target.layer(target_layer, param="target_layer"),
    )
    if mapper.source_dim != source.hidden_size or mapper.target_dim != target.hidden_size:
        raise SteeringTransferError(
            f"mapper maps {mapper.source_dim} -> {mapper.target_dim} but the models have hidden "
            f"sizes {source.hidden_size} -> {target.hidden_size}; fit a mapper for this pair"
        )
    same_tok = shares_tokenizer(source, target)
    mode = ("index" if same_tok else "offsets") if alignment == "auto" else alignment
    totals = dict.fromkeys(("kl_m", "kl_a", "l_o", "l_m", "l_a", "n_next"), 0.0)
    preds: list[torch.Tensor] = []
    trues: list[torch.Tensor] = []
    n_tokens = 0
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="fidelity", disable=not show_progress, unit="batch"):
        batch = texts[start : start + batch_size]
        src_enc = source.tokenize(batch, max_length=max_length, return_offsets=True)
        tgt_enc = target.tokenize(batch, max_length=max_length, return_offsets=True)
        for enc in (src_enc, tgt_enc):
            check_has_tokens(enc["attention_mask"], param="texts", start=start)
        src_acts = forward_layer(source, src_enc, s_layer)
        src_pos, tgt_pos = replacement_positions(src_enc, tgt_enc, mode, same_tok)
        ids = tgt_enc["input_ids"].to(target.device)
        attn = tgt_enc["attention_mask"].to(target.device)
        with torch.no_grad(), hooks.capture(target, [t_layer]) as cap:
            logits_ref = target.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        rep = build_replacements(cap[t_layer], attn, src_acts, src_pos, tgt_pos, mapper)
        mapped_full, mean_full, replace_mask = rep.mapped, rep.mean_ablated, rep.mask
        preds.extend(rep.predicted)
        trues.extend(rep.true)
        mask_f = replace_mask.float()
        attn_f = attn.float()
        with torch.no_grad(), hooks.replace(target, t_layer, mapped_full):
            logits_m = target.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        with torch.no_grad(), hooks.replace(target, t_layer, mean_full):
            logits_a = target.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        totals["kl_m"] += _kl_sum(logits_ref, logits_m, mask_f)
        totals["kl_a"] += _kl_sum(logits_ref, logits_a, mask_f)
        totals["l_o"] += _next_token_ce_sum(logits_ref, ids, attn_f)
        totals["l_m"] += _next_token_ce_sum(logits_m, ids, attn_f)
        totals["l_a"] += _next_token_ce_sum(logits_a, ids, attn_f)
        totals["n_next"] += float((attn_f[:, 1:] * attn_f[:, :-1]).sum())
        n_tokens += int(replace_mask.sum())
    if n_tokens == 0:
        raise SteeringTransferError("no target positions were aligned for replacement")
    pred, true = torch.cat(preds), torch.cat(trues)
    n_next = max(totals["n_next"], 1.0)
    return FidelityResult(
        n_texts=len(texts),
        n_tokens=n_tokens,
        kl_mapped=totals["kl_m"] / n_tokens,
        kl_mean_ablation=totals["kl_a"] / n_tokens,
        loss_original=totals["l_o"] / n_next,
        loss_mapped=totals["l_m"] / n_next,
        loss_mean_ablation=totals["l_a"] / n_next,
        mse=float(mse(pred, true)),
        cosine=float(cosine(pred, true)),
        fvu=float(fvu(pred, true)),
    )
