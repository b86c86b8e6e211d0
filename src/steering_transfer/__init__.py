"""steering-transfer: carry activation-space interventions from one language model to another.

Extract a steering vector or direction in a source model, fit a mapper between the two models'
residual streams, map the intervention into the target, and measure how much of it survives.

The public names below are imported on first use (PEP 562), so importing the package (as the
pytest plugin does in every pytest run) does not import torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import SteeringTransferError
from .lazy import lazy_attribute

if TYPE_CHECKING:
    from . import hooks
    from .activations import (
        PairedActivations,
        TokenActivations,
        extract_activations,
        extract_paired,
    )
    from .fidelity import FidelityResult, replacement_fidelity
    from .generation import generate
    from .mappers import (
        Mapper,
        MapperConfig,
        available_mappers,
        create_mapper,
        load_mapper,
        register_mapper,
    )
    from .metrics import Rate, cosine, fvu, mse, wilson_interval
    from .models import ModelHandle, load_model, wrap_model
    from .positions import FromIndex
    from .vectors import (
        SteeringVector,
        contrastive_activations,
        diff_in_means,
        load_gguf_control_vector,
        map_vector,
        prompt_steering_vector,
        random_like,
        save_gguf_control_vector,
    )

__version__ = "0.1.0"

# public name -> submodule defining it (a submodule maps to itself, e.g. ``hooks``)
_LAZY: dict[str, str] = {
    "hooks": "hooks",
    **dict.fromkeys(
        ("PairedActivations", "TokenActivations", "extract_activations", "extract_paired"),
        "activations",
    ),
    **dict.fromkeys(("FidelityResult", "replacement_fidelity"), "fidelity"),
    "generate": "generation",
    **dict.fromkeys(
        (
            "Mapper",
            "MapperConfig",
            "available_mappers",
            "create_mapper",
            "load_mapper",
            "register_mapper",
        ),
        "mappers",
    ),
    **dict.fromkeys(("Rate", "cosine", "fvu", "mse", "wilson_interval"), "metrics"),
    **dict.fromkeys(("ModelHandle", "load_model", "wrap_model"), "models"),
    "FromIndex": "positions",
    **dict.fromkeys(
        (
            "SteeringVector",
            "contrastive_activations",
            "diff_in_means",
            "load_gguf_control_vector",
            "map_vector",
            "prompt_steering_vector",
            "random_like",
            "save_gguf_control_vector",
        ),
        "vectors",
    ),
}

__all__ = [
    "FidelityResult",
    "FromIndex",
    "Mapper",
    "MapperConfig",
    "ModelHandle",
    "PairedActivations",
    "Rate",
    "SteeringTransferError",
    "SteeringVector",
    "TokenActivations",
    "__version__",
    "available_mappers",
    "contrastive_activations",
    "cosine",
    "create_mapper",
    "diff_in_means",
    "extract_activations",
    "extract_paired",
    "fvu",
    "generate",
    "hooks",
    "load_gguf_control_vector",
    "load_mapper",
    "load_model",
    "map_vector",
    "mse",
    "prompt_steering_vector",
    "random_like",
    "register_mapper",
    "replacement_fidelity",
    "save_gguf_control_vector",
    "wilson_interval",
    "wrap_model",
]


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access and cache the name in the package."""
    return lazy_attribute(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
