"""Public names imported on first use: the ``__getattr__`` of the package and its subpackages.

A package lists ``name -> module that defines it``; importing the package stays cheap (no torch)
until a name is used, and no subpackage imports another one just by being imported.

Examples
--------
>>> import embetter_plug.store
>>> "ActivationCache" in embetter_plug.store.__all__
True
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` for ``exports``."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
