"""Dataclass configs that round-trip through JSON (``to_dict`` / ``from_dict``), and a typed check
of plain values (from TOML or JSON) against a dataclass's field annotations."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

from .errors import SteeringTransferError

__all__ = ["DictConfig", "check_field_types", "field_type_error"]

C = TypeVar("C", bound="DictConfig")


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation (``Any`` where an annotation cannot be resolved)."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a name imported under TYPE_CHECKING only: check what resolves
        hints = {}
    return {
        name: hints.get(name, Any if isinstance(tp, str) else tp) for name, tp in fields.items()
    }


def _is_union(origin: Any) -> bool:
    """``X | Y`` (``types.UnionType``) or the ``typing`` spelling ``Optional[X]``."""
    return origin is types.UnionType or repr(origin) == "typing.Union"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits annotation ``tp`` (annotations this check does not know fit)."""
    if tp is Any or isinstance(tp, TypeVar):
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(origin):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return _is_number(value) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if tp is list or origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if tp is tuple or origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(map(_fits, value, args)))
    if tp is dict or origin is dict or origin is Mapping:
        return isinstance(value, Mapping) and (
            len(args) != 2 or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
        )
    return True  # classes, protocols, ...: not checked here


def _describe(tp: Any) -> str:
    """``int | None`` -> ``"an int or None"``; the wording of :func:`field_type_error`."""
    if tp is None or tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(origin):
        parts = [_describe(arg) for arg in args]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    names = {
        bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
        list: "a list", tuple: "a list", dict: "a table",
    }
    if tp in names:
        return names[tp]
    if origin in (list, tuple) and args:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (dict, Mapping):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def field_type_error(cls: type, key: str, value: Any) -> str | None:
    """Why ``value`` does not fit field ``key`` of dataclass ``cls`` (``None`` when it fits).

    Understood annotations: ``int``, ``float``, ``str``, ``bool``, ``None``, ``list[X]``,
    ``tuple[X, ...]``, ``dict[K, V]``, ``Literal[...]``, ``Any`` and unions of these (``X | None``).
    ``bool`` is not an int, an int is a float, floats must be finite (TOML and JSON can write
    ``nan`` and ``inf``). Other annotations (classes) are not checked; unknown keys are not this
    function's business (``DictConfig.from_dict`` refuses them).
    """
    hints = _field_hints(cls)
    if key not in hints or _fits(value, hints[key]):
        return None
    expected = _describe(hints[key])
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key} = {value!r} is not finite; expected {expected}"
    return f"{key} = {value!r} ({type(value).__name__}) has the wrong type; expected {expected}"


def check_field_types(cls: type, data: Mapping[str, Any]) -> None:
    """Raise :class:`SteeringTransferError` for the first value of ``data`` that does not fit
    its field's annotation in dataclass ``cls`` (see :func:`field_type_error`)."""
    for key, value in data.items():
        problem = field_type_error(cls, key, value)
        if problem is not None:
            raise SteeringTransferError(f"{cls.__name__}: {problem}")


def reject_unknown_keys(
    keys: Iterable[str], known: Iterable[str], *, where: str, what: str = "key(s)"
) -> None:
    """Raise naming ``where``, the unknown keys and the known ones: a typo in a config file
    must stop the run where it is written, not be silently dropped."""
    allowed = set(known)
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise SteeringTransferError(
            f"{where} has unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


class DictConfig:
    """Mixin for ``@dataclass`` configs: plain-dict export and a strict import."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, check_types: bool = False) -> C:
        """Build from a dict, refusing unknown keys (a typo must not be silently dropped).

        With ``check_types``, every value must also fit its field's annotation
        (:func:`check_field_types`): what a hand-written file (TOML, JSON) should get.
        """
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise SteeringTransferError(
                f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}"
            )
        if check_types:
            check_field_types(cls, data)
        return cls(**data)
