"""Artifact writing and the cache root: safetensors + JSON only, atomic and byte-reproducible.

What a reader of an artifact can rely on (README, "Conventions"):

* **Atomic.** A file (:func:`atomic_path`) or a folder (:func:`atomic_directory`) is built
  under a hidden temporary sibling ``.{name}.{host}-{pid}-{token}.tmp`` and renamed into place
  only once complete, so a killed writer never leaves a partial artifact under the real name.
  Replacing an existing folder is one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``);
  where that is unsupported it is rename-aside, rename-in, remove, and a kill between the two
  renames leaves only the aside copy ``.{name}.….old`` (:func:`interrupted_swaps` finds it).
* **Self-cleaning.** Temporary siblings of killed writers are deleted by the next write of the
  same target (:func:`remove_stale_temps`); nothing ever reads them.
* **Ordinary modes.** Files get ``0o666 & ~umask`` and folders ``0o777 & ~umask``, as
  ``open``/``mkdir`` would give (``tempfile`` would give 0600/0700).
* **Byte-reproducible.** JSON is written with sorted keys, and safetensors headers (whose
  ``__metadata__`` the Rust writer emits in a per-process random order) are rewritten in a
  canonical form, so the same inputs give the same bytes in every process.

Atomicity is against a killed process, not a power cut: nothing is fsynced.

Free of heavy imports at module level: the pytest plugin writes reports through it, and torch
(with safetensors) is imported only by the tensor functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SteeringTransferError

if TYPE_CHECKING:  # torch and safetensors load only when tensors are written or read
    import torch

CACHE_ENV = "STEERING_TRANSFER_CACHE"

#: A temporary sibling older than this (seconds) is stale even if its writer cannot be checked
#: (another host sharing the folder, or a name from an earlier version without a PID).
STALE_TEMP_SECONDS = 24 * 3600

# After ".{name}.": host tag, writer PID, random token, and "tmp" (being built) or "old"
# (the previous folder moved aside during a swap).
_TEMP_RE = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]+\.(?P<kind>tmp|old)")
# tempfile.mkstemp/mkdtemp names written by earlier versions: ".{name}.XXXXXXXX.tmp".
_LEGACY_TEMP_RE = re.compile(r"[a-z0-9_]{8}\.tmp")
_SWAP_ATTEMPTS = 20


def cache_root() -> Path:
    """Cache directory: ``$STEERING_TRANSFER_CACHE`` or ``~/.cache/steering-transfer``."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "steering-transfer"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, stable across runs and machines."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# ---------------------------------------------------------------------- temporary siblings


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """Short hash of the host name: a PID only says something about its own host."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_sibling(path: Path, kind: str) -> Path:
    """A fresh hidden sibling name that records who writes it (host and PID)."""
    return path.parent / f".{path.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def _pid_running(pid: int) -> bool:
    """Whether ``pid`` runs on this host; ``True`` when unsure, so nothing live is deleted."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: it runs as another user
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree, ignoring one that is already gone."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _temp_siblings(path: Path) -> Iterator[tuple[os.DirEntry[str], re.Match[str] | None]]:
    """Our temporary siblings of ``path`` (and legacy ones), parsed strictly by name so the
    temps of ``a.b`` are never taken for those of ``a``."""
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        rest = entry.name[len(prefix):]
        match = _TEMP_RE.fullmatch(rest)
        if match is not None or _LEGACY_TEMP_RE.fullmatch(rest):
            yield entry, match


def remove_stale_temps(path: str | Path, *, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete temporary siblings of ``path`` left by killed writers; return what was deleted.

    A sibling is stale when its writer ran on this host and its PID no longer runs, or when it
    is older than ``max_age`` seconds (writers on other hosts sharing the folder, names without
    a PID from earlier versions, a dead writer's PID reused). A running writer's sibling younger
    than ``max_age`` is never touched. Called before every write, so leftovers of a killed write
    disappear with the next write of the same target.
    """
    path = Path(path)
    removed: list[Path] = []
    now = time.time()
    for entry, match in _temp_siblings(path):
        stale = (
            match is not None
            and match["host"] == _host_tag()
            and not _pid_running(int(match["pid"]))
        )
        if not stale:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age
            except FileNotFoundError:  # removed meanwhile by another cleaner
                continue
        if stale:
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def interrupted_swaps(path: str | Path) -> list[Path]:
    """Aside copies ``.{name}.….old`` of a folder whose swap was interrupted, newest first.

    Only where the atomic exchange is unsupported: a writer killed between moving the old folder
    aside and moving the new one in leaves no folder at ``path``, only this complete old copy.
    Loaders use it to say what happened and how to recover (rename it back, or write again).
    """
    asides = [
        Path(entry.path)
        for entry, match in _temp_siblings(Path(path))
        if match is not None and match["kind"] == "old"
    ]
    return sorted(asides, key=lambda p: p.lstat().st_mtime if p.exists() else 0, reverse=True)


# ------------------------------------------------------------------------------ atomic files


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success.

    A killed writer leaves at most a stale sibling (removed by the next write), never a partial
    ``path``. The sibling is created with mode 0o666 under the umask, as ``open`` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_sibling(path, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # what the umask made of 0o666
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that re-created the file
            os.chmod(tmp, mode)  # (safetensors does, with 0600)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically, keys sorted so equal data gives equal bytes."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (reports, leaderboards)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(
            f"path {str(path)!r} does not exist; check the directory you passed"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SteeringTransferError(
            f"{path} is not valid JSON ({exc}); delete it and re-create it"
        ) from exc
    if not isinstance(data, dict):
        raise SteeringTransferError(f"{path} must hold a JSON object")
    return data


def write_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors to safetensors atomically (contiguous CPU copies), byte-reproducibly.

    The header is rewritten in canonical form (:func:`_canonicalize_safetensors_header`):
    safetensors' own writer orders ``__metadata__`` differently in every process.
    """
    from safetensors.torch import save_file

    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    meta = dict(sorted(metadata.items())) if metadata else None
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)
        _canonicalize_safetensors_header(tmp)
    return path


def _canonicalize_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header as compact JSON with sorted keys, space-padded to 8 bytes.

    The tensor data and every offset stay as they are (offsets count from the end of the
    header), so only the key order of the header changes; the bytes then depend only on the
    tensors and the metadata.
    """
    with path.open("r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        canonical = blob.encode() + b" " * (-len(blob.encode()) % 8)
        if len(canonical) == size:  # the usual case: same JSON, other key order
            fh.seek(8)
            fh.write(canonical)
            return
        data = fh.read()
        fh.seek(0)
        fh.write(len(canonical).to_bytes(8, "little") + canonical + data)
        fh.truncate()


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning corruption into a clear error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(
            f"path {str(path)!r} does not exist; check the directory you passed"
        )
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for corrupt headers
        raise SteeringTransferError(
            f"{path} is not a readable safetensors file ({exc}); delete it so it is rebuilt"
        ) from exc


# ---------------------------------------------------------------------------- atomic folders


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary sibling and swap it into place only on success.

    Several files that belong together (weights + config, a model + its record) then change
    as one: readers see the complete old folder or the complete new one, never a mix. An
    existing folder is replaced as a whole (anything else in it is gone afterwards). The
    swap is an atomic exchange where the OS offers one; otherwise see :func:`interrupted_swaps`.
    The new folder gets mode 0o777 under the umask, as ``mkdir`` would.
    """
    path = Path(os.path.abspath(path))
    if not path.name:
        raise SteeringTransferError(f"path {str(path)!r} has no folder name; pass a sub-folder")
    try:  # one stat: a concurrent writer may move the folder aside between two checks
        is_folder = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        is_folder = True  # nothing there yet
    if not is_folder:
        raise SteeringTransferError(
            f"path {str(path)!r} exists and is not a folder; remove it or pass another path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_sibling(path, "tmp")
    tmp.mkdir(mode=0o777)
    try:
        yield tmp
        _swap_into_place(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _swap_into_place(new: Path, path: Path) -> None:
    """Move the finished folder ``new`` onto ``path``, replacing a previous folder there.

    Retries when concurrent writers of the same folder interleave; the last one wins.
    """
    for _ in range(_SWAP_ATTEMPTS):
        if not os.path.lexists(path):
            try:
                os.rename(new, path)  # onto nothing (or an empty folder): atomic
                return
            except OSError as exc:  # another writer put its folder there meanwhile
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
        if _exchange(new, path):
            _remove(new)  # it now holds the previous version
            return
        aside = _temp_sibling(path, "old")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another writer moved it meanwhile
            continue
        try:
            os.rename(new, path)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                with contextlib.suppress(OSError):
                    os.rename(aside, path)
                raise
            _remove(aside)  # another writer's folder got in first: swap with that one
            continue
        _remove(aside)
        return
    raise SteeringTransferError(
        f"could not move the new folder into {path}: other processes kept replacing it; retry"
    )


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; ``False`` where the OS cannot (then the
    caller falls back to rename-aside)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    # Unsupported by the kernel or file system, or ``b`` vanished (a concurrent writer).
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err), str(b))
