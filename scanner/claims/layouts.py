"""Find integer-quantized weights in a deployed artifact and the float tensor each replaces.

Recognized layouts (``docs/claims.md`` has the table):

* suffix families, as written by onnxruntime (``W_quantized`` + ``W_scale`` +
  ``W_zero_point``), by compressed-tensors / llm-compressor and most safetensors int8
  exporters (``x.weight`` I8 + ``x.weight_scale`` [+ ``x.weight_zero_point``]), and the
  ``x.weight`` + ``x.scales`` / ``x.scale`` / ``x.zeros`` / ``x.zp`` variants;
* ONNX graph references: ``DequantizeLinear``, ``QLinearConv``, ``QLinearMatMul``,
  ONNX Runtime's ``QGemm``, ``MatMulInteger``, ``ConvInteger`` and ``DynamicQuantizeLSTM``
  name their weight, scale and zero-point inputs explicitly, and the node type fixes the
  channel axis; the int32 bias of ``QLinearConv`` / ``QGemm`` has no stored scale of its
  own, its scale being the input's times the weight's;
* weight-only int8 dequantized in the graph by hand: integer codes -> ``Cast`` to float
  [-> ``Sub`` zero point] -> ``Mul`` by a float scale initializer (``X_q`` + ``X_scale``
  as some vendors export); the scale's shape (e.g. ``[rows, 1]``) gives the axis.

The per-channel axis is the axis whose length equals the number of scales; a graph node
that states it (``axis`` attribute, or QLinearMatMul's output columns) decides when
several axes fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scanner.artifact import Artifact

CODE_DTYPES = {
    "I8": (-128, 127),
    "U8": (0, 255),
    "I32": (-(2**31), 2**31 - 1),
    "I4": (-8, 7),
    "U4": (0, 15),
    "I16": (-(2**15), 2**15 - 1),
    "U16": (0, 2**16 - 1),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")

_CODE_SUFFIXES = ("_quantized", ".qweight", "_qweight", ".weight_quantized", "_q", "_int8")
_SCALE_SUFFIXES = ("_scale", ".scale", "_scales", ".scales", ".weight_scale", "_weight_scale")
_ZP_SUFFIXES = (
    "_zero_point",
    ".zero_point",
    "_zp",
    ".zp",
    ".zeros",
    ".weight_zero_point",
    "_weight_zero_point",
)


@dataclass(frozen=True)
class QuantGroup:
    """One quantized weight: codes, scale, optional zero point, and its float origin."""

    codes: str
    scale: str
    zero_point: str | None
    base: str
    """The name the float weight most likely had (may be absent from the trusted side)."""
    axis_hint: int | None = None
    """Channel axis stated by the graph (None: infer from shapes)."""
    op: str = ""
    """The graph operator that consumes the codes, if known."""
    scale_factors: tuple[str, ...] = ()
    """Further tensors the scale is multiplied by (an int32 bias of a QOperator node is
    stored at input scale x weight scale, with no scale tensor of its own)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.codes, self.scale, self.zero_point, *self.scale_factors) if n)


def group_scale(deployed: Artifact, group: QuantGroup) -> np.ndarray:
    """The group's scale as float32, multiplied out as the runtime does."""
    scale = deployed.to_float(group.scale).astype(np.float32).reshape(-1)
    for factor in group.scale_factors:
        scale = (scale * deployed.to_float(factor).astype(np.float32).reshape(-1)).astype(
            np.float32
        )
    return scale


def _stems(name: str) -> list[str]:
    """Candidate float names for a codes tensor (most specific first)."""
    out = []
    for suf in _CODE_SUFFIXES:
        if name.endswith(suf):
            stem = name[: -len(suf)]
            out.append(
                stem + ".weight"
                if suf.startswith(".") and "weight" not in stem[-7:] and suf != ".weight_quantized"
                else stem
            )
            out.append(stem)
    out.append(name)
    return out


def _sibling(tensors: Mapping[str, object], name: str, suffixes: tuple[str, ...]) -> str | None:
    bases = [name]
    for suf in _CODE_SUFFIXES:
        if name.endswith(suf):
            bases.append(name[: -len(suf)])
    if name.endswith(".weight"):
        bases.append(name[: -len(".weight")])
    for base in bases:
        for suf in suffixes:
            if base + suf in tensors and base + suf != name:
                return base + suf
    return None


class _Inputs(NamedTuple):
    """Which inputs of an operator are a quantized weight's codes, scale, zero point and
    scale factors, and the channel axis of the codes (None: from the node)."""

    codes: int
    scale: int
    zero_point: int | None
    axis: int | None
    factors: tuple[int, ...] = ()


_GRAPH_WEIGHT_INPUTS: dict[str, list[_Inputs]] = {
    "DequantizeLinear": [_Inputs(0, 1, 2, None)],
    "QLinearConv": [_Inputs(3, 4, 5, 0), _Inputs(8, 1, None, 0, (4,))],
    "QLinearMatMul": [_Inputs(3, 4, 5, 1)],
    "QGemm": [_Inputs(3, 4, 5, None), _Inputs(6, 1, None, 0, (4,))],
    "DynamicQuantizeLSTM": [_Inputs(1, 8, 9, 0), _Inputs(2, 10, 11, 0)],
}


def find_groups(deployed: Artifact) -> list[QuantGroup]:
    """Every quantized weight of ``deployed`` that has a stored scale."""
    tensors = deployed.tensors
    groups: dict[str, QuantGroup] = {}
    if deployed.graph is not None:
        for node in deployed.graph.nodes:
            for spec in _GRAPH_WEIGHT_INPUTS.get(node.op_type, []):
                ins = node.inputs
                ci, si, zi = spec.codes, spec.scale, spec.zero_point
                if len(ins) <= max(ci, si, *spec.factors):
                    continue
                factors = tuple(ins[f] for f in spec.factors)
                if any(t not in tensors for t in (ins[ci], ins[si], *factors)):
                    continue
                if tensors[ins[ci]].dtype.name not in CODE_DTYPES:
                    continue
                zp = ins[zi] if zi is not None and len(ins) > zi and ins[zi] in tensors else None
                axis = spec.axis
                if node.op_type == "DequantizeLinear":
                    axis = _attr_axis(deployed, node.name, default=1)
                elif node.op_type == "QGemm" and axis is None:
                    axis = 0 if _attr_int(deployed, node.name, "transB", 0) else 1
                groups[ins[ci]] = QuantGroup(
                    ins[ci], ins[si], zp, _stems(ins[ci])[0], axis, node.op_type, factors
                )
            if node.op_type in ("MatMulInteger", "ConvInteger") and len(node.inputs) > 1:
                code = node.inputs[1]
                if code in tensors and code not in groups:
                    scale = _sibling(tensors, code, _SCALE_SUFFIXES)
                    zp = (
                        node.inputs[3]
                        if len(node.inputs) > 3 and node.inputs[3] in tensors
                        else _sibling(tensors, code, _ZP_SUFFIXES)
                    )
                    if scale:
                        axis = 0 if node.op_type == "ConvInteger" else 1
                        groups[code] = QuantGroup(
                            code, scale, zp, _stems(code)[0], axis, node.op_type
                        )
        for g in _cast_mul_groups(deployed):
            groups.setdefault(g.codes, g)
    for name, info in tensors.items():
        if name in groups or info.dtype.name not in CODE_DTYPES or not info.shape:
            continue
        scale = _sibling(tensors, name, _SCALE_SUFFIXES)
        if scale is None or tensors[scale].dtype.name not in FLOAT_DTYPES:
            continue
        zp = _sibling(tensors, name, _ZP_SUFFIXES)
        groups[name] = QuantGroup(name, scale, zp, _stems(name)[0])
    # A zero point or scale is never itself a weight.
    side = {n for g in groups.values() for n in (g.scale, g.zero_point, *g.scale_factors) if n}
    return [g for n, g in sorted(groups.items()) if n not in side]


def _cast_mul_groups(deployed: Artifact) -> list[QuantGroup]:
    """Codes -> Cast -> [Sub zero point ->] Mul scale, all initializers."""
    tensors = deployed.tensors
    graph = deployed.graph
    assert graph is not None
    consumers: dict[str, list] = {}
    for node in graph.nodes:
        for i in node.inputs:
            consumers.setdefault(i, []).append(node)
    out: list[QuantGroup] = []
    for node in graph.nodes:
        if node.op_type != "Cast" or not node.inputs or not node.outputs:
            continue
        code = node.inputs[0]
        info = tensors.get(code)
        if info is None or info.dtype.name not in ("I8", "U8", "I4", "U4", "I16", "U16"):
            continue
        value, zp = node.outputs[0], None
        nxt = consumers.get(value, [])
        if len(nxt) == 1 and nxt[0].op_type == "Sub" and nxt[0].inputs[0] == value:
            other = nxt[0].inputs[1] if len(nxt[0].inputs) > 1 else ""
            if other in tensors:
                zp, value = other, nxt[0].outputs[0]
                nxt = consumers.get(value, [])
        if len(nxt) != 1 or nxt[0].op_type != "Mul":
            continue
        scale = next((i for i in nxt[0].inputs if i != value and i in tensors), None)
        if scale is None or tensors[scale].dtype.name not in FLOAT_DTYPES:
            continue
        s_shape = tensors[scale].shape
        axis = None
        if len(s_shape) == len(info.shape):
            wide = [a for a, n in enumerate(s_shape) if n > 1]
            axis = wide[0] if len(wide) == 1 else None
        out.append(QuantGroup(code, scale, zp, _stems(code)[0], axis, "Cast+Mul"))
    return out


def _attr_axis(art: Artifact, node_name: str, default: int) -> int:
    return _attr_int(art, node_name, "axis", default)


def _attr_int(art: Artifact, node_name: str, attr: str, default: int) -> int:
    model = art.graph.model if art.graph is not None else None
    if model is None:
        return default
    from scanner.formats.onnx_reader import iter_all_graphs

    for _, graph in iter_all_graphs(model):
        for index, node in enumerate(graph.node):
            if (node.name or f"{node.op_type}_{index}") == node_name:
                for a in node.attribute:
                    if a.name == attr:
                        return int(a.i)
                return default
    return default


def trusted_origin(group: QuantGroup, trusted: Artifact, used: set[str]) -> str | None:
    """The trusted float tensor a group replaces: by name first, then by a unique shape."""
    for cand in _stems(group.codes):
        info = trusted.tensors.get(cand)
        if info is not None and info.dtype.name in FLOAT_DTYPES and cand not in used:
            return cand
    return None
