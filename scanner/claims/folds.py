"""BatchNormalization (and per-channel Add / Mul) folded into the convolution before
quantization.

onnxruntime's quantization pre-processing (``quant_pre_process``, the step its docs ask
for) and most exporters fold ``Conv -> BatchNormalization`` into one Conv before the
weights are quantized:

    W' = W * s,   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

per output channel. The quantized weight then comes from ``W'``, not from any stored
trusted tensor, and a quantization claim is re-derived from ``W'`` (and the int32 bias
from ``b'``): the trusted graph's canonical form folds exactly these (the same values
the graph analyzer compares), and the deployed graph says which convolution reads which
bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanner.artifact import Artifact


@dataclass(frozen=True)
class ConvFold:
    weight: str
    """The trusted convolution weight."""
    sources: tuple[str, ...]
    """Every trusted tensor the folded values come from (weight first, then the conv's
    bias and the folded operations' parameters)."""
    folded_weight: np.ndarray
    folded_bias: np.ndarray

    @property
    def bias(self) -> str:
        """The trusted tensor a folded bias is reported under: the conv's bias, else the
        first parameter folded in."""
        return self.sources[1] if len(self.sources) > 1 else self.weight


def conv_folds(trusted: Artifact) -> dict[str, ConvFold]:
    """The trusted convolutions the canonical graph folded per-channel operations into
    (``scanner.graph.fold``: BatchNormalization, Add / Mul of a per-channel constant),
    by convolution weight name, with the folded weight and bias as float32."""
    from scanner.graph.of_artifact import canonical_of

    g = canonical_of(trusted)
    if g is None:
        return {}
    out: dict[str, ConvFold] = {}
    for node in g.nodes.values():
        if node.op != "Conv" or len(node.inputs) < 3:
            continue
        w, b = g.consts.get(node.inputs[1]), g.consts.get(node.inputs[2])
        if w is None or b is None or w.derivation != "conv-fold" or not w.sources:
            continue
        weight = w.sources[0]
        w_value, b_value = w.value(), b.value()
        if weight not in trusted.tensors or w_value is None or b_value is None:
            continue
        out[weight] = ConvFold(
            weight,
            tuple(dict.fromkeys((*w.sources, *b.sources))),
            np.asarray(w_value, dtype=np.float32),
            np.asarray(b_value, dtype=np.float32).reshape(-1),
        )
    return out


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
