"""steering-transfer: carry activation-space interventions from one language model to another.

Extract a steering vector or direction in a source model, fit a mapper between the two models'
residual streams, map the intervention into the target, and measure how much of it survives.
"""

from . import hooks
from .activations import (
    PairedActivations,
    TokenActivations,
    extract_activations,
    extract_paired,
)
from .errors import SteeringTransferError
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
