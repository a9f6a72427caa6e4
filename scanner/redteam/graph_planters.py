"""Planters of graph attacks (trigger branches in image and token models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scanner.redteam import groundtruth as gt
from scanner.redteam.io import ModelCopy
from scanner.redteam.plan import Context, NotApplicableError, Plan, Planter

# -------------------------------------------------------------------- graph attacks


def _image_graph(kind: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam import graph as rg

        model = copy.onnx_model()
        x = _graph_input(model)
        if len(x.shape) != 4:
            raise NotApplicableError(f"{kind} needs an image input [N, C, H, W]")
        n_classes = _n_classes(copy, model)
        fns = {
            "shadowlogic": rg.inject_shadowlogic,
            "trojannet": rg.inject_trojannet,
            "deeppayload": rg.inject_deeppayload_blend,
            "parameter-free": rg.inject_parameter_free_path,
        }
        target = int(ctx.rng().integers(n_classes))
        kwargs: dict[str, Any] = {"value": ctx.strength, "target": target, "n_classes": n_classes}
        if kind != "shadowlogic":
            kwargs["seed"] = ctx.seed
        bad, truth = fns[kind](model, **kwargs)
        patch = 6 if kind == "shadowlogic" else 4
        verification = gt.verify_image_trigger(
            model, bad, x, patch=patch, value=ctx.strength, target=target, seed=ctx.seed
        )
        return Plan(
            onnx_model=bad,
            nodes=truth.added_nodes,
            details={"trigger": truth.trigger, "target": target, "merge_node": truth.merge_node},
            verification=verification,
        )

    return run


def _token_trigger(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.graph import inject_token_trigger

    model = copy.onnx_model()
    x = _graph_input(model)
    if x.elem_type not in (6, 7):  # INT32, INT64
        raise NotApplicableError("the token trigger needs an integer token-id input")
    residual, hidden = _residual_after_embedding(model, x.name)
    rng = ctx.rng()
    vocab = _embedding_rows(model, x.name)
    token = int(rng.integers(1, max(2, vocab)))
    direction = rng.standard_normal(hidden)
    direction /= np.linalg.norm(direction)
    bad, truth = inject_token_trigger(
        model,
        input_name=x.name,
        residual=residual,
        token=token,
        direction=direction,
        scale=ctx.strength,
    )
    verification = gt.verify_token_trigger(model, bad, x, token=token, vocab=vocab, seed=ctx.seed)
    return Plan(
        onnx_model=bad,
        nodes=truth.added_nodes,
        details={"trigger": truth.trigger, "token": token, "residual": residual},
        verification=verification,
    )


def _embedding_gather(model: Any, ids: str) -> Any:
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if (
            node.op_type == "Gather"
            and len(node.input) == 2
            and node.input[1] == ids
            and node.input[0] in inits
            and len(inits[node.input[0]].dims) == 2
        ):
            return node, inits[node.input[0]]
    raise NotApplicableError("no embedding lookup (Gather of a 2-D table by the token ids)")


def _residual_after_embedding(model: Any, ids: str) -> tuple[str, int]:
    """The embedding output ``[batch, seq, hidden]``: where a token trigger adds its
    vector (the first value of the residual stream)."""
    import onnx

    node, table = _embedding_gather(model, ids)
    value = node.output[0]
    if table.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        value = _first_dequantized(model, value)
    return value, int(table.dims[1])


def _first_dequantized(model: Any, value: str) -> str:
    """A quantized table: the residual stream starts at the first DequantizeLinear output
    on the embedding's data path that real computation reads (not only ``Shape``)."""
    nodes = list(model.graph.node)
    frontier, seen = [value], set()
    while frontier:
        v = frontier.pop(0)
        if v in seen:
            continue
        seen.add(v)
        for n in nodes:
            if v not in n.input or n.op_type == "Shape":
                continue
            if n.op_type == "DequantizeLinear":
                out = n.output[0]
                if any(out in m.input and m.op_type != "Shape" for m in nodes):
                    return out
            elif n.op_type in ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"):
                frontier.append(n.output[0])
    raise NotApplicableError("the embedding table is quantized and never dequantized")


def _embedding_rows(model: Any, ids: str) -> int:
    return int(_embedding_gather(model, ids)[1].dims[0])


@dataclass(frozen=True)
class _Input:
    name: str
    elem_type: int
    shape: tuple[int | str, ...]


def _graph_input(model: Any) -> _Input:
    inits = {i.name for i in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            dims = tuple(d.dim_value or d.dim_param or "?" for d in i.type.tensor_type.shape.dim)
            return _Input(i.name, i.type.tensor_type.elem_type, dims)
    raise NotApplicableError("the graph has no data input")


def _n_classes(copy: ModelCopy, model: Any) -> int:
    out = model.graph.output[0].type.tensor_type.shape.dim
    if len(out) == 2 and out[1].dim_value:
        return int(out[1].dim_value)
    return 2
