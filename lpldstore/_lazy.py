"""Names that a package exports but imports only on first use (PEP 562), so importing it stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from lpldstore.errors import MissingDependencyError

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, lazy: Mapping[str, str], eager: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``lazy`` maps each name to its module."""

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in ("torch", "torchvision"):
                raise
            raise MissingDependencyError(
                f"{package}.{name} needs {missing}, which is not installed: pip install 'lpldstore[torch]'"
            ) from exc

    def __dir__() -> list[str]:
        return sorted({*eager, *lazy})

    return __getattr__, __dir__
