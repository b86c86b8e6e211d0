"""Artifact writing (io): atomic files and folders, cleanup of killed writers' temporary
siblings, ordinary file modes under the umask, and byte-reproducible safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from steering_transfer import io
from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import (
    atomic_directory,
    atomic_path,
    interrupted_swaps,
    read_json,
    read_tensors,
    remove_stale_temps,
    write_json,
    write_tensors,
    write_text,
)


def _siblings(path: Path) -> list[str]:
    """Hidden names next to ``path`` that start like its temporary siblings."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def _dead_pid() -> int:
    """The PID of a process that has exited (a killed writer's)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          check=True, capture_output=True, text=True)
    return int(proc.stdout)


def _temp_name(target: str, pid: int, host: str | None = None, kind: str = "tmp") -> str:
    return f".{target}.{host or io._host_tag()}-{pid}-deadbeef.{kind}"


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# ------------------------------------------------------------------------------ atomic files


def test_atomic_path_replaces_on_success_and_keeps_old_on_error(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("writer failed")
    assert read_json(target) == {"v": 1}
    assert _siblings(target) == []
    write_json(target, {"v": 2})
    assert read_json(target) == {"v": 2} and _siblings(target) == []


def test_killed_write_keeps_old_file_and_next_write_removes_its_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    write_text(target, "old\n")
    script = (
        "import os, sys\n"
        "from steering_transfer.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half of the new')\n"
        "    os._exit(9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert proc.returncode == 9
    assert target.read_text() == "old\n"
    assert len(_siblings(target)) == 1  # the killed writer's temp file
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert _siblings(target) == []


def test_stale_temps_are_removed_and_live_or_foreign_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "a"
    dead, live = _dead_pid(), os.getppid()
    names = {
        "dead writer here": _temp_name("a", dead),
        "dead writer, aside folder": _temp_name("a", dead, kind="old"),
        "live writer": _temp_name("a", live),
        "this process": _temp_name("a", os.getpid()),
        "other host, young": _temp_name("a", dead, host="0badf00d"),
        "other host, old": _temp_name("a", 1, host="0badf00d"),
        "legacy mkstemp, old": ".a.k2j4_x9q.tmp",
        "legacy mkstemp, young": ".a.abcdefgh.tmp",
        "another target (a.b)": _temp_name("a.b", dead),
        "not a temp": ".a.notes.tmp",
    }
    for label, name in names.items():
        if "folder" in label:
            (tmp_path / name).mkdir()
            (tmp_path / name / "mapper.safetensors").write_bytes(b"x")
        else:
            (tmp_path / name).write_text(label)
    for label in ("other host, old", "legacy mkstemp, old"):
        _age(tmp_path / names[label], io.STALE_TEMP_SECONDS + 60)
    removed = {p.name for p in remove_stale_temps(target)}
    stale = {"dead writer here", "dead writer, aside folder", "other host, old",
             "legacy mkstemp, old"}
    assert removed == {names[label] for label in stale}
    for label, name in names.items():
        assert (tmp_path / name).exists() == (label not in stale), label
    # Writes clean up the same way, through atomic_path and atomic_directory.
    (tmp_path / names["dead writer here"]).write_text("again")
    write_json(target, {"x": 1})
    assert not (tmp_path / names["dead writer here"]).exists()
    target.unlink()
    (tmp_path / names["dead writer here"]).mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("x")
    assert not (tmp_path / names["dead writer here"]).exists()
    assert (tmp_path / names["live writer"]).exists()


# ---------------------------------------------------------------------------------- modes


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask, restoring the previous one afterwards."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def test_files_and_folders_get_the_umask_modes(tmp_path: Path, umask: int) -> None:
    from steering_transfer.vectors import SteeringVector

    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    written = [
        write_json(tmp_path / "a.json", {"a": 1}),
        write_text(tmp_path / "b.md", "b"),
        write_tensors(tmp_path / "c.safetensors", {"w": torch.ones(2)}),  # safetensors: 0600
    ]
    vector = SteeringVector(vector=torch.ones(4), model_id="m", layer=1, method="x")
    written.append(vector.save(tmp_path / "v.safetensors"))
    written.append(vector.to_gguf(tmp_path / "v.gguf", model_hint="llama"))
    with atomic_directory(tmp_path / "folder") as tmp:
        write_json(tmp / "inner.json", {"i": 1})
    for path in [*written, tmp_path / "folder" / "inner.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path.name
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == dir_mode
    # Replacing an existing folder and file keeps giving the umask modes.
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    write_json(tmp_path / "a.json", {"a": 2})
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode


# ---------------------------------------------------------------------------- atomic folders


@pytest.fixture(params=["exchange", "rename-aside"])
def swap_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of replacing a folder: the atomic exchange and the fallback without it."""
    if request.param == "exchange":
        if io._renameat2() is None:
            pytest.skip("renameat2 is not available on this platform")
    else:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    return str(request.param)


def test_atomic_directory_replaces_a_folder_as_a_whole(tmp_path: Path, swap_mode: str) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old weights")
        (tmp / "config").write_text("old config")
        (tmp / "only-old").write_text("x")
    with atomic_directory(target) as tmp:
        assert (target / "weights").read_text() == "old weights"  # untouched while building
        (tmp / "weights").write_text("new weights")
        (tmp / "config").write_text("new config")
    assert sorted(p.name for p in target.iterdir()) == ["config", "weights"]
    assert (target / "config").read_text() == "new config"
    assert _siblings(target) == []
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("newer weights")
        raise RuntimeError("writer failed")
    assert (target / "weights").read_text() == "new weights"
    assert _siblings(target) == []


def test_atomic_directory_relative_path_and_bad_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with atomic_directory("rel") as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "rel" / "f").read_text() == "1"
    (tmp_path / "file").write_text("not a folder")
    with (
        pytest.raises(SteeringTransferError, match="exists and is not a folder"),
        atomic_directory(tmp_path / "file"),
    ):
        pass
    assert (tmp_path / "file").read_text() == "not a folder"


def test_concurrent_folder_writers_leave_one_complete_folder(
    tmp_path: Path, swap_mode: str
) -> None:
    target = tmp_path / "shared"
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(8):
                with atomic_directory(target) as tmp:
                    (tmp / "a").write_text(f"{k}-{i}")
                    (tmp / "b").write_text(f"{k}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (target / "a").read_text() == (target / "b").read_text()
    assert _siblings(target) == []


def test_interrupted_swaps_finds_only_aside_folders(tmp_path: Path) -> None:
    aside = tmp_path / _temp_name("m", 123, kind="old")
    aside.mkdir()
    (tmp_path / _temp_name("m", 123)).mkdir()
    (tmp_path / _temp_name("m2", 123, kind="old")).mkdir()
    assert interrupted_swaps(tmp_path / "m") == [aside]


# -------------------------------------------------------------------------- reproducibility

_TENSOR_SCRIPT = """
import sys, torch
from steering_transfer.io import write_tensors
gen = torch.Generator().manual_seed(0)
tensors = {f"t{i}": torch.randn(3, i + 1, generator=gen) for i in range(6)}
tensors["bf16"] = torch.ones(5, dtype=torch.bfloat16)
metadata = {f"key{i:02d}": f"value {i} é" for i in range(20)}
write_tensors(sys.argv[1], tensors, metadata=metadata)
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        path = tmp_path / f"{seed}.safetensors"
        subprocess.run([sys.executable, "-c", _TENSOR_SCRIPT, str(path)], env=env, check=True)
        digests.add(_sha256(path))
    assert len(digests) == 1, "20 metadata keys in a random order would differ between runs"
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    assert size % 8 == 0
    header = json.loads(raw[8 : 8 + size])
    assert list(header) == sorted(header)
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert header["__metadata__"]["key03"] == "value 3 é"
    assert read_tensors(path)["bf16"].dtype == torch.bfloat16


def test_canonical_header_of_another_length_is_rewritten_whole(tmp_path: Path) -> None:
    """A writer whose JSON differs in length (here: extra padding) still gets our form."""
    tensors = {"b": torch.arange(4.0), "a": torch.ones(2, 2, dtype=torch.float64)}
    write_tensors(tmp_path / "ours.safetensors", tensors, metadata={"z": "1", "y": "2"})
    raw = (tmp_path / "ours.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    padded = raw[8 : 8 + size] + b" " * 24
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(padded).to_bytes(8, "little") + padded + raw[8 + size :])
    io._canonicalize_safetensors_header(odd)
    assert odd.read_bytes() == raw
    back = read_tensors(odd)
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])
