"""What each stored tensor of a graph artifact is: a model parameter or graph structure.

The role follows from the operators that read the tensor in the canonical graph (after
constant folding, so a weight sliced and concatenated by the exporter counts as the
recurrent weight it becomes): a float tensor whose values reach a parameter slot
(:func:`scanner.graph.diff.is_parameter`: Conv / MatMul / Gemm operands, normalization
statistics, recurrent matrices, per-channel vectors in arithmetic ...) is a parameter;
everything else (shapes, axes, scalars, slice bounds, integer tensors, constants folded
away into shapes) is structure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from scanner.artifact import Artifact
from scanner.graph.canonical import CanonicalGraph
from scanner.graph.diff import is_parameter
from scanner.graph.of_artifact import canonical_of

RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}
"""Recurrent operators and their number of gates."""


@dataclass(frozen=True)
class Role:
    readers: tuple[tuple[str, int], ...]
    """(operator, input slot) of every canonical node reading a value derived from the
    tensor."""
    parameter: bool

    @property
    def ops(self) -> set[str]:
        return {op for op, _ in self.readers}

    def describe(self) -> str:
        if not self.readers:
            return "read by no operator (folded into structure)"
        shown = sorted({f"{op}[{slot}]" for op, slot in self.readers})
        return ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def tensor_roles(artifact: Artifact) -> dict[str, Role] | None:
    """The role of every stored tensor of ``artifact`` (``None`` without a graph)."""
    g = canonical_of(artifact)
    if g is None:
        return None
    return roles_in(g, artifact)


def roles_in(g: CanonicalGraph, artifact: Artifact) -> dict[str, Role]:
    readers: dict[str, set[tuple[str, int]]] = defaultdict(set)
    parameter: set[str] = set()
    for n in g.nodes.values():
        for slot, tid in enumerate(n.inputs):
            c = g.consts.get(tid)
            if c is None:
                continue
            param = is_parameter(n.op, slot, c)
            for key in c.sources:
                readers[key].add((n.op, slot))
                info = artifact.tensors.get(key)
                # index and shape constants folded into a weight (slice bounds, axes)
                # are not parameters: only float values flow into one
                if param and info is not None and info.dtype.name in _FLOAT:
                    parameter.add(key)
    return {
        key: Role(tuple(sorted(readers.get(key, ()))), key in parameter) for key in artifact.tensors
    }


_FLOAT = ("F32", "F16", "BF16", "F64")
