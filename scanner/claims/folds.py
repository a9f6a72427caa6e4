"""BatchNormalization (and per-channel Add / Mul) folded into the convolution before
quantization.

onnxruntime's quantization pre-processing (``quant_pre_process``, the step its docs ask
for) and most exporters fold ``Conv -> BatchNormalization`` into one Conv before the
weights are quantized:

    W' = W * s,   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

per output channel. The quantized weight then comes from ``W'``, not from any stored
trusted tensor, and a quantization claim is re-derived from ``W'`` (and the int32 bias
from ``b'``) computed here from the trusted graph's own Conv and BatchNormalization,
with the epsilon the node states. Only pairs where the deployed graph has no
BatchNormalization on that convolution any more are considered by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scanner.artifact import Artifact


@dataclass(frozen=True)
class ConvFold:
    weight: str
    """The trusted convolution weight."""
    sources: tuple[str, ...]
    """Every trusted tensor the folded values come from (weight, bias, BatchNorm's four)."""
    folded_weight: np.ndarray
    folded_bias: np.ndarray
    eps: float
    bias: str
    """The trusted tensor the folded bias is named after: the conv's bias, else the first
    folded shift (BatchNorm's beta, the Add's constant), else the weight."""


def conv_batchnorm_folds(trusted: Artifact) -> dict[str, ConvFold]:
    """Trusted convolutions followed by per-channel operations an optimizer folds into
    them (``BatchNormalization``; ``Add`` / ``Mul`` of a per-channel constant, as
    onnxruntime's ConvAddFusion and ConvMulFusion do), each read only by the next; by
    convolution weight name."""
    model = trusted.graph.model if trusted.graph is not None else None
    if model is None:
        return {}
    stored = trusted.tensors
    readers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    out: dict[str, ConvFold] = {}
    for conv in model.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in stored:
            continue
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if bias and bias not in stored:
            continue
        w = trusted.to_float(conv.input[1]).astype(np.float64)
        channels = w.shape[0]
        scale = np.ones(channels)
        shift = (
            trusted.to_float(bias).astype(np.float64).reshape(-1) if bias else np.zeros(channels)
        )
        sources = [conv.input[1], *((bias,) if bias else ())]
        eps = 0.0
        bias_name = bias
        tensor, folded = conv.output[0], 0
        while len(readers.get(tensor, [])) == 1:
            step = readers[tensor][0]
            if step.op_type == "BatchNormalization" and step.input[0] == tensor:
                params = list(step.input[1:5])
                if len(params) != 4 or any(p not in stored for p in params):
                    break
                eps = next((float(a.f) for a in step.attribute if a.name == "epsilon"), 1e-5)
                gamma, beta, mean, var = (
                    trusted.to_float(p).astype(np.float64).reshape(-1) for p in params
                )
                if var.size != channels or np.any(var + eps <= 0):
                    break
                s = gamma / np.sqrt(var + eps)
                scale, shift = scale * s, (shift - mean) * s + beta
                sources += params
                bias_name = bias_name or params[1]
            elif step.op_type in ("Add", "Mul") and len(step.input) == 2:
                other = step.input[1] if step.input[0] == tensor else step.input[0]
                found = _channel_constant(trusted, other, producer, channels)
                if found is None:
                    break
                value, names = found
                if step.op_type == "Add":
                    shift = shift + value
                    bias_name = bias_name or names[0]
                else:
                    scale, shift = scale * value, shift * value
                sources += names
            else:
                break
            tensor, folded = step.output[0], folded + 1
        if not folded:
            continue
        folded_w = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        out[conv.input[1]] = ConvFold(
            conv.input[1],
            tuple(dict.fromkeys(sources)),
            folded_w,
            shift.astype(np.float32),
            eps,
            bias_name or conv.input[1],
        )
    return out


def _channel_constant(
    trusted: Artifact, name: str, producer: dict[str, Any], channels: int
) -> tuple[np.ndarray, list[str]] | None:
    """A stored constant (or a Reshape / Unsqueeze of one) that broadcasts one value per
    channel of an ``[N, C, ...]`` convolution output (shape ``[1, C, 1, 1]``,
    ``[C, 1, 1]`` or a scalar), as a ``[C]`` vector with the stored tensors it reads."""
    names: list[str] = []
    shape: tuple[int, ...] | None = None
    node = producer.get(name)
    if node is not None:
        if node.op_type not in ("Reshape", "Unsqueeze", "Identity") or not node.input:
            return None
        if node.op_type == "Reshape":
            if len(node.input) < 2 or node.input[1] not in trusted.tensors:
                return None
            shape = tuple(int(x) for x in trusted.to_float(node.input[1]).reshape(-1))
        name = node.input[0]
        if name in producer:
            return None
    if name not in trusted.tensors:
        return None
    value = trusted.to_float(name).astype(np.float64)
    names.append(name)
    if shape is not None:
        if any(d < 0 for d in shape) or int(np.prod(shape)) != value.size:
            return None
        value = value.reshape(shape)
    elif node is not None and node.op_type == "Unsqueeze":
        return None  # its axes decide the layout: not read here
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0])), names
    dims = value.shape
    if value.size != channels or len(dims) < 3 or dims[-3] != channels:
        return None
    return value.reshape(-1), names


def deployed_conv_inputs(deployed: Artifact) -> dict[str, str]:
    """Bias codes -> weight codes of the same deployed convolution: QLinearConv's inputs
    8 and 3, or the DequantizeLinear nodes feeding a Conv's inputs 2 and 1 (QDQ)."""
    model = deployed.graph.model if deployed.graph is not None else None
    if model is None:
        return {}
    dequantized = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
    }
    pairs: dict[str, str] = {}
    for node in model.graph.node:
        ins = list(node.input)
        if node.op_type == "QLinearConv" and len(ins) > 8 and ins[8]:
            pairs[ins[8]] = ins[3]
        elif node.op_type == "Conv" and len(ins) > 2 and ins[2] in dequantized:
            weight = dequantized.get(ins[1])
            if weight is not None:
                pairs[dequantized[ins[2]]] = weight
    return pairs


def batchnorm_remains(deployed: Artifact, weight_codes: str) -> bool:
    """Whether the deployed convolution reading ``weight_codes`` still feeds a
    BatchNormalization (then nothing was folded)."""
    model = deployed.graph.model if deployed.graph is not None else None
    if model is None:
        return False
    dequantized = {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] == weight_codes
    }
    convs = [
        n
        for n in model.graph.node
        if (n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in dequantized)
        or (n.op_type == "QLinearConv" and len(n.input) > 3 and n.input[3] == weight_codes)
    ]
    outputs = {o for n in convs for o in n.output}
    return any(
        n.op_type == "BatchNormalization" and n.input[0] in outputs for n in model.graph.node
    )
