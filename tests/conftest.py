"""Tiny random models of three architectures, built in-process (no downloads)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from steering_transfer.models import ModelHandle, wrap_model
from steering_transfer.toy import build_tokenizer, tiny_model

FAMILIES = ["llama", "qwen2", "gemma2"]


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(kind="bpe", vocab_size=400)


@pytest.fixture(scope="session")
def char_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(kind="char")


def make_handle(family: str, tokenizer: PreTrainedTokenizerFast, **kwargs: int) -> ModelHandle:
    model = tiny_model(family, vocab_size=len(tokenizer), **kwargs)
    return wrap_model(model, tokenizer, model_id=f"tiny-{family}")


@pytest.fixture(scope="session", params=FAMILIES)
def handle(request: pytest.FixtureRequest, bpe_tokenizer: PreTrainedTokenizerFast) -> ModelHandle:
    """One tiny model per architecture (hidden 64, 4 blocks)."""
    return make_handle(request.param, bpe_tokenizer, seed=1)


@pytest.fixture(scope="session")
def llama(bpe_tokenizer: PreTrainedTokenizerFast) -> ModelHandle:
    return make_handle("llama", bpe_tokenizer, seed=1)


@pytest.fixture(scope="session")
def llama_wide(bpe_tokenizer: PreTrainedTokenizerFast) -> ModelHandle:
    """Same tokenizer, different width and depth: a 'small -> large' partner for ``llama``."""
    return make_handle("llama", bpe_tokenizer, hidden_size=96, n_layers=6, seed=2)


@pytest.fixture(scope="session")
def qwen_char(char_tokenizer: PreTrainedTokenizerFast) -> ModelHandle:
    """A model with a different (character-level) tokenizer for cross-tokenizer tests."""
    return make_handle("qwen2", char_tokenizer, hidden_size=80, seed=3)
