"""Values the interpreter builds: globals, opaque placeholders, torch storages and tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Global:
    """A reference to an allowlisted global (a callable or a type token)."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, eq=False)
class Opaque:
    """What a non-allowlisted global, or a call of one, would have produced."""

    what: str
    offset: int


@dataclass(frozen=True)
class TorchDtype:
    """A ``torch.<dtype>`` object; ``name`` is the canonical dtype name or ``None``."""

    torch_name: str
    name: str | None


@dataclass(frozen=True)
class StorageType:
    """A ``torch.<X>Storage`` class: a dtype for the storage's elements."""

    torch_name: str
    dtype: str | None
    """Canonical dtype name; ``U8`` for ``UntypedStorage``; ``None`` for unsupported."""


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A storage named by a persistent id; the reader resolves it to file bytes."""

    key: str
    dtype: str
    numel: int
    location: str
    itemsize: int
    info: Any = None
    """Reader-specific resolution (zip member, legacy file offset)."""

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor as ``torch._utils._rebuild_tensor*`` would build it."""

    storage: StorageRef
    offset: int
    """In elements of ``dtype``."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    itemsize: int
    requires_grad: bool = False
    parameter: bool = False


@dataclass(eq=False)
class ScriptObject:
    """A TorchScript module object (``__torch__.*``): its attributes, never its code."""

    qualname: str
    attrs: dict[str, Any] = field(default_factory=dict)


class PickleDict(dict):  # type: ignore[type-arg]
    """A dict or ``OrderedDict`` from the stream; ``attrs`` holds BUILD state (``_metadata``)."""

    attrs: dict[str, Any]


def describe(value: Any, limit: int = 80, depth: int = 0) -> str:
    """A bounded description of a pickled value for messages and evidence.

    Never ``repr`` a value from the stream: it can nest deeper than the C stack.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit])
        return text + ("..." if len(value) > limit else "")
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)[:limit]
    if isinstance(value, Opaque):
        return f"<{value.what[:limit]}>"
    if isinstance(value, Global):
        return value.qualname
    if isinstance(value, tuple) and depth < 2:
        inner = ", ".join(describe(v, 40, depth + 1) for v in value[:4])
        return "(" + inner + (", ..." if len(value) > 4 else "") + ")"
    return f"<{type(value).__name__}>"
