"""Last-token extraction reads the batch's block output directly: the same bits as the masked
float64 mean over the whole block it replaced, in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from steering_transfer.activations import iter_block_outputs
from steering_transfer.models import ModelHandle, wrap_model
from steering_transfer.toy import tiny_model
from steering_transfer.vectors import position_activations

# Different lengths on purpose: every batch of 3 is right-padded.
TEXTS = [
    "the quick brown fox",
    "Question: what is the capital of France? Answer:",
    "bake bread",
    "the lazy dog jumps over the quick brown fox again",
    "Paris",
]


def _masked_mean_last(handle: ModelHandle, layer: int, batch_size: int) -> torch.Tensor:
    """The former reduction: a one-hot mask over the last non-pad token, float64 sums."""
    rows = []
    for batch in iter_block_outputs(handle, TEXTS, layer, batch_size=batch_size):
        attention = batch.encoding["attention_mask"]
        seq = attention.shape[1]
        index = (attention * torch.arange(1, seq + 1)).argmax(dim=1)
        mask = torch.zeros_like(attention, dtype=torch.bool)
        mask[torch.arange(len(batch.texts)), index] = True
        hidden = batch.hidden[layer].double()
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        rows.append(((hidden * weights).sum(dim=1) / weights.sum(dim=1)).float())
    return torch.cat(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_last_token_rows_are_the_masked_mean_bitwise(
    bpe_tokenizer: PreTrainedTokenizerFast, family: str, dtype: torch.dtype
) -> None:
    model = tiny_model(family, vocab_size=len(bpe_tokenizer), seed=1)
    handle = wrap_model(model, bpe_tokenizer, model_id=f"tiny-{family}")
    handle.model.to(dtype)  # type: ignore[arg-type]  # (transformers types it as the model)
    assert handle.dtype == dtype
    for layer in (0, 2):
        got = position_activations(handle, TEXTS, layer, positions="last", batch_size=3)
        expected = _masked_mean_last(handle, layer, batch_size=3)
        assert got.dtype == torch.float32 and got.shape == (len(TEXTS), handle.hidden_size)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
