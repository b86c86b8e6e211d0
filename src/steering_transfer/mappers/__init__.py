"""Mapper architectures between two models' residual streams (see :mod:`.base`)."""

# The architecture modules are imported for their @register_mapper side effect.
from .affine import AffineConfig, AffineMapper
from .autoencoder import AutoencoderConfig, AutoencoderMapper
from .base import (
    FitReport,
    Mapper,
    MapperConfig,
    available_mappers,
    create_mapper,
    get_mapper_class,
    load_mapper,
    register_mapper,
)
from .baselines import MeanOutputMapper
from .gradient import GradientConfig
from .lowrank import LowRankConfig, LowRankMapper
from .procrustes import ProcrustesConfig, ProcrustesMapper

__all__ = [
    "AffineConfig",
    "AffineMapper",
    "AutoencoderConfig",
    "AutoencoderMapper",
    "FitReport",
    "GradientConfig",
    "LowRankConfig",
    "LowRankMapper",
    "Mapper",
    "MapperConfig",
    "MeanOutputMapper",
    "ProcrustesConfig",
    "ProcrustesMapper",
    "available_mappers",
    "create_mapper",
    "get_mapper_class",
    "load_mapper",
    "register_mapper",
]
