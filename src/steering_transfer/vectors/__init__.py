"""Steering vectors: the type, extraction, transfer through a mapper, and persistence.

One concept a module: :mod:`.steering_vector` (the :class:`SteeringVector` type, safetensors
save/load, ``apply``, the :func:`random_like` control), :mod:`.gguf` (llama.cpp control-vector
export/import), :mod:`.extraction` (difference in means, prompt steering, per-example
activations) and :mod:`.mapping` (:func:`map_vector`, both readings). Everything public is
re-exported here, so ``from steering_transfer.vectors import ...`` is the stable import path.
"""

from .extraction import (
    PositionMode,
    contrastive_activations,
    diff_in_means,
    position_activations,
    prompt_steering_vector,
)
from .gguf import load_gguf_control_vector, save_gguf_control_vector
from .mapping import Reading, map_vector
from .steering_vector import (
    FORMAT_VERSION,
    HOOK_SITES,
    MetadataValue,
    SteeringVector,
    random_like,
)

__all__ = [
    "FORMAT_VERSION",
    "HOOK_SITES",
    "MetadataValue",
    "PositionMode",
    "Reading",
    "SteeringVector",
    "contrastive_activations",
    "diff_in_means",
    "load_gguf_control_vector",
    "map_vector",
    "position_activations",
    "prompt_steering_vector",
    "random_like",
    "save_gguf_control_vector",
]
