"""Fidelity under replacement on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_transfer.activations import extract_paired
from steering_transfer.errors import SteeringTransferError
from steering_transfer.fidelity import replacement_fidelity
from steering_transfer.mappers import create_mapper
from steering_transfer.models import ModelHandle

TEXTS = [f"|dev|: question {i} about the quick brown fox and the lazy dog" for i in range(12)]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))


def test_identity_mapper_has_zero_kl(llama: ModelHandle) -> None:
    mapper = create_mapper("affine", llama.hidden_size, llama.hidden_size)
    with torch.no_grad():
        mapper.linear.weight.copy_(torch.eye(llama.hidden_size))  # type: ignore[operator]
        mapper.linear.bias.zero_()  # type: ignore[operator]
    result = replacement_fidelity(llama, 1, llama, 1, mapper, TEXTS, show_progress=False)
    assert result.kl_mapped < 1e-6
    assert abs(result.loss_delta_mapped) < 1e-4
    assert result.kl_mean_ablation > 1e-3
    assert result.fvu < 1e-10 and result.cosine > 0.9999


def test_fitted_mapper_beats_mean_ablation(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    paired = extract_paired(llama, 2, llama_wide, 2, TEXTS, show_progress=False)
    mapper = create_mapper("affine", llama.hidden_size, llama_wide.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    result = replacement_fidelity(llama, 2, llama_wide, 2, mapper, TEXTS, show_progress=False)
    assert result.n_tokens == len(paired)
    assert result.kl_mapped < result.kl_mean_ablation
    assert set(result.to_dict()) >= {"kl_mapped", "kl_mean_ablation", "loss_delta_mapped", "fvu"}


def test_cross_tokenizer_replaces_only_aligned_positions(
    llama: ModelHandle, qwen_char: ModelHandle
) -> None:
    paired = extract_paired(llama, 1, qwen_char, 1, TEXTS, show_progress=False)
    mapper = create_mapper("affine", llama.hidden_size, qwen_char.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    result = replacement_fidelity(llama, 1, qwen_char, 1, mapper, TEXTS, show_progress=False)
    assert result.n_tokens == len(paired)
    assert torch.isfinite(torch.tensor(result.kl_mapped))


def test_mapper_of_wrong_pair_raises(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    mapper = create_mapper("affine", llama_wide.hidden_size, llama.hidden_size)
    with pytest.raises(SteeringTransferError, match="fit a mapper for this pair"):
        replacement_fidelity(llama, 1, llama_wide, 1, mapper, TEXTS, show_progress=False)
