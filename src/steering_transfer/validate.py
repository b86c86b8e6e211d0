"""Input validation with errors that name the parameter and say how to fix it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from .errors import SteeringTransferError


def resolve_layer(layer: int, n_layers: int, *, param: str = "layer") -> int:
    """Map a possibly negative layer index onto ``0..n_layers-1`` or raise a clear error."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise SteeringTransferError(
            f"{param} must be an int (decoder block index), got {type(layer).__name__} {layer!r}"
        )
    if not -n_layers <= layer < n_layers:
        raise SteeringTransferError(
            f"{param}={layer} is out of range for a model with {n_layers} decoder blocks; "
            f"use 0..{n_layers - 1} or -{n_layers}..-1"
        )
    return layer % n_layers


def check_texts(texts: Sequence[str], *, param: str = "texts") -> list[str]:
    """Ensure a non-empty list of strings."""
    if isinstance(texts, str):
        raise SteeringTransferError(
            f"{param} must be a list of strings, not a single string; wrap it in [...]"
        )
    texts = list(texts)
    if not texts:
        raise SteeringTransferError(f"{param} is empty; pass at least one prompt")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise SteeringTransferError(
            f"{param}[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str"
        )
    return texts


def check_finite(tensor: torch.Tensor, *, param: str) -> torch.Tensor:
    """Refuse NaN or infinite values, which silently poison fits and vectors."""
    if not torch.is_floating_point(tensor):
        raise SteeringTransferError(f"{param} must be a floating-point tensor, got {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise SteeringTransferError(
            f"{param} contains {n_bad} NaN/inf values; check the model dtype (use float32) "
            "or the inputs that produced it"
        )
    return tensor


def check_matrix(tensor: torch.Tensor, *, param: str, dim: int | None = None) -> torch.Tensor:
    """Ensure a 2-D ``(n, d)`` tensor, optionally with a given feature width."""
    if not isinstance(tensor, torch.Tensor):
        raise SteeringTransferError(f"{param} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != 2:
        raise SteeringTransferError(
            f"{param} must have shape (n_tokens, hidden_size), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise SteeringTransferError(f"{param} has no rows; pass at least one token's activations")
    if dim is not None and tensor.shape[1] != dim:
        raise SteeringTransferError(
            f"{param} has hidden size {tensor.shape[1]} but {dim} was expected; "
            "check that the source/target models and layers match the mapper"
        )
    return tensor


def check_nonnegative(value: object, *, param: str) -> float:
    """A finite real number >= 0 (e.g. a ridge penalty)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise SteeringTransferError(f"{param} must be a finite float >= 0, got {value!r}")
    return float(value)


def check_vector(vector: torch.Tensor, *, dim: int, param: str = "vector") -> torch.Tensor:
    """Ensure a 1-D vector of the model's hidden size."""
    if not isinstance(vector, torch.Tensor):
        raise SteeringTransferError(f"{param} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.ndim != 1 or vector.shape[0] != dim:
        raise SteeringTransferError(
            f"{param} has shape {tuple(vector.shape)} but the model's hidden size is {dim}; "
            f"pass a 1-D tensor of length {dim} (a vector from another model must be mapped first)"
        )
    return check_finite(vector, param=param)


def check_count(value: object, *, param: str, minimum: int = 1) -> int:
    """A whole number ``>= minimum`` (counts, batch sizes, lengths, seeds).

    Bools, floats (``2.5``, ``nan``, ``inf``) and strings are refused rather than rounded or
    looped over forever; any ``numbers.Integral`` (``int``, NumPy integers) is accepted.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SteeringTransferError(
            f"{param} must be an int >= {minimum}, got {type(value).__name__} {value!r}; "
            f"pass a whole number such as {max(minimum, 1)}"
        )
    if value < minimum:
        raise SteeringTransferError(f"{param} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_optional_count(
    value: object, *, param: str, minimum: int = 1, none_means: str = "no limit"
) -> int | None:
    """``None`` or a whole number ``>= minimum`` (e.g. ``max_length``, where None = no limit)."""
    if value is None:
        return None
    try:
        return check_count(value, param=param, minimum=minimum)
    except SteeringTransferError as exc:
        raise SteeringTransferError(f"{exc} (or None for {none_means})") from None


def check_strength(value: object, *, param: str = "alpha", max_abs: float = math.inf) -> float:
    """A finite real steering strength (``|value| <= max_abs``).

    A NaN or infinite strength (or one that overflows the vector's dtype) turns the logits into
    NaN, greedy decoding then emits padding and the empty completion would be scored as if the
    behaviour had been removed; bools are refused as a likely mistake.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SteeringTransferError(
            f"{param} must be a finite real number (a steering strength such as 4.0), got "
            f"{type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise SteeringTransferError(
            f"{param}={value!r} is not finite; pass a finite steering strength such as 4.0 "
            "(a NaN/inf strength makes the logits NaN and the completions empty)"
        )
    strength = float(value)
    if abs(strength) > max_abs:
        raise SteeringTransferError(
            f"{param}={value!r} is out of range (|{param}| <= {max_abs:.3g}); it would overflow "
            "the activations: pass a smaller steering strength"
        )
    return strength


def check_has_tokens(
    attention_mask: torch.Tensor, *, param: str = "prompts", start: int = 0
) -> None:
    """Refuse rows of a batch encoding that hold no tokens (empty text or ``max_length`` cut).

    ``start`` is the index of the batch's first text in the caller's list, so the message
    points at the offending input.
    """
    empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise SteeringTransferError(
            f"{param}[{start + empty[0]}] produced no tokens; remove empty prompts"
        )
