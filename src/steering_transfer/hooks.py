"""Context managers that read or edit decoder-block outputs (the residual stream).

Layer ``L`` always means the output of decoder block ``L``; negative indices count from the end.
Every manager creates its handle list before ``try`` and removes every handle in ``finally``,
so no hook outlives its ``with`` block, even when the body raises. Hooks are built by factory
functions (Python closes over loop variables late) and cast vectors to the activation's device
and dtype, which keeps ``device_map`` sharded models working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import SteeringTransferError
from .models import ModelHandle
from .positions import PositionSpec, position_mask, validate_positions
from .validate import check_finite, check_strength

HookFn = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], Any]


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once the deepest wanted layer is read."""


def _untuple(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _retuple(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _cache_offset(kwargs: dict[str, Any], layer: int, seq: int) -> int:
    """Tokens the KV cache held before this chunk (0 for uncached forwards)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    try:
        held = int(cache.get_seq_length(layer))
    except (TypeError, IndexError):
        held = int(cache.get_seq_length())
    # The block has already appended this chunk to its cache layer.
    return max(held - seq, 0)


def _chunk_mask(
    positions: PositionSpec, hidden: torch.Tensor, kwargs: dict[str, Any], layer: int
) -> torch.Tensor | None:
    """Positions of the current forward chunk to edit (None = all), cache offset included."""
    batch, seq = hidden.shape[0], hidden.shape[1]
    offset = _cache_offset(kwargs, layer, seq)
    return position_mask(positions, batch=batch, seq=seq, offset=offset, device=hidden.device)


def _resolve_layers(handle: ModelHandle, layers: int | Sequence[int] | Literal["all"]) -> list[int]:
    if layers == "all":
        return list(range(handle.n_layers))
    if isinstance(layers, int):
        return [handle.layer(layers, param="layers")]
    resolved = [handle.layer(int(layer), param="layers") for layer in layers]
    if not resolved:
        raise SteeringTransferError("layers is empty; pass at least one layer index or 'all'")
    return sorted(set(resolved))


@contextmanager
def _hooked(registrations: list[tuple[nn.Module, HookFn]]) -> Iterator[None]:
    handles: list[RemovableHandle] = []
    try:
        for module, fn in registrations:
            handles.append(module.register_forward_hook(fn, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------- capture


@dataclass
class Captured:
    """Block outputs recorded during a ``capture`` block: ``layer -> [tensor per forward]``."""

    layers: list[int]
    n_layers: int
    records: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def _key(self, layer: int) -> int:
        key = layer % self.n_layers if -self.n_layers <= layer < 0 else layer
        if key not in self.records:
            raise KeyError(
                f"layer {layer} was not captured (or no forward ran); captured: {self.layers}"
            )
        return key

    def __getitem__(self, layer: int) -> torch.Tensor:
        """The most recent output of ``layer``, shape ``(batch, seq, hidden)``."""
        return self.records[self._key(layer)][-1]

    def all(self, layer: int) -> list[torch.Tensor]:
        """Outputs of ``layer`` from every forward pass inside the block, in order."""
        return list(self.records[self._key(layer)])


def _capture_hook(store: Captured, layer: int, stop: bool) -> HookFn:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        store.records.setdefault(layer, []).append(_untuple(output).detach())
        if stop:
            raise StopForward

    return hook


@contextmanager
def capture(
    handle: ModelHandle, layers: int | Sequence[int] | Literal["all"], *, stop_forward: bool = False
) -> Iterator[Captured]:
    """Record the outputs of the given decoder blocks.

    With ``stop_forward=True`` the forward pass ends right after the deepest requested block
    (early exit: later blocks and the LM head never run); the body of the ``with`` block stops
    at that forward call and execution continues after the ``with`` statement.
    """
    resolved = _resolve_layers(handle, layers)
    store = Captured(layers=resolved, n_layers=handle.n_layers)
    deepest = max(resolved)
    regs = [
        (handle.block(layer), _capture_hook(store, layer, stop_forward and layer == deepest))
        for layer in resolved
    ]
    try:
        with _hooked(regs):
            yield store
    except StopForward:
        pass


# --------------------------------------------------------------------------------------- steering


def _prepare_vector(
    handle: ModelHandle, vector: torch.Tensor, param: str = "vector"
) -> torch.Tensor:
    if not isinstance(vector, torch.Tensor):
        raise SteeringTransferError(f"{param} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.ndim not in (1, 2) or vector.shape[-1] != handle.hidden_size:
        raise SteeringTransferError(
            f"{param} has shape {tuple(vector.shape)} but {handle.model_id} has hidden size "
            f"{handle.hidden_size}; pass shape ({handle.hidden_size},) or (batch, "
            f"{handle.hidden_size}) (a vector from another model must be mapped first)"
        )
    return check_finite(vector.detach(), param=param)


def _add_hook(layer: int, delta: torch.Tensor, positions: PositionSpec) -> HookFn:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = _untuple(output)
        batch = hidden.shape[0]
        d = delta.to(device=hidden.device, dtype=hidden.dtype)
        d = d.unsqueeze(1) if d.ndim == 2 else d  # (batch, 1, hidden) or (hidden,)
        if d.ndim == 3 and d.shape[0] != batch:
            raise SteeringTransferError(
                f"per-row vector has {d.shape[0]} rows but the batch has {batch}"
            )
        mask = _chunk_mask(positions, hidden, kwargs, layer)
        new = hidden + d if mask is None else hidden + mask.unsqueeze(-1).to(hidden.dtype) * d
        return _retuple(output, new)

    return hook


@contextmanager
def add(
    handle: ModelHandle,
    layer: int,
    vector: torch.Tensor,
    alpha: float = 1.0,
    positions: PositionSpec = "all",
) -> Iterator[None]:
    """Add ``alpha * vector`` to the output of block ``layer`` at the chosen positions.

    ``vector`` has shape ``(hidden,)`` or ``(batch, hidden)`` (one vector per row); ``alpha``
    must be a finite real number whose product with the vector fits the model's dtype.
    """
    resolved = handle.layer(layer)
    vec = _prepare_vector(handle, vector)
    check_strength(alpha, param="alpha")
    positions = validate_positions(positions)
    delta = alpha * vec
    _check_delta(handle, delta, alpha)
    with _hooked([(handle.block(resolved), _add_hook(resolved, delta, positions))]):
        yield


def _check_delta(handle: ModelHandle, delta: torch.Tensor, alpha: float) -> None:
    """Refuse a finite ``alpha`` whose product with the vector overflows (e.g. 1e39 in float32,
    or 1e5 * a norm-10 vector in float16): it would make the logits NaN."""
    for dtype, where in ((delta.dtype, "the vector's"), (handle.dtype, "the model's")):
        if dtype.is_floating_point and not bool(torch.isfinite(delta.to(dtype)).all()):
            raise SteeringTransferError(
                f"alpha={alpha!r} times the vector overflows {where} dtype {dtype} "
                f"(|alpha * vector| > {torch.finfo(dtype).max:.3g}); pass a smaller alpha"
            )


# --------------------------------------------------------------------------------------- ablation


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``x - (x . r) r`` for a unit vector ``r`` (``(hidden,)``), or one per batch row
    (``(batch, hidden)``; a zero row leaves its row untouched)."""
    u = unit.to(device=hidden.device, dtype=hidden.dtype)
    if u.ndim == 1:
        return hidden - (hidden @ u).unsqueeze(-1) * u
    if u.shape[0] != hidden.shape[0]:
        raise SteeringTransferError(
            f"per-row direction has {u.shape[0]} rows but the batch has {hidden.shape[0]}"
        )
    shape = (u.shape[0],) + (1,) * (hidden.ndim - 2) + (u.shape[1],)
    u = u.reshape(shape)
    return hidden - (hidden * u).sum(-1, keepdim=True) * u


def _ablate_hook(
    unit: torch.Tensor,
    centre: torch.Tensor | None = None,
    special: dict[str, torch.Tensor | None] | None = None,
) -> HookFn:
    """``x - (x . r) r``; with ``centre`` (``mu . r``, scalar or per row) ``x - ((x - mu) . r) r``;
    with ``special`` (the current chunk's special-token mask) those positions stay as they are."""

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        new = project_out(hidden, unit)
        if centre is not None:
            c = centre.to(device=hidden.device, dtype=hidden.dtype)
            u = unit.to(device=hidden.device, dtype=hidden.dtype)
            if u.ndim == 2:  # one direction (and one centre) per batch row
                shape = (u.shape[0],) + (1,) * (hidden.ndim - 2) + (u.shape[1],)
                new = new + c.reshape((*shape[:-1], 1)) * u.reshape(shape)
            else:
                new = new + c * u
        mask = special.get("mask") if special is not None else None
        if mask is not None and mask.shape == hidden.shape[:2]:
            new = torch.where(mask.to(hidden.device).unsqueeze(-1), hidden, new)
        return new

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    return hook


def _residual_writers(block: nn.Module) -> list[nn.Module]:
    """Modules whose outputs a block adds to the residual stream (after any post-norm)."""
    post_attn = getattr(block, "post_attention_layernorm", None)
    post_ffn = getattr(block, "post_feedforward_layernorm", None)
    if post_ffn is not None and post_attn is not None:  # Gemma 2/3: sandwich norms
        return [post_attn, post_ffn]
    writers = [getattr(block, name, None) for name in ("self_attn", "mlp")]
    return [w for w in writers if isinstance(w, nn.Module)]


def ablation_sites(handle: ModelHandle) -> list[nn.Module]:
    """Every module whose output ``ablate(..., "all")`` edits, in a fixed order: the embeddings,
    then per block its residual writers and the block itself."""
    sites: list[nn.Module] = [handle.model.get_input_embeddings()]
    for block in handle.blocks:
        sites.extend(_residual_writers(block))
        sites.append(block)
    return sites


@dataclass(frozen=True)
class AblationFrame:
    """How :func:`ablate` edits a model whose residual stream has massive dimensions.

    Why: Arditi's ``x - (x . r) r`` sets the stream's component along ``r`` to zero. Where a few
    dimensions hold nearly all of the stream's norm at every token (Gemma-3-270M: one dimension
    carries > 99 % of the squared norm from block 5 on), ``x . r`` is dominated by them, and
    zeroing it adds a large token-independent vector at every site: any direction, random or
    not, then breaks the model (perplexity 10^7-10^8). A frame calibrated on the model's own
    prompts (:func:`steering_transfer.ablation.calibrate_ablation`) fixes the three parts of
    that: ``outlier_dims`` are zeroed in every ablated direction (which is then renormalised),
    the projection is centred on each site's mean (``x - ((x - mu) . r) r``, ``means`` in
    :func:`ablation_sites` order) and positions holding a special token (``special_ids``: BOS,
    chat markers) are left alone. A frame without outlier dims is Arditi's ablation unchanged.
    """

    outlier_dims: tuple[int, ...] = ()
    means: tuple[torch.Tensor, ...] = ()
    special_ids: tuple[int, ...] = ()
    rule: str = ""

    @property
    def active(self) -> bool:
        return bool(self.outlier_dims)

    def orthogonalise(self, vector: torch.Tensor) -> torch.Tensor:
        """``vector`` with the outlier dimensions zeroed (unchanged for an inactive frame)."""
        if not self.active:
            return vector
        out = vector.clone()
        out[..., list(self.outlier_dims)] = 0
        return out

    def removed_share(self, vector: torch.Tensor) -> float:
        """The share of ``vector``'s squared norm that lies in the outlier dimensions."""
        v = vector.double()
        total = float((v * v).sum())
        if not self.active or total == 0.0:
            return 0.0
        part = v[..., list(self.outlier_dims)]
        return float((part * part).sum()) / total

    def to_dict(self) -> dict[str, Any]:
        """What a row records: the rule and what it found (the means stay out)."""
        return {
            "mode": "centred, outlier dims out, specials kept" if self.active else "arditi",
            "outlier_dims": list(self.outlier_dims), "rule": self.rule,
        }


@contextmanager
def ablate(
    handle: ModelHandle,
    direction: torch.Tensor,
    layers: int | Sequence[int] | Literal["all"] = "all",
    *,
    frame: AblationFrame | None = None,
) -> Iterator[None]:
    """Directional ablation: remove the component along ``direction`` from the residual stream.

    ``direction`` is ``(hidden,)``, or ``(batch, hidden)`` for one direction per batch row (a
    zero row leaves that row untouched), so many ablations share one generate call.

    With ``layers="all"`` this follows Arditi et al.: the direction is projected out of the
    embeddings, of every sub-layer output written to the residual stream (attention and MLP,
    after Gemma's post-norms) and of every block output, so no block ever reads it. With explicit
    layers only those blocks' outputs are edited. An active ``frame`` (:class:`AblationFrame`,
    ``layers="all"`` only) adapts the ablation to a stream with massive dimensions.
    """
    vec = _prepare_vector(handle, direction, param="direction")
    active = frame is not None and frame.active
    if active:
        assert frame is not None
        if layers != "all":
            raise SteeringTransferError(
                f"layers={layers!r} with an active ablation frame; the frame's means are per "
                "ablation site, so pass layers='all' (or frame=None)"
            )
        vec = frame.orthogonalise(vec)
    if vec.ndim == 1:
        norm = vec.norm()
        if float(norm) == 0.0:
            raise SteeringTransferError(
                "direction has zero norm (outside the frame's outlier dimensions, if one is "
                "given); it defines no direction to ablate"
            )
        unit = vec / norm
    else:  # one direction per batch row; a zero row means "this row is not ablated"
        norms = vec.norm(dim=-1, keepdim=True)
        unit = torch.where(norms > 0, vec / norms.clamp_min(1e-30), torch.zeros_like(vec))
    regs: list[tuple[nn.Module, HookFn]] = []
    if active:
        assert frame is not None
        sites = ablation_sites(handle)
        if len(frame.means) != len(sites):
            raise SteeringTransferError(
                f"frame has {len(frame.means)} site means but {handle.model_id} has "
                f"{len(sites)} ablation sites; calibrate the frame on this model"
            )
        special: dict[str, torch.Tensor | None] = {"mask": None}
        ids = torch.tensor(frame.special_ids, dtype=torch.long)
        u64 = unit.double()
        for site, mean in zip(sites, frame.means, strict=True):
            centre = (u64 @ mean.double().to(u64.device)).float()
            regs.append((site, _ablate_hook(unit, centre, special)))
        pre = handle.model.register_forward_pre_hook(_special_mask_hook(ids, special),
                                                     with_kwargs=True)
        try:
            with _hooked(regs):
                yield
        finally:
            pre.remove()
        return
    if layers == "all":
        regs = [(site, _ablate_hook(unit)) for site in ablation_sites(handle)]
    else:
        regs.extend(
            (handle.block(layer), _ablate_hook(unit)) for layer in _resolve_layers(handle, layers)
        )
    with _hooked(regs):
        yield


def _special_mask_hook(
    ids: torch.Tensor, state: dict[str, torch.Tensor | None]
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
    """Records which positions of the current forward chunk hold a special token."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2:
            state["mask"] = torch.isin(input_ids, ids.to(input_ids.device))
        else:  # embeddings passed directly: no ids to read, every position is edited
            state["mask"] = None

    return hook


# ------------------------------------------------------------------------------------ replacement


def _replace_hook(
    layer: int,
    replacement: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    positions: PositionSpec,
) -> HookFn:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = _untuple(output)
        seq = hidden.shape[1]
        if callable(replacement):
            new = replacement(hidden)
            if not isinstance(new, torch.Tensor) or new.shape != hidden.shape:
                raise SteeringTransferError(
                    f"replacement function must return a tensor of shape {tuple(hidden.shape)}"
                )
        else:
            offset = _cache_offset(kwargs, layer, seq)
            if offset > 0:  # generated tokens have no replacement: leave them alone
                return output
            try:
                new = torch.broadcast_to(replacement.to(hidden.device, hidden.dtype), hidden.shape)
            except RuntimeError as exc:
                raise SteeringTransferError(
                    f"replacement of shape {tuple(replacement.shape)} does not broadcast to the "
                    f"block output of shape {tuple(hidden.shape)}"
                ) from exc
        new = new.to(hidden.dtype)
        mask = _chunk_mask(positions, hidden, kwargs, layer)
        if mask is not None:
            new = torch.where(mask.unsqueeze(-1), new, hidden)
        return _retuple(output, new)

    return hook


@contextmanager
def replace(
    handle: ModelHandle,
    layer: int,
    replacement: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    positions: PositionSpec = "all",
) -> Iterator[None]:
    """Replace the output of block ``layer`` by a tensor or by ``fn(output)``.

    A tensor must broadcast to ``(batch, seq, hidden)`` of the prompt forward pass; a function
    receives the block output and returns the new one (used for mapper-based safety switches).
    """
    resolved = handle.layer(layer)
    positions = validate_positions(positions)
    if isinstance(replacement, torch.Tensor):
        if replacement.shape[-1] != handle.hidden_size:
            raise SteeringTransferError(
                f"replacement has hidden size {replacement.shape[-1]} but {handle.model_id} has "
                f"{handle.hidden_size}"
            )
        check_finite(replacement, param="replacement")
    elif not callable(replacement):
        raise SteeringTransferError("replacement must be a tensor or a callable")
    with _hooked([(handle.block(resolved), _replace_hook(resolved, replacement, positions))]):
        yield
