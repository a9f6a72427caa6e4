"""Import heavy libraries on first use.

``onnx`` alone costs most of a second to import (it loads ml_dtypes), and every command
imports the readers to choose a format by magic bytes; only the commands that actually
open an ONNX file should pay for it. ``lazy_module("onnx")`` stands in for the module
and imports it the first time an attribute is read.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first attribute access."""
    return _LazyModule(name)
