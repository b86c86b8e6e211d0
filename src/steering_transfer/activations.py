"""Extracting residual-stream activations, per model and paired across two models.

:func:`iter_block_outputs` is the one batched extraction loop of the package (tokenize a batch,
run the model with early exit after the deepest wanted block, hand back the block outputs);
token-level extraction here, steering-vector extraction (:mod:`.vectors.extraction`) and the
refusal direction's last-token activations all run it and differ only in which positions they
keep and how they reduce them.

Token activations are flattened to non-pad tokens and streamed to safetensors shards (always
float32) in a cache keyed by (model fingerprint, model dtype, layer, hash of texts, max length);
shards are written atomically
and a manifest (with each shard's token count) is written last, so a killed run never looks
complete. Shard names carry the batch size, so extractions of one entry with different batch
sizes never overwrite each other's shards, and loading checks that the shards cover every text.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from . import hooks
from .alignment import Alignment, align_by_index, align_by_offsets
from .errors import SteeringTransferError
from .io import cache_root, read_json, read_tensors, stable_hash, write_json, write_tensors
from .models import ModelHandle
from .validate import (
    check_count,
    check_finite,
    check_has_tokens,
    check_optional_count,
    check_texts,
)

MANIFEST = "manifest.json"


@dataclass
class TokenActivations:
    """One model's block-``layer`` outputs for a list of texts, one row per non-pad token."""

    acts: torch.Tensor  # (n_tokens, hidden)
    text_index: torch.Tensor  # (n_tokens,) which text the row belongs to
    token_index: torch.Tensor  # (n_tokens,) position within that text's tokens
    offsets: torch.Tensor  # (n_tokens, 2) character span of the token (0, 0 for specials)
    model_id: str
    layer: int

    @property
    def n_texts(self) -> int:
        return int(self.text_index.max()) + 1 if self.text_index.numel() else 0

    def rows_of(self, text: int) -> torch.Tensor:
        """Row indices of one text, in token order."""
        return torch.nonzero(self.text_index == text, as_tuple=True)[0]


def forward_layers(
    handle: ModelHandle,
    enc: dict[str, torch.Tensor],
    layers: Sequence[int] | Literal["all"],
) -> dict[int, torch.Tensor]:
    """Outputs of the given blocks ``{layer: (batch, seq, d)}`` (model device and dtype).

    Early exit: the forward pass stops after the deepest requested block, so later blocks and
    the LM head never run. Only ``input_ids`` and ``attention_mask`` are passed (offsets and
    other tokenizer outputs are not model inputs); no KV cache is built for a single pass.
    """
    inputs = {k: enc[k].to(handle.device) for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), hooks.capture(handle, layers, stop_forward=True) as cap:
        handle.model(**inputs, use_cache=False)
    return {layer: cap[layer] for layer in cap.layers}


def forward_layer(handle: ModelHandle, enc: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Output of block ``layer`` with early exit (later blocks and the LM head never run)."""
    return forward_layers(handle, enc, [layer])[handle.layer(layer)]


@dataclass
class BlockBatch:
    """One batch of :func:`iter_block_outputs`: which texts, their encoding, the block outputs."""

    start: int  # index of the batch's first text in the full list
    texts: list[str]
    encoding: dict[str, torch.Tensor]  # from handle.tokenize (offsets on CPU when requested)
    hidden: dict[int, torch.Tensor]  # resolved layer -> (batch, seq, d), model device and dtype


def iter_block_outputs(
    handle: ModelHandle,
    texts: Sequence[str],
    layers: int | Sequence[int] | Literal["all"],
    *,
    batch_size: int,
    max_length: int | None = None,
    padding_side: Literal["left", "right"] = "right",
    add_special_tokens: bool = True,
    return_offsets: bool = False,
    reject_empty: bool = True,
    show_progress: bool = False,
    desc: str = "extract",
    param: str = "texts",
) -> Iterator[BlockBatch]:
    """Run ``texts`` through the model in batches and yield each batch's block outputs.

    This is the single batched extraction loop: consecutive slices of ``batch_size`` texts,
    tokenized with padding on ``padding_side``, one early-exit forward per batch (see
    :func:`forward_layers`). Callers pick positions and reduce; keeping batching, padding and
    the forward call in one place is what keeps every extractor's numbers the same.
    ``reject_empty`` raises when a text yields no tokens (it has no position to read); with
    it off such a text contributes nothing, but a batch whose texts all yield no tokens (which
    the model cannot run) still raises.
    """
    check_count(batch_size, param="batch_size")
    check_optional_count(max_length, param="max_length")
    wanted: Sequence[int] | Literal["all"] = [layers] if isinstance(layers, int) else layers
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not show_progress, unit="batch"):
        chunk = list(texts[start : start + batch_size])
        enc = handle.tokenize(
            chunk,
            max_length=max_length,
            padding_side=padding_side,
            add_special_tokens=add_special_tokens,
            return_offsets=return_offsets,
        )
        if reject_empty or enc["input_ids"].shape[1] == 0:  # a 0-token batch cannot run
            check_has_tokens(enc["attention_mask"], param=param, start=start)
        yield BlockBatch(start, chunk, enc, forward_layers(handle, enc, wanted))


def _dtype_name(handle: ModelHandle) -> str:
    return str(handle.dtype).removeprefix("torch.")


def _cache_dir(handle: ModelHandle, layer: int, texts: list[str], max_length: int | None) -> Path:
    """The entry of (model, dtype, layer, texts, max_length).

    The dtype is in the key because a bfloat16 model's activations are not its float32 ones
    (and the fingerprint, computed once per handle, would not see a later ``model.to``); float32
    entries keep the name they had before the dtype was keyed, so existing caches stay valid.
    """
    key = stable_hash({"texts": texts})
    dtype = "" if handle.dtype == torch.float32 else f"-{_dtype_name(handle)}"
    name = f"{handle.fingerprint}{dtype}-L{layer}-{key}-max{max_length}"
    return cache_root() / "activations" / name


def activation_cache_dir() -> Path:
    """Where extracted activations are cached: ``<cache root>/activations``, one folder an
    entry (model fingerprint, model dtype, layer, texts, max_length)."""
    return cache_root() / "activations"


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clean_activation_cache(
    *, max_bytes: int | None = None, dry_run: bool = False
) -> tuple[list[tuple[Path, int]], int]:
    """Remove cached activation entries, least recently written first, until the cache holds
    at most ``max_bytes`` (``None``: remove every entry). Returns ``(removed, kept_bytes)``
    with each removed entry's size. The cache has no automatic bound, since an entry is
    reused across runs; this is the bound, run by ``steering-transfer cache clean``."""
    if max_bytes is not None:
        check_count(max_bytes, param="max_bytes", minimum=0)
    root = activation_cache_dir()
    entries = sorted(
        (e for e in root.iterdir() if e.is_dir()) if root.is_dir() else [],
        key=lambda e: (e.stat().st_mtime, e.name),
    )
    sizes = {e: _tree_size(e) for e in entries}
    total = sum(sizes.values())
    removed: list[tuple[Path, int]] = []
    for entry in entries:
        if max_bytes is not None and total <= max_bytes:
            break
        removed.append((entry, sizes[entry]))
        total -= sizes[entry]
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True)
    return removed, total


def _shard_name(batch_size: int, shard_no: int) -> str:
    """Shard files carry the batch size: extractions of one entry with different batch sizes
    (a refresh, or two processes at once) then never overwrite each other's shards, so every
    manifest keeps describing the files it was written with."""
    return f"shard_b{batch_size}_{shard_no:05d}.safetensors"


def _load_cached(
    directory: Path, handle: ModelHandle, layer: int, n_texts: int
) -> TokenActivations | None:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = read_json(manifest_path)
    rebuild = (
        f"delete {directory} (`steering-transfer cache clean`, or pass refresh=True) to "
        "rebuild it"
    )
    # entries written before the dtype was recorded are float32 ones (see _cache_dir)
    if manifest.get("dtype", "float32") != _dtype_name(handle):
        raise SteeringTransferError(
            f"cache entry {directory} holds activations of a {manifest.get('dtype')} model but "
            f"{handle.model_id} is loaded in {_dtype_name(handle)}; {rebuild}"
        )
    shards = manifest.get("shards", [])
    parts: dict[str, list[torch.Tensor]] = {}
    for shard in shards:
        path = directory / shard["file"]
        try:
            tensors = read_tensors(path)
        except SteeringTransferError as exc:
            raise SteeringTransferError(
                f"cache shard {path} listed in its manifest cannot be read ({exc}); {rebuild}"
            ) from exc
        if set(tensors) != {"acts", "text_index", "token_index", "offsets"} or (
            tensors["acts"].shape[0] != shard["n_tokens"]
        ):
            raise SteeringTransferError(
                f"cache shard {path} does not match its manifest; {rebuild}"
            )
        for key, value in tensors.items():
            parts.setdefault(key, []).append(value)
    if not parts:
        return None
    acts = _concatenate(parts, handle, layer)
    covered = torch.unique(acts.text_index)
    complete = (
        manifest.get("n_texts") == n_texts
        and covered.numel() == n_texts
        and int(covered[0]) == 0
        and int(covered[-1]) == n_texts - 1
    )
    if not complete:
        raise SteeringTransferError(
            f"cache entry {directory} covers {covered.numel()} of the {n_texts} texts (its "
            f"manifest lists {len(shards)} shards for n_texts={manifest.get('n_texts')!r}); "
            f"the entry is incomplete: {rebuild}"
        )
    return acts


def _concatenate(
    parts: dict[str, list[torch.Tensor]], handle: ModelHandle, layer: int
) -> TokenActivations:
    return TokenActivations(
        acts=torch.cat(parts["acts"]),
        text_index=torch.cat(parts["text_index"]),
        token_index=torch.cat(parts["token_index"]),
        offsets=torch.cat(parts["offsets"]),
        model_id=handle.model_id,
        layer=layer,
    )


def extract_activations(
    handle: ModelHandle,
    texts: Sequence[str],
    layer: int,
    *,
    batch_size: int = 8,
    max_length: int | None = 512,
    cache: bool = True,
    refresh: bool = False,
    show_progress: bool = True,
) -> TokenActivations:
    """Block-``layer`` outputs for every non-pad token of every text (float32, on CPU, whatever
    the model's dtype).

    Every text must encode to at least one token. The cache entry is keyed by model, its dtype,
    layer, texts and ``max_length``; a hit is returned whatever ``batch_size`` it was extracted
    with, and an entry whose shards do not cover every text raises (naming the entry to delete).
    """
    texts = check_texts(texts)
    resolved = handle.layer(layer)
    check_count(batch_size, param="batch_size")
    check_optional_count(max_length, param="max_length")
    directory = _cache_dir(handle, resolved, texts, max_length) if cache else None
    if directory is not None and not refresh:
        cached = _load_cached(directory, handle, resolved, len(texts))
        if cached is not None:
            return cached
    shards: list[dict[str, object]] = []
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("acts", "text_index", "token_index", "offsets")
    }
    batches = iter_block_outputs(
        handle,
        texts,
        resolved,
        batch_size=batch_size,
        max_length=max_length,
        return_offsets=True,
        show_progress=show_progress,
        desc=f"extract {handle.model_id} L{resolved}",
    )
    for shard_no, batch in enumerate(batches):
        enc = batch.encoding
        hidden = batch.hidden[resolved].to("cpu", torch.float32)
        mask = enc["attention_mask"].bool()
        rows, cols = torch.nonzero(mask, as_tuple=True)
        shard = {
            "acts": hidden[rows, cols],
            "text_index": rows + batch.start,
            "token_index": cols,
            "offsets": enc["offset_mapping"][rows, cols].long(),
        }
        check_finite(shard["acts"], param=f"activations of {handle.model_id} at layer {resolved}")
        for key, value in shard.items():
            parts[key].append(value)
        if directory is not None:
            name = _shard_name(batch_size, shard_no)
            write_tensors(directory / name, shard)
            shards.append({"file": name, "n_tokens": int(rows.numel())})
    if directory is not None:
        write_json(
            directory / MANIFEST,
            {
                "model_id": handle.model_id,
                "fingerprint": handle.fingerprint,
                "dtype": _dtype_name(handle),
                "layer": resolved,
                "n_texts": len(texts),
                "max_length": max_length,
                "batch_size": batch_size,
                "shards": shards,
            },
        )
    return _concatenate(parts, handle, resolved)


@dataclass
class PairedActivations:
    """Aligned rows of source and target activations (row i of each describe the same token)."""

    source: torch.Tensor  # (n, d_source)
    target: torch.Tensor  # (n, d_target)
    text_index: torch.Tensor  # (n,)
    source_token_index: torch.Tensor
    target_token_index: torch.Tensor
    alignment: str

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def select_texts(self, texts: torch.Tensor | Sequence[int]) -> PairedActivations:
        """Rows belonging to the given text indices (for text-level train/val splits)."""
        keep = torch.isin(self.text_index, torch.as_tensor(list(texts), dtype=torch.long))
        return PairedActivations(
            self.source[keep],
            self.target[keep],
            self.text_index[keep],
            self.source_token_index[keep],
            self.target_token_index[keep],
            self.alignment,
        )


def _segmentation_state(tokenizer: Any) -> tuple[str, str] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    parts = (backend.normalizer, backend.pre_tokenizer)
    return tuple(  # type: ignore[return-value]
        "" if part is None else part.__getstate__().decode() for part in parts
    )


def shares_tokenizer(a: ModelHandle, b: ModelHandle) -> bool:
    """Same vocabulary and the same splitting rules on both sides (hence same segmentation).

    The vocabulary alone is not enough: transformers picks a tokenizer class from the model
    type, and e.g. the Qwen2 class splits digits one by one where a Llama one does not.
    """
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        return False
    return _segmentation_state(a.tokenizer) == _segmentation_state(b.tokenizer)


def pair_activations(
    source: TokenActivations,
    target: TokenActivations,
    *,
    alignment: Alignment,
    same_tokenizer: bool,
) -> PairedActivations:
    """Align two models' token activations text by text."""
    if alignment == "auto":
        alignment = "index" if same_tokenizer else "offsets"
    if alignment not in ("index", "offsets"):
        raise SteeringTransferError(f"alignment={alignment!r}; use 'auto', 'index' or 'offsets'")
    if source.n_texts != target.n_texts:
        raise SteeringTransferError(
            f"source covers {source.n_texts} texts but target covers {target.n_texts}; "
            "extract both from the same text list"
        )
    src_rows: list[torch.Tensor] = []
    tgt_rows: list[torch.Tensor] = []
    for text in range(source.n_texts):
        s_rows, t_rows = source.rows_of(text), target.rows_of(text)
        if alignment == "index":
            s_idx, t_idx = align_by_index(len(s_rows), len(t_rows), strict=same_tokenizer)
        else:
            s_idx, t_idx = align_by_offsets(source.offsets[s_rows], target.offsets[t_rows])
        src_rows.append(s_rows[s_idx])
        tgt_rows.append(t_rows[t_idx])
    s_all, t_all = torch.cat(src_rows), torch.cat(tgt_rows)
    if s_all.numel() == 0:
        raise SteeringTransferError(
            "no token pairs were aligned; check that the texts are not empty"
        )
    return PairedActivations(
        source=source.acts[s_all],
        target=target.acts[t_all],
        text_index=source.text_index[s_all],
        source_token_index=source.token_index[s_all],
        target_token_index=target.token_index[t_all],
        alignment=alignment,
    )


def extract_paired(
    source: ModelHandle,
    source_layer: int,
    target: ModelHandle,
    target_layer: int,
    texts: Sequence[str],
    *,
    alignment: Alignment = "auto",
    batch_size: int = 8,
    max_length: int | None = 512,
    cache: bool = True,
    show_progress: bool = True,
) -> PairedActivations:
    """Paired activations to fit a mapper from ``source`` at one layer to ``target`` at another.

    ``alignment="auto"`` pairs by index when the two models share a tokenizer (raising if the
    attention masks differ) and by character offsets otherwise.
    """
    texts = check_texts(texts)
    src = extract_activations(
        source,
        texts,
        source_layer,
        batch_size=batch_size,
        max_length=max_length,
        cache=cache,
        show_progress=show_progress,
    )
    tgt = extract_activations(
        target,
        texts,
        target_layer,
        batch_size=batch_size,
        max_length=max_length,
        cache=cache,
        show_progress=show_progress,
    )
    return pair_activations(
        src, tgt, alignment=alignment, same_tokenizer=shares_tokenizer(source, target)
    )
