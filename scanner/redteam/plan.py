"""What a planter is handed and returns, catalogue entries, and choosing the
tensors a planter edits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanner.errors import UsageError
from scanner.redteam.io import ModelCopy

ATTACK = "attack"
TRANSFORM = "transform"
TAMPER = "generic tamper"
"""Family of the generic tamper entries (measured apart: the minimal detectable change)."""


class NotApplicableError(UsageError):
    """The entry cannot be planted into this model (wrong format, no suitable tensor)."""


@dataclass(frozen=True)
class Context:
    """What one planting run is asked for."""

    seed: int
    strength: float
    params: Mapping[str, str] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set, compare=False, repr=False)
    """Parameter names the planter looked up: a given one it never asks for is refused."""

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def param(self, key: str, default: str | None = None) -> str | None:
        self.asked.add(key)
        return self.params.get(key, default)


@dataclass(frozen=True)
class Plan:
    """A planter's result, before it is written."""

    changed: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Tensors to replace (or add) in the copy."""
    onnx_model: Any = None
    """A whole new ModelProto (graph attacks, optimizers)."""
    writer: Callable[[Path, str | None], Mapping[str, Any]] | None = None
    """Writes the output itself (format conversions); receives the marker JSON, or
    ``None`` when the copy is not marked."""
    nodes: tuple[str, ...] = ()
    claim: str | None = None
    allow: tuple[str, ...] = ()
    """Change classes a pipeline expecting this transformation allows (``--allow``)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    verification: Mapping[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    """Output suffix when the format changes (``.gguf``)."""


Planter = Callable[[ModelCopy, Context], Plan]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    family: str
    summary: str
    formats: tuple[str, ...]
    planter: Planter = field(repr=False)
    strength_name: str = ""
    sweep: tuple[float, ...] = (1.0,)
    """Strengths the evaluation protocol sweeps, weakest first."""
    default: float | None = None

    @property
    def default_strength(self) -> float:
        return self.default if self.default is not None else self.sweep[len(self.sweep) // 2]


# ------------------------------------------------------------------------- targeting


def _layers(copy: ModelCopy) -> Any:
    from scanner.analysis.layers import infer_layers

    return infer_layers(copy.artifact)


def _chain(copy: ModelCopy) -> list[Any]:
    """A path through the layer graph from its first layer to a layer that feeds nothing,
    always taking the nearest successor whose input width is this layer's output width
    (so SRA's channel indices line up; residual skips are taken when the graph has them)."""
    from scanner.redteam.weights import ChainLayer

    lg = _layers(copy)
    floats = set(copy.float_names())
    order = sorted((v for v in lg.layers.values() if v.name in floats), key=lambda v: v.order)
    if len(order) < 3:
        raise NotApplicableError(f"{copy.path}: fewer than three layers to build a chain")
    best: list[Any] = []
    for start in order[:4]:  # the stem may be an embedding that feeds nothing by shape
        path = [start]
        while True:
            cur = path[-1]
            nxt = [
                lg.layers[n]
                for n in lg.successors(cur.name)
                if n in floats
                and lg.layers[n].order > cur.order
                and (
                    lg.layers[n].in_dim == cur.out_dim
                    or (lg.layers[n].depthwise and lg.layers[n].out_dim == cur.out_dim)
                )
            ]
            if not nxt:
                break
            # Squeeze-excitation gates (a narrow bottleneck that multiplies the main path)
            # are side branches: stay on the main path when it exists.
            wide = [v for v in nxt if v.out_dim >= cur.out_dim // 2 or v.out_dim >= 16]
            path.append(min(wide or nxt, key=lambda v: v.order))
        if len(path) > len(best):
            best = path
    if len(best) < 3:
        raise NotApplicableError(f"{copy.path}: no chain of three linked layers")
    return [
        ChainLayer(
            v.name,
            v.out_axis,
            v.in_axis,
            tuple(p for p in v.params if p in floats and copy.shape(p) and copy.shape(p)[0] > 2),
        )
        for v in best
    ]


def _matrices(
    copy: ModelCopy, *, min_size: int = 64, multiple: int = 1, two_d: bool = False
) -> list[str]:
    """Weights of at least two axes (convolution kernels count as ``[out, in*k*k]``),
    largest first, with at least 8 rows and columns, whose last axis (2-D) or size
    (kernels) is a multiple of ``multiple``."""

    def ok(n: str) -> bool:
        shape = copy.shape(n)
        if len(shape) < 2 or (two_d and len(shape) != 2):
            return False
        cols = int(np.prod(shape[1:]))
        size = shape[0] * cols
        fits = shape[-1] % multiple == 0 if len(shape) == 2 else size % multiple == 0
        return shape[0] >= 8 and cols >= 8 and size >= min_size and fits

    names = [n for n in copy.float_names() if ok(n)]
    return sorted(names, key=lambda n: (-int(np.prod(copy.shape(n))), n))


def _pick(copy: ModelCopy, ctx: Context, names: list[str], what: str) -> str:
    chosen = ctx.param("tensor")
    if chosen:
        if chosen not in copy.artifact.tensors:
            raise UsageError(f"tensor {chosen!r} is not in {copy.path}")
        return chosen
    if not names:
        raise NotApplicableError(f"{copy.path}: no tensor suitable for {what}")
    # Seeded choice among the largest few: large tensors are where real edits go.
    return str(ctx.rng().choice(names[: max(1, min(8, len(names)))]))


def _orient(copy: ModelCopy, name: str, w: np.ndarray) -> tuple[np.ndarray, bool]:
    """``w`` in torch layout ``[out, in]`` (ONNX MatMul weights are ``[in, out]``)."""
    layer = _layers(copy).layers.get(name)
    flip = layer is not None and layer.out_axis == 1 and w.ndim == 2
    return (w.T.copy() if flip else w), flip


def _float32_weights(copy: ModelCopy) -> list[str]:
    return [n for n in copy.float_names() if copy.dtype(n) == "F32" and len(copy.shape(n)) >= 2]
