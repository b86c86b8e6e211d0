"""The README's runnable API tour must keep working (docs that match the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_api_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))
    tour = next(b for b in _python_blocks() if "tiny_model" in b)
    exec(compile(tour.replace("/tmp/control.gguf", str(tmp_path / "c.gguf")), "README", "exec"), {})


def test_new_mapper_example_registers() -> None:
    from steering_transfer.mappers import base

    example = next(b for b in _python_blocks() if "register_mapper(" in b)
    try:
        exec(compile(example, "README", "exec"), {})
        assert "mean-shift" in base.available_mappers()
    finally:
        base._REGISTRY.pop("mean-shift", None)
