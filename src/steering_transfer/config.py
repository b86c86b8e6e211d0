"""Dataclass configs that round-trip through JSON (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import SteeringTransferError

C = TypeVar("C", bound="DictConfig")


class DictConfig:
    """Mixin for ``@dataclass`` configs: plain-dict export and a strict import."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict, refusing unknown keys (a typo must not be silently dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise SteeringTransferError(
                f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)
