"""Greedy completions of a target model whose layer is replaced (the paper's Table 1 protocol).

The target generates while block ``target_layer``'s output at every aligned position is replaced
by the mapper's image of the source's activations on the same text (``"mapped"``), by the
text's mean target activation (``"mean_ablation"``, the baseline), or left alone
(``"original"``). Every step re-encodes the text so far with both tokenizers, so the
replacement covers prompt and generated tokens alike and works across tokenizers (positions
aligned as in :func:`~steering_transfer.fidelity.replacement_fidelity`). No KV cache: each
step is a full forward (logits only at each row's last position), fine for the short completions
judges compare. Completions are re-encoded each step, so a byte-level fragment that decodes to
an invalid character can re-tokenize differently from the ids generated (random models do this;
trained ones rarely).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from . import hooks
from .activations import forward_layer, shares_tokenizer
from .alignment import Alignment
from .errors import SteeringTransferError
from .fidelity import build_replacements, replacement_positions
from .mappers.base import Mapper
from .models import ModelHandle
from .validate import check_count, check_has_tokens, check_texts

ReplacementMode = Literal["original", "mapped", "mean_ablation"]
MODES: tuple[ReplacementMode, ...] = ("original", "mapped", "mean_ablation")


def _next_tokens(
    source: ModelHandle,
    source_layer: int,
    target: ModelHandle,
    target_layer: int,
    mapper: Mapper | None,
    texts: list[str],
    mode: ReplacementMode,
    alignment: str,
    same_tokenizer: bool,
    add_special_tokens: bool,
) -> list[int]:
    """The target's greedy next token after each text, under the replacement ``mode``."""
    tgt_enc = target.tokenize(texts, add_special_tokens=add_special_tokens, return_offsets=True)
    ids, attn = tgt_enc["input_ids"], tgt_enc["attention_mask"]
    last = attn.sum(1) - 1  # right padding: each row's last real position
    # logits only where a row ends (a 262k-vocabulary head over every position dominates the
    # cost otherwise); transformers slices the sequence with a 1-D index tensor
    keep = torch.unique(last)
    run = {"attention_mask": attn, "use_cache": False, "logits_to_keep": keep.to(ids.device)}
    with torch.no_grad():
        if mode == "original":
            logits = target.model(input_ids=ids, **run).logits
        else:
            with hooks.capture(target, [target_layer], stop_forward=True) as cap:
                target.model(input_ids=ids, **run)
            true_acts = cap[target_layer]
            src_enc = source.tokenize(
                texts, add_special_tokens=add_special_tokens, return_offsets=True
            )
            src_acts = forward_layer(source, src_enc, source_layer)
            src_pos, tgt_pos = replacement_positions(src_enc, tgt_enc, alignment, same_tokenizer)
            assert mapper is not None
            rep = build_replacements(true_acts, attn, src_acts, src_pos, tgt_pos, mapper)
            new = rep.mapped if mode == "mapped" else rep.mean_ablated
            with hooks.replace(target, target_layer, new):
                logits = target.model(input_ids=ids, **run).logits
    column = torch.searchsorted(keep, last)  # where each row's last position sits in ``keep``
    rows = torch.arange(ids.shape[0], device=logits.device)
    picked = logits[rows, column.to(logits.device)]
    if not bool((picked < math.inf).all()):  # NaN or +inf: argmax would pick token 0 (padding)
        cause = (
            "check the model dtype (use float32) or its weights" if mode == "original"
            else "the replacement activations are out of range: refit the mapper (a smaller lr) "
            "or use float32"
        )
        raise SteeringTransferError(
            f"{target.model_id} produced NaN/inf logits under mode={mode!r}; {cause}"
        )
    return picked.argmax(-1).tolist()  # type: ignore[no-any-return]


def replacement_generate(
    source: ModelHandle,
    source_layer: int,
    target: ModelHandle,
    target_layer: int,
    mapper: Mapper | None,
    prompts: Sequence[str],
    *,
    mode: ReplacementMode = "mapped",
    max_new_tokens: int = 16,
    batch_size: int = 8,
    alignment: Alignment = "auto",
    add_special_tokens: bool = True,
    show_progress: bool = False,
) -> list[str]:
    """Greedy completions (new text only) of ``target`` on ``prompts`` under ``mode``.

    ``mapper`` maps source activations at ``source_layer`` to the target's ``target_layer``;
    it may be ``None`` for ``mode="original"``.
    """
    prompts = check_texts(prompts, param="prompts")
    if mode not in MODES:
        raise SteeringTransferError(f"mode={mode!r} is unknown; use one of {', '.join(MODES)}")
    check_count(max_new_tokens, param="max_new_tokens")
    check_count(batch_size, param="batch_size")
    s_layer = source.layer(source_layer, param="source_layer")
    t_layer = target.layer(target_layer, param="target_layer")
    if mode != "original":
        if mapper is None:
            raise SteeringTransferError(f"mode={mode!r} needs a mapper; pass mapper=...")
        if mapper.source_dim != source.hidden_size or mapper.target_dim != target.hidden_size:
            raise SteeringTransferError(
                f"mapper maps {mapper.source_dim} -> {mapper.target_dim} but the models have "
                f"hidden sizes {source.hidden_size} -> {target.hidden_size}"
            )
    same_tok = shares_tokenizer(source, target)
    resolved = ("index" if same_tok else "offsets") if alignment == "auto" else alignment
    tok = target.tokenizer
    eos = tok.eos_token_id
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=f"generate ({mode})", disable=not show_progress, unit="batch"):
        batch = list(prompts[start : start + batch_size])
        sides = (target,) if mode == "original" else (target, source)
        for side in sides:  # a prompt without tokens has no position to predict from
            enc = side.tokenize(batch, add_special_tokens=add_special_tokens)
            check_has_tokens(enc["attention_mask"], param="prompts", start=start)
        new_ids: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        for _ in range(max_new_tokens):
            live = [i for i, d in enumerate(done) if not d]
            if not live:
                break
            texts = [batch[i] + str(tok.decode(new_ids[i], skip_special_tokens=True)) for i in live]
            nxt = _next_tokens(
                source, s_layer, target, t_layer, mapper, texts, mode, resolved, same_tok,
                add_special_tokens,
            )
            for i, token in zip(live, nxt, strict=True):
                if token == eos:
                    done[i] = True
                else:
                    new_ids[i].append(token)
        outputs.extend(str(tok.decode(ids, skip_special_tokens=True)) for ids in new_ids)
    return outputs
