"""Greedy completions of a target model whose layer is replaced (the paper's Table 1 protocol).

The target generates while block ``target_layer``'s output is replaced at every position, prompt
and generated alike:

* ``"original"``: nothing replaced; the completions are
  :func:`~steering_transfer.generation.generate`'s token for token.
* ``"mapped"``: the mapper's image of the source's block ``source_layer`` output at the aligned
  source position, aligned as :func:`~steering_transfer.fidelity.replacement_positions` pairs
  positions; a position with no aligned source token keeps the target's true output (the rule
  of :func:`~steering_transfer.fidelity.build_replacements`).
* ``"mean_ablation"`` (the baseline): the mean of the target's true block output over the
  prompt's real, non-special positions (no padding, no BOS / chat-template / other special
  tokens: a BOS attention sink would dominate the mean), computed at prefill and put at every
  real prompt position and every generated position. It needs no source and no mapper.

Why one decoder: the judges compare the three conditions with each other, so all three are
decoded by the same KV-cached greedy loop
(:func:`~steering_transfer.paired_generation.greedy_batch`: left-padded prompts, token ids
carried from step to step and never re-tokenized, the padding, position and end-of-sequence
handling of ``model.generate``); a difference between them is then the replacement's, not the
decoder's.

The source side. With a shared tokenizer and ``"index"`` alignment the source runs in lockstep
on the very same ids with its own KV cache. Otherwise (different tokenizers, or ``"offsets"``)
the source, the cheap side, re-encodes at each step the text so far (prompt plus the decoded
completion) with its own tokenizer and no cache, and the target's newest position is aligned
with it by character offsets (or by index, truncating, when ``alignment="index"`` is forced
across tokenizers); the generated token's span is where its decoding extends the text. Past
positions keep the replacement they got when they were computed (they sit in the KV cache): a
later re-tokenization of the source text does not revisit them.

Each model reads the text with its own ``add_special_tokens`` flag (a chat-templated prompt
already holds its special tokens; a plain one gets BOS from the tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from tqdm.auto import tqdm

from . import hooks
from .activations import forward_layer, shares_tokenizer
from .alignment import Alignment
from .errors import SteeringTransferError
from .fidelity import replacement_positions
from .mappers.base import Mapper
from .models import ModelHandle
from .paired_generation import Donor, greedy_batch
from .validate import check_count, check_has_tokens, check_texts

ReplacementMode = Literal["original", "mapped", "mean_ablation"]
MODES: tuple[ReplacementMode, ...] = ("original", "mapped", "mean_ablation")
ALIGNMENTS: tuple[str, ...] = ("auto", "index", "offsets")


def _map(mapper: Mapper, acts: torch.Tensor) -> torch.Tensor:
    """``mapper`` over ``(..., d_source)`` activations, read in float32 whatever the models'
    dtype (as :func:`~steering_transfer.fidelity.build_replacements` reads them)."""
    flat = acts.reshape(-1, acts.shape[-1]).float()
    return mapper.map(flat).reshape(*acts.shape[:-1], -1)


class _Replacement:
    """Block ``target_layer``'s output in the step being run: ``values`` at ``mask``, the true
    output elsewhere. ``step`` (before the target's forward) sets both; the instance is the
    function :func:`hooks.replace` calls on the block output."""

    def __init__(self) -> None:
        self.values: torch.Tensor | None = None  # (batch, chunk, d_target)
        self.mask: torch.Tensor | None = None  # (batch, chunk) bool

    def step(self, inputs: dict[str, torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.values is None or self.mask is None:  # pragma: no cover - step() runs first
            raise SteeringTransferError("the replacement was not prepared for this step")
        values = self.values.to(device=hidden.device, dtype=hidden.dtype)
        return torch.where(self.mask.to(hidden.device).unsqueeze(-1), values, hidden)


class _LockstepMapped(_Replacement):
    """Same ids on both sides: the source runs beside with its own KV cache (a
    :class:`~steering_transfer.paired_generation.Donor`) and every real position of the chunk
    gets the mapped source activation at the same index (padding keeps its true output)."""

    def __init__(self, source: ModelHandle, layer: int, mapper: Mapper) -> None:
        super().__init__()
        self.donor = Donor(source, layer)
        self.mapper = mapper

    def reset(self) -> None:
        self.donor.reset()

    def step(self, inputs: dict[str, torch.Tensor]) -> None:
        self.donor.step(inputs)
        assert self.donor.current is not None
        chunk = inputs["input_ids"].shape[1]
        self.mask = inputs["attention_mask"][:, -chunk:].bool()
        self.values = _map(self.mapper, self.donor.current)


class _ReencodedMapped(_Replacement):
    """Different tokenizers (or ``"offsets"``): at prefill the source encodes the prompts, at
    each later step the text so far, without cache; the chunk's target positions get the mapped
    activation of their aligned source position, or keep their true output."""

    def __init__(
        self,
        source: ModelHandle,
        layer: int,
        mapper: Mapper,
        target: ModelHandle,
        *,
        alignment: str,
        same_tokenizer: bool,
        add_special_tokens: bool,
    ) -> None:
        super().__init__()
        self.source, self.layer, self.mapper, self.target = source, layer, mapper, target
        self.alignment, self.same_tokenizer = alignment, same_tokenizer
        self.add_special_tokens = add_special_tokens
        self.prompts: list[str] = []
        self.texts: list[str] = []  # per row: the prompt and the completion's decoding so far
        self.spans: list[list[tuple[int, int]]] = []  # per row: the target's real tokens' spans
        self.generated: list[list[int]] = []
        self.prefilled = False

    def reset(self, prompts: list[str], enc: dict[str, torch.Tensor]) -> None:
        """A new batch: ``enc`` is the target's left-padded encoding of ``prompts``."""
        self.prompts = list(prompts)
        self.texts = list(prompts)
        mask = enc["attention_mask"].cpu().bool()
        offsets = enc.get("offset_mapping")
        self.spans = []
        for row in range(mask.shape[0]):
            n = int(mask[row].sum())
            if offsets is None:  # index alignment reads lengths only
                self.spans.append([(0, 0)] * n)
            else:
                real = offsets[row, mask.shape[1] - n :].tolist()
                self.spans.append([(int(a), int(b)) for a, b in real])
        self.generated = [[] for _ in prompts]
        self.prefilled = False

    def _source_side(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        enc = self.source.tokenize(
            self.texts, add_special_tokens=self.add_special_tokens,
            return_offsets=self.alignment == "offsets",
        )
        return enc, forward_layer(self.source, enc, self.layer)

    def _target_view(self) -> dict[str, torch.Tensor]:
        """The target's tokens so far as a right-padded encoding (what
        :func:`replacement_positions` reads): real positions first, their character spans."""
        longest = max(len(s) for s in self.spans)
        mask = torch.zeros(len(self.spans), longest, dtype=torch.long)
        offsets = torch.zeros(len(self.spans), longest, 2, dtype=torch.long)
        for row, spans in enumerate(self.spans):
            mask[row, : len(spans)] = 1
            offsets[row, : len(spans)] = torch.tensor(spans, dtype=torch.long).reshape(-1, 2)
        return {"input_ids": mask, "attention_mask": mask, "offset_mapping": offsets}

    def step(self, inputs: dict[str, torch.Tensor]) -> None:
        ids = inputs["input_ids"]
        batch, chunk = ids.shape
        if self.prefilled:  # one new token per row: the text grows by its decoding
            tok = self.target.tokenizer
            for row, token in enumerate(ids[:, -1].tolist()):
                self.generated[row].append(int(token))
                old = self.texts[row]
                new = self.prompts[row] + str(
                    tok.decode(self.generated[row], skip_special_tokens=True)
                )
                self.texts[row] = new
                self.spans[row].append((_changed_from(old, new), len(new)))
        src_enc, src_acts = self._source_side()
        src_pos, tgt_pos = replacement_positions(
            src_enc, self._target_view(), self.alignment, self.same_tokenizer
        )
        values = torch.zeros(batch, chunk, self.mapper.target_dim)
        mask = torch.zeros(batch, chunk, dtype=torch.bool)
        for row, (s, t) in enumerate(zip(src_pos, tgt_pos, strict=True)):
            n = len(self.spans[row])
            keep = t >= n - chunk  # the chunk holds the row's last ``chunk`` positions
            s, t = s[keep], t[keep]
            if t.numel() == 0:
                continue
            rows = src_acts[row, s.to(src_acts.device)]
            at = t - (n - chunk)  # chunk columns (left padding at prefill: real ones last)
            values[row, at] = _map(self.mapper, rows).cpu().float()
            mask[row, at] = True
        self.values, self.mask = values, mask
        self.prefilled = True


def _changed_from(old: str, new: str) -> int:
    """Where ``new`` starts to differ from ``old``: the start of the span a generated token's
    decoding wrote. Usually ``new`` extends ``old``; a byte-level fragment decodes to U+FFFD
    until its character is complete, and then the completing token rewrites that character
    (its span ends where the character does, as the source's token for it does). A token that
    decodes to nothing (a special token, padding after the end) gets an empty span: no source
    token pairs with it and it keeps its true output."""
    if new.startswith(old):
        return len(old)
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            return i
    return min(len(old), len(new))


class _MeanAblation(_Replacement):
    """Every real position gets the mean of the target's true block output over the prompt's
    real, non-special positions, computed from the block output at prefill."""

    def __init__(self, special_ids: Sequence[int]) -> None:
        super().__init__()
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.mean: torch.Tensor | None = None
        self.averaged: torch.Tensor | None = None  # (batch, prompt) bool, set at prefill

    def reset(self) -> None:
        self.mean = None
        self.averaged = None

    def step(self, inputs: dict[str, torch.Tensor]) -> None:
        ids = inputs["input_ids"]
        self.mask = inputs["attention_mask"][:, -ids.shape[1] :].bool()
        if self.averaged is None:
            special = torch.isin(ids, self.special_ids.to(ids.device))
            self.averaged = self.mask & ~special

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None and self.averaged is not None
        if self.mean is None:  # prefill: the block output here is the true one
            averaged = self.averaged.to(hidden.device).unsqueeze(-1)
            # where, not a product: a padding position's output must not reach the sum at all
            total = torch.where(averaged, hidden.float(), 0.0).sum(1)
            self.mean = (total / averaged.sum(1)).to(hidden.dtype)
        self.values = self.mean.unsqueeze(1).expand(-1, hidden.shape[1], -1)
        return super().__call__(hidden)


def _check_flag(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise SteeringTransferError(f"{param} must be True or False, got {value!r}")
    return value


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
    source_add_special_tokens: bool | None = None,
    target_add_special_tokens: bool | None = None,
    show_progress: bool = False,
) -> list[str]:
    """Greedy completions (new text only, special tokens stripped) of ``target`` on
    ``prompts`` under ``mode`` (see the module docstring for each mode).

    ``mapper`` maps source activations at ``source_layer`` to the target's ``target_layer``;
    only ``mode="mapped"`` needs it. Each side tokenizes with its own flag:
    ``source_add_special_tokens`` / ``target_add_special_tokens``, each defaulting to
    ``add_special_tokens``. ``alignment="auto"`` pairs by index when both sides read the same
    ids (shared tokenizer, same flag) and by character offsets otherwise.
    """
    prompts = check_texts(prompts, param="prompts")
    if mode not in MODES:
        raise SteeringTransferError(f"mode={mode!r} is unknown; use one of {', '.join(MODES)}")
    if alignment not in ALIGNMENTS:
        raise SteeringTransferError(
            f"alignment={alignment!r} is unknown; use one of {', '.join(ALIGNMENTS)}"
        )
    check_count(max_new_tokens, param="max_new_tokens")
    check_count(batch_size, param="batch_size")
    default = _check_flag(add_special_tokens, "add_special_tokens")
    src_flag = _check_flag(
        default if source_add_special_tokens is None else source_add_special_tokens,
        "source_add_special_tokens",
    )
    tgt_flag = _check_flag(
        default if target_add_special_tokens is None else target_add_special_tokens,
        "target_add_special_tokens",
    )
    s_layer = source.layer(source_layer, param="source_layer")
    t_layer = target.layer(target_layer, param="target_layer")
    if mode == "mapped" and mapper is None:
        raise SteeringTransferError(f"mode={mode!r} needs a mapper; pass mapper=...")
    if mode != "original" and mapper is not None and (
        mapper.source_dim != source.hidden_size or mapper.target_dim != target.hidden_size
    ):
        raise SteeringTransferError(
            f"mapper maps {mapper.source_dim} -> {mapper.target_dim} but the models have "
            f"hidden sizes {source.hidden_size} -> {target.hidden_size}"
        )
    same_tok = shares_tokenizer(source, target)
    if alignment == "auto":
        resolved = "index" if same_tok and src_flag == tgt_flag else "offsets"
    else:
        resolved = alignment

    lockstep: _LockstepMapped | None = None
    reencoded: _ReencodedMapped | None = None
    ablation: _MeanAblation | None = None
    replacement: _Replacement | None = None
    if mode == "mapped":
        assert mapper is not None
        if same_tok and resolved == "index" and src_flag == tgt_flag:
            replacement = lockstep = _LockstepMapped(source, s_layer, mapper)
        else:
            replacement = reencoded = _ReencodedMapped(
                source, s_layer, mapper, target, alignment=resolved, same_tokenizer=same_tok,
                add_special_tokens=src_flag,
            )
    elif mode == "mean_ablation":
        replacement = ablation = _MeanAblation(target.tokenizer.all_special_ids)

    def replacing() -> AbstractContextManager[object]:
        # around the target's own forward only: a source that is the target itself runs untouched
        if replacement is None:
            return nullcontext()
        return hooks.replace(target, t_layer, replacement)

    tok = target.tokenizer
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    with torch.no_grad():
        for start in tqdm(
            starts, desc=f"generate ({mode})", disable=not show_progress, unit="batch"
        ):
            batch = list(prompts[start : start + batch_size])
            enc = target.tokenize(
                batch, padding_side="left", add_special_tokens=tgt_flag,
                return_offsets=reencoded is not None and resolved == "offsets",
            )
            check_has_tokens(enc["attention_mask"], param="prompts", start=start)
            if mode == "mapped":
                src_enc = source.tokenize(batch, padding_side="left", add_special_tokens=src_flag)
                check_has_tokens(src_enc["attention_mask"], param="prompts", start=start)
                if lockstep is not None:
                    _check_same_ids(source, target, src_enc, enc)
                    lockstep.reset()
            if reencoded is not None:
                reencoded.reset(batch, enc)
            if ablation is not None:
                _check_averaged(target, enc, start)
                ablation.reset()
            ids = greedy_batch(
                target, enc, step_hook=replacement, replacing=replacing,
                max_new_tokens=max_new_tokens, where=(start, len(batch), replacement is not None),
            )
            outputs.extend(str(t) for t in tok.batch_decode(ids, skip_special_tokens=True))
    return outputs


def _check_same_ids(
    source: ModelHandle, target: ModelHandle,
    src_enc: dict[str, torch.Tensor], tgt_enc: dict[str, torch.Tensor],
) -> None:
    """Lockstep carries one sequence of ids: the source must read the target's very ids."""
    a, b = src_enc["input_ids"].cpu(), tgt_enc["input_ids"].cpu()
    if a.shape != b.shape or not bool((a == b).all()):
        raise SteeringTransferError(
            f"{source.model_id} and {target.model_id} share a tokenizer but encode the prompts "
            "to different ids; pass alignment='offsets' to pair tokens by character offsets"
        )


def _check_averaged(target: ModelHandle, enc: dict[str, torch.Tensor], start: int) -> None:
    """Mean ablation averages over a prompt's non-special tokens: each prompt needs one."""
    special = torch.tensor(sorted(set(target.tokenizer.all_special_ids)), dtype=torch.long)
    ids, mask = enc["input_ids"].cpu(), enc["attention_mask"].cpu().bool()
    plain = (mask & ~torch.isin(ids, special)).sum(1)
    for row in range(ids.shape[0]):
        if int(plain[row]) == 0:
            raise SteeringTransferError(
                f"prompts[{start + row}] has only special tokens; mode='mean_ablation' averages "
                "the target's activations over a prompt's non-special tokens"
            )
