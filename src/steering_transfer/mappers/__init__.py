"""Mapper architectures between two models' residual streams (see :mod:`.base`)."""

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

__all__ = [
    "FitReport",
    "Mapper",
    "MapperConfig",
    "available_mappers",
    "create_mapper",
    "get_mapper_class",
    "load_mapper",
    "register_mapper",
]
