"""Where built organisms live, and how a complete one is told from a partial or corrupt one.

An organism is built in a temporary folder beside its cache folder (``.<name>.<random>.tmp``),
verified, and only then swapped into place (:func:`staged_build`); inside, ``manifest.json``
lists the size and sha256 of every file and the completion marker is written last. A folder
missing the marker or a file, holding a file the manifest does not list, or with a wrong size or
hash is treated as absent and rebuilt, so a killed or half-copied build is never loaded.

Rebuilding (``zoo build --force``) never deletes a complete organism first: the old folder stays
loadable until the new one is complete. The swap renames the old folder aside
(``.<name>.previous``), renames the new one in and deletes the old one; a process killed between
the two renames leaves the old folder aside, and the next build, load or ``zoo clean`` puts it
back (:func:`recover_swap`). ``steering-transfer zoo clean`` (:func:`clean_zoo`) removes what
killed builds leave behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import cache_root, write_json
from steering_transfer.organisms.spec import (
    CODE_VERSION,
    OrganismSpec,
    default_spec_path,
    get_spec,
)

MANIFEST = "manifest.json"
RECORD = "organism.json"
COMPLETE = "COMPLETE.json"
PREVIOUS = "previous"  # suffix of an old folder renamed aside during a swap
# leftovers beside the organism folders, by kind: ``.<name>.<random>.tmp`` (a build in progress
# or killed), ``.<name>.previous`` (an old folder renamed aside by a swap) and ``.<name>.lock``
_TEMP = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")
_ASIDE = re.compile(rf"\.(?P<name>.+)\.{PREVIOUS}")
_LOCK = re.compile(r"\.(?P<name>.+)\.lock")


def zoo_dir() -> Path:
    """The cache folder holding every built organism (``$STEERING_TRANSFER_CACHE/zoo``)."""
    return cache_root() / "zoo"


def organism_dir(spec: OrganismSpec) -> Path:
    """Cache folder of a built organism (it may not exist yet)."""
    return zoo_dir() / f"{spec.id}-{spec.cache_key}"


def rebuild_command(spec: OrganismSpec, *, force: bool = True) -> str:
    """The exact CLI command that (re)builds ``spec``'s organism, with ``--spec FILE`` when the
    spec comes from a zoo file other than the default one."""
    words = ["steering-transfer", "zoo", "build", *(["--force"] if force else []), spec.id]
    if spec.spec_path is not None:
        try:
            default: Path | None = default_spec_path().resolve()
        except SteeringTransferError:
            default = None
        if spec.spec_path.resolve() != default:
            words += ["--spec", str(spec.spec_path)]
    return shlex.join(words)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` except the manifest and the marker, sorted."""
    return [
        p for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in (MANIFEST, COMPLETE)
    ]


def write_manifest(folder: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Hash every file into ``manifest.json``, then write the completion marker last."""
    files = {
        p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "size": p.stat().st_size}
        for p in _files(folder)
    }
    write_json(folder / MANIFEST, {"files": files})
    write_json(folder / COMPLETE, {
        "manifest_sha256": _sha256(folder / MANIFEST), "code_version": CODE_VERSION,
        **(dict(extra) if extra else {}),
    })


def _safe_name(name: Any) -> bool:
    """A manifest entry names a file inside the folder (no absolute path, no ``..``)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and name not in (MANIFEST, COMPLETE)


def verify_folder(
    folder: str | Path, *, check_hashes: bool = True, name: str | None = None
) -> str | None:
    """``None`` if ``folder`` is a complete organism, else what is wrong with it.

    Complete: the marker and the manifest are there and agree, the manifest lists exactly the
    files the folder holds (none missing, none extra), each with its size (and, with
    ``check_hashes``, its sha256), and the marker's id and cache key are those of the folder's
    name (``name``: the name it will have, for a folder still under its temporary name).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "folder does not exist"
    if not (folder / COMPLETE).is_file():
        return f"completion marker {COMPLETE} is missing (interrupted build)"
    if not (folder / MANIFEST).is_file():
        return f"{MANIFEST} is missing"
    try:
        marker = json.loads((folder / COMPLETE).read_text())
        manifest = json.loads((folder / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return f"unreadable manifest or marker ({exc})"
    if not isinstance(marker, dict) or not isinstance(manifest, dict):
        return f"{MANIFEST} or {COMPLETE} is not a JSON object"
    if marker.get("manifest_sha256") != _sha256(folder / MANIFEST):
        return f"{MANIFEST} does not match the completion marker"
    ident, key = marker.get("id"), marker.get("cache_key")
    if ident is not None and key is not None and (name or folder.name) != f"{ident}-{key}":
        return f"the marker names organism {ident}-{key}, not {name or folder.name}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files"
    for entry, meta in files.items():
        if not _safe_name(entry) or not isinstance(meta, dict):
            return f"{MANIFEST} has an invalid entry {entry!r}"
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    extra = sorted(present - set(files))
    if extra:
        return (
            f"{MANIFEST} lists {len(files)} file(s) but the folder also holds "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
        )
    for entry, meta in files.items():
        path = folder / entry
        if not path.is_file():
            return f"file {entry} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"file {entry} has size {path.stat().st_size}, expected {meta.get('size')}"
        if check_hashes and _sha256(path) != meta.get("sha256"):
            return f"file {entry} has a wrong sha256 (corrupt)"
    return None


# ----------------------------------------------------------------------------- locking


def _lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def build_lock(folder: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Serialise builds of one organism across processes (pytest-xdist, bench + CLI).

    Yields whether the lock is held: always ``True`` when ``blocking``; without it, ``False``
    when another process holds it (a build in progress). Lock files are kept: deleting one that
    another process is waiting on would let two processes hold "the" lock.
    """
    lock_path = _lock_path(folder)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        yield True
        return
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- build and swap


def _aside(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.{PREVIOUS}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _temp_folders(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f".{folder.name}.*.tmp"))


def recover_swap(folder: Path) -> bool:
    """Undo a swap killed between its two renames: if ``folder`` is missing and its old version
    lies complete beside it, put it back. Call with :func:`build_lock` held. Returns whether it
    restored one."""
    aside = _aside(folder)
    if folder.exists() or not aside.is_dir():
        return False
    if verify_folder(aside, check_hashes=False, name=folder.name) is not None:
        return False
    os.rename(aside, folder)
    return True


def recover_swap_if_idle(folder: Path) -> bool:
    """:func:`recover_swap` for readers: only when an old version lies aside and no build of
    the organism is running (never waits for one)."""
    if folder.exists() or not _aside(folder).is_dir():
        return False
    with build_lock(folder, blocking=False) as held:
        return held and recover_swap(folder)


def remove_stale(folder: Path, *, keep_folder: bool = False) -> None:
    """Delete leftovers of killed builds (temporary folders, an old version renamed aside) and,
    unless ``keep_folder``, the final folder (call it for an incomplete one). Call with
    :func:`build_lock` held, after :func:`recover_swap`, so no live build's temporary folder and
    no old version that should be put back is removed."""
    for tmp in _temp_folders(folder):
        _remove(tmp)
    if _aside(folder).exists() or _aside(folder).is_symlink():
        _remove(_aside(folder))
    if not keep_folder and (folder.exists() or folder.is_symlink()):
        _remove(folder)


def _swap_in(new: Path, folder: Path) -> None:
    """Put the complete folder ``new`` at ``folder``; an old ``folder`` stays in place until the
    new one is complete and is deleted only after the new one took its place."""
    aside = _aside(folder)
    if aside.exists():
        _remove(aside)
    if folder.exists() or folder.is_symlink():
        os.rename(folder, aside)
    os.rename(new, folder)
    _remove(aside)


@contextlib.contextmanager
def staged_build(folder: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``folder`` to write a build into; when the block
    ends normally the result is verified and swapped in (see :func:`_swap_in`), otherwise it is
    discarded and ``folder`` is left as it was. Call with :func:`build_lock` held."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield tmp
        problem = verify_folder(tmp, name=folder.name)
        if problem is not None:
            raise SteeringTransferError(
                f"the new build of {folder.name} did not verify ({problem}); the cache folder "
                f"{folder} was left as it was"
            )
        _swap_in(tmp, folder)
    finally:
        if tmp.exists():
            _remove(tmp)


# ----------------------------------------------------------------------------- cleaning


@dataclass
class CleanReport:
    """What :func:`clean_zoo` removed (``(path, bytes, why)``), restored and left alone."""

    removed: list[tuple[Path, int, str]] = field(default_factory=list)
    restored: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size, _ in self.removed)


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.exists() or path.is_symlink() else 0
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def clean_zoo(
    *,
    everything: bool = False,
    outdated: Mapping[str, str] | None = None,
    dry_run: bool = False,
    root: Path | None = None,
) -> CleanReport:
    """Tidy the zoo cache (default :func:`zoo_dir`): remove temporary folders of killed builds,
    old versions a killed swap left aside (or put one back where its organism folder is
    missing) and organism folders that do not verify (incomplete or corrupt; hashes checked).

    ``everything`` also removes every complete organism; ``outdated`` (id -> current cache key,
    e.g. of a zoo file) also removes complete folders of those ids under another key (older specs
    or code versions). Organisms whose build lock another process holds (a build in progress) are
    skipped; lock files are kept (see :func:`build_lock`). ``dry_run`` removes nothing and
    reports what would go.
    """
    root = zoo_dir() if root is None else root
    report = CleanReport()
    if not root.is_dir():
        return report
    names: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()):
        if _LOCK.fullmatch(path.name):
            continue
        match = _TEMP.fullmatch(path.name) or _ASIDE.fullmatch(path.name)
        if match:
            names.setdefault(match["name"], []).append(path)
        elif not path.name.startswith(".") and path.is_dir():
            names.setdefault(path.name, [])
    for name, leftovers in names.items():
        folder = root / name
        with build_lock(folder, blocking=False) as held:
            if not held:
                report.skipped.append((folder, "a build of it is in progress"))
                continue
            aside = _aside(folder)
            if aside in leftovers and not folder.exists() and verify_folder(
                aside, check_hashes=False, name=name
            ) is None:
                if not dry_run:
                    recover_swap(folder)
                report.restored.append(folder)
                leftovers = [p for p in leftovers if p != aside]
            for path in leftovers:
                kind = ("old version left by an interrupted swap" if path == aside
                        else "temporary folder of an interrupted build")
                report.removed.append((path, _tree_size(path), kind))
                if not dry_run:
                    _remove(path)
            if not folder.is_dir() or folder in report.restored:
                continue
            why = _why_remove(folder, everything=everything, outdated=outdated)
            if why is not None:
                report.removed.append((folder, _tree_size(folder), why))
                if not dry_run:
                    _remove(folder)
    return report


def _why_remove(
    folder: Path, *, everything: bool, outdated: Mapping[str, str] | None
) -> str | None:
    problem = verify_folder(folder)
    if problem is not None:
        return f"incomplete or corrupt: {problem}"
    if everything:
        return "complete organism (--all)"
    ident, _, key = folder.name.rpartition("-")
    if outdated is not None and ident in outdated and outdated[ident] != key:
        return f"outdated: {ident} now has cache key {outdated[ident]}"
    return None


# ----------------------------------------------------------------------------- build records


def organism_record(
    organism: str | OrganismSpec, spec_path: str | Path | None = None
) -> dict[str, Any] | None:
    """The stored build record (metrics, timings) of a built organism, or ``None``."""
    spec = get_spec(organism, spec_path)
    if spec.source == "hub":
        return None
    folder = organism_dir(spec)
    if verify_folder(folder, check_hashes=False) is not None:
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        record = exc
    if not isinstance(record, dict):
        raise SteeringTransferError(
            f"the build record {folder / RECORD} of organism {spec.id!r} is unreadable "
            f"({verify_folder(folder) or record}); rebuild it with `{rebuild_command(spec)}`"
        )
    return record
