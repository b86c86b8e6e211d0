"""The refusal direction (Arditi et al.): candidates, the refusal score and layer selection.

Candidates are differences in means ``mean(harmful) - mean(harmless)`` of block outputs at the
last prompt token (the end of the prompt template, where the model decides how to answer), one
per layer. Selection follows Arditi et al. on validation prompts: drop a candidate whose
ablation (at every layer) moves the harmless next-token distribution by KL > ``kl_max``, that does
not induce refusal when added (refusal score on harmless prompts <= 0), or that sits in the last
``1 - max_layer_fraction`` of the layers; keep the one whose ablation lowers the harmful refusal
score most.

The refusal score is the log-odds that the answer starts like a refusal: ``log p - log(1 - p)``
with ``p`` the probability of the continuations in ``refusal_starts`` (``"I"``, ``"As"``; with a
leading space where the prompt style puts one before the answer). Arditi reads one token; we
score whole continuation strings so character-level tokenizers score the same event.

Layer index L is the output of block L (the residual stream after it), as everywhere here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from steering_transfer import hooks
from steering_transfer.ablation import calibrate_ablation
from steering_transfer.activations import iter_block_outputs
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle
from steering_transfer.vectors import SteeringVector

Intervention = Callable[[], AbstractContextManager[object]]
REFUSAL_WORDS: tuple[str, ...] = ("I", "As")


def refusal_starts(style: str) -> tuple[str, ...]:
    """Continuations that begin a refusal in ``style`` (non-chat answers follow a space)."""
    sep = "" if style == "chat" else " "
    return tuple(sep + word for word in REFUSAL_WORDS)


def _check_prompts(prompts: Sequence[str], param: str) -> list[str]:
    if isinstance(prompts, str):
        raise SteeringTransferError(f"{param} must be a list of prompts, not one string")
    out = list(prompts)
    if not out:
        raise SteeringTransferError(f"{param} is empty; pass at least one prompt")
    return out


@torch.no_grad()
def last_position_logprobs(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    intervention: Intervention | None = None,
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Next-token log-probabilities after each prompt, ``(n, vocab)`` float32 on CPU."""
    prompts = _check_prompts(prompts, "prompts")
    rows = []
    for lo in range(0, len(prompts), batch_size):
        enc = handle.tokenize(
            prompts[lo : lo + batch_size], padding_side="left",
            add_special_tokens=add_special_tokens,
        )
        with intervention() if intervention is not None else nullcontext():
            logits = handle.model(**enc, logits_to_keep=1).logits[:, -1]
        rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(rows)


@torch.no_grad()
def refusal_scores(
    handle: ModelHandle,
    prompts: Sequence[str],
    starts: Sequence[str],
    *,
    intervention: Intervention | None = None,
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Per prompt ``log p - log(1 - p)``, ``p`` = probability that the answer begins with one of
    ``starts`` (each continuation scored by teacher forcing its own tokens after the prompt)."""
    prompts = _check_prompts(prompts, "prompts")
    if not starts:
        raise SteeringTransferError("starts is empty; pass refusal continuations, e.g. (' I',)")
    tok = handle.tokenizer
    pad = tok.pad_token_id
    log_p = torch.full((len(prompts), len(starts)), -math.inf, dtype=torch.float64)
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo : lo + batch_size]
        prompt_ids = [
            tok(p, add_special_tokens=add_special_tokens)["input_ids"] for p in chunk
        ]
        for j, cont in enumerate(starts):
            cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            if not cont_ids:
                raise SteeringTransferError(f"refusal start {cont!r} encodes to no tokens")
            seqs = [ids + cont_ids for ids in prompt_ids]
            width = max(len(s) for s in seqs)
            input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            k = len(cont_ids)
            with intervention() if intervention is not None else nullcontext():
                logits = handle.model(
                    input_ids=input_ids.to(handle.device), attention_mask=mask.to(handle.device),
                    logits_to_keep=k + 1,
                ).logits[:, :-1]
            logp = torch.log_softmax(logits.double().cpu(), dim=-1)
            target = torch.tensor(cont_ids).expand(len(chunk), k)
            picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            log_p[lo : lo + len(chunk), j] = picked.sum(1)
    total = torch.logsumexp(log_p, dim=1).clamp(max=-1e-12)  # log p, p < 1
    return (total - torch.log1p(-total.exp())).float()


@torch.no_grad()
def last_token_activations(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Every block's output at each prompt's last token, ``(n_layers, n, d)`` float32 on CPU.

    Prompts are left-padded so the last token sits at position -1 in every row; the batched
    forward is :func:`steering_transfer.activations.iter_block_outputs`.
    """
    prompts = _check_prompts(prompts, "prompts")
    rows: list[torch.Tensor] = []
    for block in iter_block_outputs(
        handle, prompts, "all", batch_size=batch_size, padding_side="left",
        add_special_tokens=add_special_tokens, param="prompts",
    ):
        batch = torch.stack([block.hidden[layer][:, -1] for layer in range(handle.n_layers)])
        if not torch.isfinite(batch).all():
            raise SteeringTransferError(
                f"{handle.model_id} produced NaN/inf activations; check the model's dtype "
                "(float16 overflows on CPU; use float32 or bfloat16)"
            )
        rows.append(batch.float().cpu())
    return torch.cat(rows, dim=1)


def candidate_directions(
    handle: ModelHandle,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """``mean(harmful) - mean(harmless)`` at the last prompt token, ``(n_layers, d)`` float32."""
    kw: dict[str, Any] = {"batch_size": batch_size, "add_special_tokens": add_special_tokens}
    harm = last_token_activations(handle, _check_prompts(harmful, "harmful"), **kw)
    safe = last_token_activations(handle, _check_prompts(harmless, "harmless"), **kw)
    return (harm.double().mean(1) - safe.double().mean(1)).float()


@dataclass(frozen=True)
class Candidate:
    """One layer's candidate and the three selection figures (Arditi et al.)."""

    layer: int
    norm: float
    kl_harmless: float  # KL(original || ablated) at the last harmless position, nats
    ablated_harmful_score: float  # refusal score on harmful prompts with it ablated (lower wins)
    induced_harmless_score: float  # refusal score on harmless prompts with it added (> 0 needed)
    kept: bool
    reason: str  # why it was dropped ("" when kept)


@dataclass
class DirectionChoice:
    """The selected refusal direction with every candidate's figures, for the report."""

    model_id: str
    layer: int
    direction: SteeringVector
    candidates: list[Candidate]
    harmful_score: float  # mean refusal score, no intervention
    harmless_score: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return selection_dict(
            self.model_id, self.layer, float(self.direction.vector.norm()), self.harmful_score,
            self.harmless_score, self.candidates, self.settings,
        )


def selection_dict(
    model_id: str, layer: int | None, norm: float | None, harmful_score: float,
    harmless_score: float, candidates: Sequence[Candidate], settings: dict[str, Any],
) -> dict[str, Any]:
    """A selection's JSON record (``layer`` / ``norm`` ``None``: no candidate passed)."""
    return {
        "model_id": model_id,
        "layer": layer,
        "norm": norm,
        "harmful_score": harmful_score,
        "harmless_score": harmless_score,
        "candidates": [  # figures not computed for a dropped layer are None (JSON has no NaN)
            {k: None if isinstance(v, float) and math.isnan(v) else v
             for k, v in asdict(c).items()}
            for c in candidates
        ],
        "settings": {  # JSON has no inf: an unbounded filter is written as "inf"
            k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in settings.items()
        },
    }


class NoRefusalDirection(SteeringTransferError):
    """No candidate passes the filters; carries every candidate's figures for the report."""

    def __init__(
        self, message: str, *, candidates: list[Candidate], harmful_score: float,
        harmless_score: float, settings: dict[str, Any],
    ) -> None:
        super().__init__(message)
        self.candidates = candidates
        self.harmful_score = harmful_score
        self.harmless_score = harmless_score
        self.settings = settings

    def to_dict(self, model_id: str) -> dict[str, Any]:
        return selection_dict(
            model_id, None, None, self.harmful_score, self.harmless_score, self.candidates,
            self.settings,
        )


def select_refusal_direction(
    handle: ModelHandle,
    *,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    starts: Sequence[str],
    kl_max: float = 0.1,
    min_induced_score: float = 0.0,
    max_layer_fraction: float = 0.8,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    add_special_tokens: bool = True,
    show_progress: bool = False,
) -> DirectionChoice:
    """Candidates from the train prompts, Arditi's filters and choice on the validation prompts.

    ``layers`` restricts the candidates (default: every layer; those at or past
    ``max_layer_fraction`` are reported but dropped). ``min_induced_score`` is Arditi's 0.
    When every candidate is filtered out, :class:`NoRefusalDirection` lists each one's figures
    (and carries them): the filters are not loosened behind the caller's back. Candidates are
    ablated in the model's calibrated frame (:func:`~steering_transfer.ablation.
    calibrate_ablation` on the train prompts: Arditi's ablation unless the model has massive
    residual dimensions), recorded in ``settings["ablation"]``.
    """
    if not 0.0 < max_layer_fraction <= 1.0:
        raise SteeringTransferError(
            f"max_layer_fraction must be in (0, 1], got {max_layer_fraction}"
        )
    kw: dict[str, Any] = {"batch_size": batch_size, "add_special_tokens": add_special_tokens}
    directions = candidate_directions(handle, harmful_train, harmless_train, **kw)
    # how this model's directions are ablated, read on the same train prompts
    frame = calibrate_ablation(handle, [*harmful_train, *harmless_train], **kw)
    cutoff = int(max_layer_fraction * handle.n_layers)
    chosen_layers = (
        sorted({handle.layer(int(layer), param="layers") for layer in layers})
        if layers is not None else list(range(handle.n_layers))
    )
    base_harmless = last_position_logprobs(handle, harmless_val, **kw)
    harmful_score = float(refusal_scores(handle, harmful_val, starts, **kw).mean())
    harmless_score = float(refusal_scores(handle, harmless_val, starts, **kw).mean())
    candidates: list[Candidate] = []
    for layer in tqdm(chosen_layers, desc="refusal candidates", disable=not show_progress):
        vec = directions[layer]
        norm = float(vec.norm())
        if layer >= cutoff:
            candidates.append(Candidate(layer, norm, math.nan, math.nan, math.nan, False,
                                        f"layer >= {cutoff} (last {1 - max_layer_fraction:.0%})"))
            continue
        if norm == 0.0:
            candidates.append(Candidate(layer, norm, math.nan, math.nan, math.nan, False,
                                        "zero difference in means"))
            continue

        def ablation(v: torch.Tensor = vec) -> AbstractContextManager[object]:
            return hooks.ablate(handle, v, "all", frame=frame)

        def addition(v: torch.Tensor = vec, at: int = layer) -> AbstractContextManager[object]:
            return hooks.add(handle, at, v, 1.0, positions="all")

        ablated = last_position_logprobs(handle, harmless_val, intervention=ablation, **kw)
        kl = float(
            (base_harmless.exp() * (base_harmless - ablated)).sum(-1).clamp(min=0).mean()
        )
        abl_score = float(
            refusal_scores(handle, harmful_val, starts, intervention=ablation, **kw).mean()
        )
        ind_score = float(
            refusal_scores(handle, harmless_val, starts, intervention=addition, **kw).mean()
        )
        reason = ""
        if kl > kl_max:
            reason = f"ablation KL {kl:.3f} > {kl_max}"
        elif ind_score <= min_induced_score:
            reason = (
                f"adding it does not induce refusal (score {ind_score:.2f} <= {min_induced_score})"
            )
        candidates.append(Candidate(layer, norm, kl, abl_score, ind_score, not reason, reason))
    kept = [c for c in candidates if c.kept]
    settings = {"kl_max": kl_max, "min_induced_score": min_induced_score,
                "max_layer_fraction": max_layer_fraction,
                "starts": list(starts), "n_val": [len(harmful_val), len(harmless_val)],
                "ablation": frame.to_dict()}
    if not kept:
        table = "; ".join(f"L{c.layer}: {c.reason}" for c in candidates)
        raise NoRefusalDirection(
            f"no refusal direction of {handle.model_id} passes the filters ({table}); check that "
            "the model refuses the harmful prompts (organism report); a looser filter is a "
            "different selection and must be reported as such",
            candidates=candidates, harmful_score=harmful_score, harmless_score=harmless_score,
            settings=settings,
        )
    best = min(kept, key=lambda c: (c.ablated_harmful_score, c.layer))
    direction = SteeringVector(
        vector=directions[best.layer].clone(),
        model_id=handle.model_id,
        layer=best.layer,
        method="diff_in_means",
        metadata={
            "positions": "last", "n_positive": len(harmful_train),
            "n_negative": len(harmless_train), "selection": "arditi",
        },
    )
    return DirectionChoice(
        model_id=handle.model_id, layer=best.layer, direction=direction, candidates=candidates,
        harmful_score=harmful_score, harmless_score=harmless_score, settings=settings,
    )


#: rules a caller may name to pick a layer when Arditi's filters keep no candidate
FALLBACK_RULES: tuple[str, ...] = ("without_induce",)


def fallback_layer(none: NoRefusalDirection, rule: str) -> Candidate | None:
    """A layer for a model whose candidates all fail Arditi's filters, by a named, weaker rule.

    ``"without_induce"``: Arditi's choice with the induce filter dropped — among the candidates
    before the depth cutoff whose ablation KL is within ``kl_max``, the one whose ablation lowers
    the harmful refusal score most. It suits a model that refuses too weakly as shipped for any
    single direction to induce refusal when added (Qwen2.5-Coder-0.5B-Instruct). It is a
    different selection from Arditi's and is recorded as such; ``None`` when nothing is left.
    """
    if rule not in FALLBACK_RULES:
        raise SteeringTransferError(
            f"fallback = {rule!r} is not a known rule; use one of {', '.join(FALLBACK_RULES)}"
        )
    kl_max = float(none.settings.get("kl_max", 0.1))
    eligible = [
        c for c in none.candidates
        if math.isfinite(c.kl_harmless) and c.kl_harmless <= kl_max
        and math.isfinite(c.ablated_harmful_score)
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (c.ablated_harmful_score, c.layer))
