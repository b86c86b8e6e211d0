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


def _ablate_hook(unit: torch.Tensor) -> HookFn:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if isinstance(output, tuple):
            return (project_out(output[0], unit), *output[1:])
        return project_out(output, unit)

    return hook


def _residual_writers(block: nn.Module) -> list[nn.Module]:
    """Modules whose outputs a block adds to the residual stream (after any post-norm)."""
    post_attn = getattr(block, "post_attention_layernorm", None)
    post_ffn = getattr(block, "post_feedforward_layernorm", None)
    if post_ffn is not None and post_attn is not None:  # Gemma 2/3: sandwich norms
        return [post_attn, post_ffn]
    writers = [getattr(block, name, None) for name in ("self_attn", "mlp")]
    return [w for w in writers if isinstance(w, nn.Module)]


@contextmanager
def ablate(
    handle: ModelHandle,
    direction: torch.Tensor,
    layers: int | Sequence[int] | Literal["all"] = "all",
) -> Iterator[None]:
    """Directional ablation: remove the component along ``direction`` from the residual stream.

    ``direction`` is ``(hidden,)``, or ``(batch, hidden)`` for one direction per batch row (a
    zero row leaves that row untouched), so many ablations share one generate call.

    With ``layers="all"`` this follows Arditi et al.: the direction is projected out of the
    embeddings, of every sub-layer output written to the residual stream (attention and MLP,
    after Gemma's post-norms) and of every block output, so no block ever reads it. With explicit
    layers only those blocks' outputs are edited.
    """
    vec = _prepare_vector(handle, direction, param="direction")
    if vec.ndim == 1:
        norm = vec.norm()
        if float(norm) == 0.0:
            raise SteeringTransferError(
                "direction has zero norm; it defines no direction to ablate"
            )
        unit = vec / norm
    else:  # one direction per batch row; a zero row means "this row is not ablated"
        norms = vec.norm(dim=-1, keepdim=True)
        unit = torch.where(norms > 0, vec / norms.clamp_min(1e-30), torch.zeros_like(vec))
    regs: list[tuple[nn.Module, HookFn]] = []
    if layers == "all":
        regs.append((handle.model.get_input_embeddings(), _ablate_hook(unit)))
        for block in handle.blocks:
            regs.extend((writer, _ablate_hook(unit)) for writer in _residual_writers(block))
            regs.append((block, _ablate_hook(unit)))
    else:
        regs.extend(
            (handle.block(layer), _ablate_hook(unit)) for layer in _resolve_layers(handle, layers)
        )
    with _hooked(regs):
        yield


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
