"""What a structural graph diff finds: the operator families it reasons about, node
references, regions and their explanations, and numeric checks of matched constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanner.graph.canonical import (
    Const,
    Node,
)

SELECTION_OPS = {
    "Where",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "If",
    "Loop",
    "Scan",
    "BitwiseAnd",
    "BitwiseOr",
    "IsInf",
    "IsNaN",
}
MERGE_OPS = {"Add", "Mul", "Where", "Max", "Min", "Concat", "Sum", "Sub", "Div", "Mean"}
FUSED_OPS = {
    "Conv",
    "MatMul",
    "Gemm",
    "Split",
    "Add",
    "Mul",
    "Relu",
    "Sigmoid",
    "Clip",
    "HardSigmoid",
    "Transpose",
    "Reshape",
    "LayerNormalization",
    "Softmax",
    "Erf",
    "Div",
    "Sub",
    "Pow",
    "Sqrt",
    "ReduceMean",
    "Tanh",
    "Concat",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "com.microsoft::FusedConv",
    "com.microsoft::FusedGemm",
    "com.microsoft::FusedMatMul",
    "com.microsoft::Gelu",
    "com.microsoft::FastGelu",
    "com.microsoft::BiasGelu",
    "com.microsoft::SkipLayerNormalization",
    "com.microsoft::Attention",
    "com.microsoft::MultiHeadAttention",
    "com.microsoft::BiasSoftmax",
    "com.microsoft::QuickGelu",
    "com.microsoft::MatMulIntegerToFloat",
    "com.microsoft::DynamicQuantizeMatMul",
    "com.microsoft::EmbedLayerNormalization",
    "com.microsoft::BiasAdd",
    "com.microsoft::NhwcConv",
    "com.microsoft::QLinearConv",
    "com.microsoft::RotaryEmbedding",
    "com.microsoft::GroupQueryAttention",
}
"""Operators an optimizer may put in place of an equivalent region (plus the ordinary ops
such a region is made of). Selection and comparison operators are never among them."""
SHAPE_OPS = {
    "Shape",
    "Size",
    "Gather",
    "Slice",
    "Concat",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "ConstantOfShape",
    "Range",
    "Equal",
    "Where",
    "Expand",
    "ReduceProd",
    "Floor",
    "Ceil",
    "Max",
    "Min",
    "Neg",
    "Abs",
    "Identity",
    "Not",
    "If",
}
PARAMETER_SLOTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "Conv": (1, 2),
        "ConvTranspose": (1, 2),
        "Gemm": (0, 1, 2),
        "MatMul": (0, 1),
        "BatchNormalization": (1, 2, 3, 4),
        "InstanceNormalization": (1, 2),
        "LayerNormalization": (1, 2),
        "GroupNormalization": (1, 2),
        "LSTM": (1, 2, 3),
        "GRU": (1, 2, 3),
        "RNN": (1, 2, 3),
        "PRelu": (1,),
        "Gather": (0,),
        "Einsum": (0, 1, 2),
        "com.microsoft::FusedConv": (1, 2),
        "com.microsoft::FusedGemm": (0, 1, 2),
        "com.microsoft::FusedMatMul": (0, 1),
        "com.microsoft::SkipLayerNormalization": (2, 3, 4),
        "com.microsoft::Attention": (1, 2),
        "com.microsoft::EmbedLayerNormalization": (2, 3, 4, 5, 6),
    }.items()
}
"""Input slots of an operator that hold learned parameters (weights, biases, normalization
statistics, recurrent matrices, embedding tables)."""
ELEMENTWISE_AFFINE = {"Add", "Sub", "Mul", "Div"}
WEIGHT_RTOL = 1e-4
"""Relative tolerance (to the tensor's max |value|) for a derived weight to equal a stored one:
float32 rounding of the fused products, far below any edit that changes behaviour."""


@dataclass(frozen=True)
class NodeRef:
    name: str
    op: str
    scope: str = ""


@dataclass(frozen=True)
class Region:
    """A connected set of added (deployed) or removed (trusted) nodes and its boundary."""

    side: str
    """``deployed`` for added nodes, ``trusted`` for removed ones."""
    nodes: tuple[NodeRef, ...]
    kind: str
    """injected, pre-processing, post-processing, fusion, folding, unexplained."""
    reads_inputs: tuple[str, ...]
    taps: tuple[str, ...]
    """Original tensors (trusted names) the region reads."""
    writes_into: tuple[str, ...]
    """Original tensors (trusted names) the region's outputs stand in for."""
    merge_ops: tuple[str, ...]
    merge_nodes: tuple[str, ...]
    reason: str
    tree: str = ""
    replaces: tuple[NodeRef, ...] = ()
    """For a fusion: the removed nodes this region stands in for."""

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(sorted({n.op for n in self.nodes}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "kind": self.kind,
            "nodes": [n.name for n in self.nodes[:200]],
            "n_nodes": len(self.nodes),
            "ops": list(self.ops),
            "reads_inputs": list(self.reads_inputs),
            "taps": list(self.taps[:50]),
            "writes_into": list(self.writes_into),
            "merge_ops": list(self.merge_ops),
            "merge_nodes": list(self.merge_nodes),
            "reason": self.reason,
            "replaces": [n.name for n in self.replaces[:200]],
        }


@dataclass(frozen=True)
class ChangedNode:
    trusted: NodeRef
    deployed: NodeRef
    reason: str


@dataclass(frozen=True)
class WeightCheck:
    trusted: tuple[str, ...]
    deployed: tuple[str, ...]
    derivation: str
    max_rel_err: float | None
    """``None`` when the values could not be read (external data without a loader)."""
    ok: bool
    quantized: bool = False
    """Equal only within quantization rounding: the structure is equivalent, but the
    weights changed, which is the claims analyzer's business (``--claim quantize:..``)."""
    round_trip: tuple[str, ...] = ()
    """Deployed scales / zero points of run-time round trips of float constants in it."""
    spread: float | None = None
    """For a failed check: the fraction of elements outside the tolerance."""
    rows: tuple[int, ...] = ()
    """For a failed check: indices along the first axis (output channels, rows) holding
    elements outside the tolerance."""


@dataclass(frozen=True)
class GraphDiff:
    n_trusted: int
    n_deployed: int
    n_matched: int
    regions: tuple[Region, ...]
    changed: tuple[ChangedNode, ...]
    weight_checks: tuple[WeightCheck, ...]
    explained: dict[str, str] = field(default_factory=dict)
    """Tensor keys (both sides) accounted for by verified equivalent rewrites."""
    trusted_notes: tuple[str, ...] = ()
    deployed_notes: tuple[str, ...] = ()
    io_changes: tuple[str, ...] = ()

    @property
    def added(self) -> tuple[NodeRef, ...]:
        return tuple(n for r in self.regions if r.side == "deployed" for n in r.nodes)

    @property
    def removed(self) -> tuple[NodeRef, ...]:
        return tuple(n for r in self.regions if r.side == "trusted" for n in r.nodes)

    @property
    def identical(self) -> bool:
        return not self.regions and not self.changed and not self.io_changes


def is_parameter(op: str, slot: int, c: Const) -> bool:
    """Whether constant ``c`` read at input ``slot`` of an ``op`` node is a model parameter
    (its values are the weight diff's business) rather than a structural constant.

    The role decides, not the name: a float tensor in a parameter slot (Conv weight and
    bias, BatchNormalization statistics, recurrent matrices, an embedding table), or a
    float vector in elementwise arithmetic (per-channel scale / shift of a layer: at least
    one axis longer than 1). Scalars in arithmetic, Clip bounds, comparison constants,
    exponents, shapes, axes, pads, slice bounds and integer constants are structure: a
    changed one changes what the graph computes, and is reported as a graph change."""
    if c.value_kind() != "f":
        return False
    if slot in PARAMETER_SLOTS.get(op, ()):
        return op != "Gather" or len(c.shape) >= 2  # a float lookup table, not indices
    if op in ELEMENTWISE_AFFINE:
        return any(dim > 1 for dim in c.shape)
    return False


def _ref(n: Node) -> NodeRef:
    return NodeRef(n.name, n.op, n.scope)


def _fingerprint(c: Any) -> str:
    """A cheap value fingerprint of a constant (a strided sample, 4 significant digits):
    tells apart weights of equal shape without hashing them whole."""
    v = c.value()
    if v is None:
        return "?"
    flat = np.asarray(v).reshape(-1)
    sample = flat[:: max(1, flat.size // 64)][:64]
    if sample.dtype.kind == "f":
        return ",".join(f"{x:.4g}" for x in sample.astype(np.float64))
    return ",".join(str(x) for x in sample.tolist())
