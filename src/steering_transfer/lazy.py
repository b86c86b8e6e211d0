"""Public names imported on first use (PEP 562), so importing a package stays cheap.

The pytest plugin imports ``steering_transfer`` in every pytest run and the zoo CLI imports
``steering_transfer.organisms`` for ``zoo list``: neither should pay for torch until a name that
needs it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attribute(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str], name: str
) -> Any:
    """``name`` from its submodule (``exports[name]``, relative to ``package``), cached in
    ``namespace`` (the package's globals); a name equal to its submodule is the submodule."""
    module_name = exports.get(name)
    if module_name is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", package)
    value = module if name == module_name else getattr(module, name)
    namespace[name] = value
    return value
