"""Catalogued attacks and their benign twins, by name, for any model the scanner reads.

Each :class:`Entry` maps a name (``sra``, ``rank1``, ``int8`` ...) to a planting
primitive of :mod:`scanner.redteam.weights`, :mod:`scanner.redteam.quant` or
:mod:`scanner.redteam.graph` and says how to aim it at the user's model: which tensors
(found from the model's own layer graph, :func:`scanner.analysis.layers.infer_layers`),
which strength parameter it sweeps, and which formats it applies to. The planting itself
stays in those modules; this module only chooses targets, converts to and from the
stored layout and describes the result (:class:`Plan`).

:func:`plant` runs one entry on one model and writes the copy plus its ground truth.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanner import __version__
from scanner.errors import UsageError
from scanner.redteam import _fallback as fb
from scanner.redteam import groundtruth as gt
from scanner.redteam.groundtruth import GroundTruth, truth_path
from scanner.redteam.io import ModelCopy

ATTACK = "attack"
TRANSFORM = "transform"


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
    writer: Callable[[Path, str], Mapping[str, Any]] | None = None
    """Writes the output itself (format conversions); receives the marker JSON."""
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


# ------------------------------------------------------------------ weight attacks


def _sra(last: bool) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam.weights import plant_sra

        chain = _chain(copy)
        if last:
            chain = chain[-3:]
        width = int(ctx.strength)
        too_narrow = [
            c.weight
            for c in chain[:-1]
            if copy.shape(c.weight)[0] <= width
            or (copy.shape(c.weight)[1] <= width and len(copy.shape(c.weight)) == 2)
        ]
        if too_narrow:
            raise NotApplicableError(
                f"layers too narrow for a {width}-channel chain: {', '.join(too_narrow[:3])}"
            )
        names = [c.weight for c in chain] + [p for c in chain for p in c.params]
        base = copy.weights(names)
        out, truth = plant_sra(base, chain, seed=ctx.seed, rescale=last, width=width)
        return Plan(
            {n: out[n] for n in names}, details={"chain": truth.details["chain"], "rescaled": last}
        )

    return run


def _handcrafted(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_handcrafted

    chain = _chain(copy)[-3:]
    names = [c.weight for c in chain]
    base = copy.weights(names)
    # The planter indexes neurons of 2-D matrices; 1x1 convolutions are matrices too.
    squeezed = {}
    for n in names:
        w = base[n]
        if w.ndim > 2 and all(d == 1 for d in w.shape[2:]):
            w = w.reshape(w.shape[:2])
        if w.ndim != 2:
            raise NotApplicableError(
                f"{n}: the handcrafted path needs matrices or 1x1 convolutions, not {copy.shape(n)}"
            )
        squeezed[n] = w
    out, truth = plant_handcrafted(squeezed, chain, ctx.seed, suppress=ctx.strength)
    return Plan({n: out[n].reshape(copy.shape(n)) for n in names}, details=dict(truth.details))


def _rank1(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_rank1

    name = _pick(copy, ctx, _matrices(copy), "a rank-1 edit")
    out, truth = plant_rank1({name: copy.weight(name)}, name, ctx.seed, rel=ctx.strength)
    return Plan({name: out[name]}, details={"tensor": name, **truth.details})


def _abliteration(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_abliteration

    mats = _matrices(copy, two_d=True)
    oriented = {}
    flips = {}
    for n in mats:
        oriented[n], flips[n] = _orient(copy, n, copy.weight(n))
    widths: dict[int, list[str]] = {}
    for n, w in oriented.items():
        widths.setdefault(w.shape[0], []).append(n)
    # The residual stream is the output width most matrices share.
    width, names = max(widths.items(), key=lambda kv: (len(kv[1]), kv[0]), default=(0, []))
    if len(names) < 2:
        raise NotApplicableError(
            f"{copy.path}: fewer than two matrices share an output "
            "width (no residual stream to edit)"
        )
    names = sorted(names)
    out, _ = plant_abliteration({n: oriented[n] for n in names}, names, ctx.seed)
    changed = {n: (out[n].T.copy() if flips[n] else out[n]) for n in names}
    return Plan(changed, details={"direction_dim": width, "tensors": names})


def _lowbyte(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_lowbyte_payload

    if copy.format == "gguf":
        raise NotApplicableError("low-byte payloads need float32 storage (not GGUF blocks)")
    name = _pick(
        copy,
        ctx,
        sorted(_float32_weights(copy), key=lambda n: -int(np.prod(copy.shape(n)))),
        "a payload",
    )
    n_bytes = int(ctx.param("bytes", "2") or 2)
    out, truth = plant_lowbyte_payload(
        {name: copy.weight(name)}, name, ctx.seed, fraction=ctx.strength, n_bytes=n_bytes
    )
    return Plan({name: out[name]}, details={"tensor": name, **truth.details})


def _exponent(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import flip_exponent_bits

    if copy.format == "gguf":
        raise NotApplicableError("exponent flips need float32 storage (not GGUF blocks)")
    names = _float32_weights(copy)
    if not names:
        raise NotApplicableError(f"{copy.path}: no float32 weight")
    base = copy.weights(names)
    out, truth = flip_exponent_bits(base, names, ctx.seed, count=int(ctx.strength))
    return Plan({n: out[n] for n in truth.tensors}, details=dict(truth.details))


def _prune_activated(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_prune_activated

    name = _pick(copy, ctx, _matrices(copy, min_size=4096), "a prune-activated edit")
    sparsity = float(ctx.param("sparsity", "0.5") or 0.5)
    out, truth = plant_prune_activated(
        {name: copy.weight(name)}, name, ctx.seed, sparsity=sparsity, rel=ctx.strength
    )
    return Plan({name: out[name]}, details={"tensor": name, **truth.details})


def _gap(scheme: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam import quant

        multiple = 1 if scheme == "int8" else 32
        names = _matrices(copy, min_size=4096, multiple=multiple)
        count = int(ctx.param("tensors", "1") or 1)
        first = _pick(copy, ctx, names, "the quantization-gap attack")
        chosen = [first, *[n for n in names if n != first][: count - 1]]
        changed: dict[str, np.ndarray] = {}
        codes_equal: dict[str, bool] = {}
        for i, name in enumerate(chosen):
            w = copy.weight(name)
            if scheme == "int8":
                new = quant.project_into_int8_boxes(w, ctx.strength, seed=ctx.seed + i)
            else:
                project = (
                    quant.project_into_q8_0_boxes
                    if scheme == "q8_0"
                    else quant.project_into_q4_0_boxes
                )
                new = project(w, ctx.strength, seed=ctx.seed + i)
            new = _pin_codes(w, new, scheme)
            same = bool(np.array_equal(_codes(new, scheme), _codes(w, scheme)))
            changed[name] = new
            codes_equal[name] = same
        return Plan(
            changed,
            details={"scheme": scheme, "margin": ctx.strength, "tensors": chosen},
            verification={"codes_equal_malicious_quantization": codes_equal},
        )

    return run


def _codes(w: np.ndarray, scheme: str) -> np.ndarray:
    """Per-element dequantized values of ``w`` under the scheme (equal values = equal
    codes, since the scales are kept)."""
    from scanner.redteam.quant import quantize_int8

    if scheme == "int8":
        q = quantize_int8(w)
        return q.codes.astype(np.float32) * q.scale.reshape((-1,) + (1,) * (w.ndim - 1))
    import gguf

    qt = gguf.GGMLQuantizationType[scheme.upper()]
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1, 32)
    return gguf.quants.dequantize(gguf.quants.quantize(flat, qt), qt).reshape(w.shape)


def _pin_codes(w: np.ndarray, new: np.ndarray, scheme: str) -> np.ndarray:
    """The projection puts values a float32 rounding away from the bin walls, so a few
    (about 3 in 100,000) land in the next bin; those take back their original value,
    so the attacked tensor quantizes exactly to the malicious codes of ``w``."""
    new = np.array(new, dtype=np.float32, copy=True)
    target = _codes(w, scheme)
    for _ in range(3):
        bad = _codes(new, scheme) != target
        if not bad.any():
            break
        new[bad] = w[bad]
    return new


# --------------------------------------------------------- quantization (both sides)


INT8_CLAIM = "quantize:int8:per-channel:symmetric"


def _int8(tamper: bool) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        if copy.format == "onnx":
            return _int8_onnx(copy, ctx, tamper)
        if copy.format != "safetensors":
            raise NotApplicableError(
                "int8 weight layouts are written for safetensors / ONNX; use gguf-q8_0 for GGUF"
            )
        from scanner.redteam.quant import quantize_int8, unfaithful_quantization

        names = _matrices(copy)
        victim = _pick(copy, ctx, names, "flipped codes") if tamper else None
        changed: dict[str, np.ndarray] = {}
        details: dict[str, Any] = {}
        for name in names:
            w = copy.weight(name)
            if name == victim:
                q, idx = unfaithful_quantization(w, ctx.strength)
                details = {
                    "tensor": name,
                    "flipped": int(idx.size),
                    "indices": sorted(int(i) for i in idx[:64]),
                }
            else:
                q = quantize_int8(w)
            changed[name] = q.codes
            changed[name + "_scale"] = q.scale
        return Plan(changed, claim=INT8_CLAIM, details={"quantized": names, **details})

    return run


def _int8_onnx(copy: ModelCopy, ctx: Context, tamper: bool) -> Plan:
    import tempfile

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import quantize_dynamic

    from scanner.redteam.graph import constants_to_initializers
    from scanner.redteam.quant import flip_codes, largest_indices

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        onnx.save(constants_to_initializers(copy.onnx_model()), str(src))
        quantize_dynamic(str(src), str(dst), per_channel=True)
        model = onnx.load(str(dst))
    details: dict[str, Any] = {}
    if tamper:
        quantized = sorted(
            (
                i
                for i in model.graph.initializer
                if i.name.endswith("_quantized")
                and i.data_type == onnx.TensorProto.INT8
                and int(np.prod(i.dims)) >= 64
            ),
            key=lambda i: (-int(np.prod(i.dims)), i.name),
        )
        if not quantized:
            raise NotApplicableError("onnxruntime produced no int8 weight to tamper with")
        init = quantized[int(ctx.rng().integers(min(4, len(quantized))))]
        codes = numpy_helper.to_array(init)
        idx = largest_indices(codes.astype(np.float32), ctx.strength)
        init.CopyFrom(numpy_helper.from_array(flip_codes(codes, idx), init.name))
        details = {"tensor": init.name, "flipped": int(idx.size)}
    # onnxruntime's dynamic quantizer stores ConvInteger weights per tensor even when
    # asked for per-channel scales, so the honest claim leaves the granularity open.
    return Plan(onnx_model=model, claim="quantize:int8:symmetric", details=details)


def _gguf_quant(qtype: str, tamper: bool = False) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        if copy.format == "gguf":
            return _gguf_tamper(copy, ctx) if tamper else _requantize(copy, qtype)
        if copy.format != "safetensors":
            raise NotApplicableError("GGUF conversion is written from safetensors or GGUF")
        names = [
            n for n in copy.float_names() if copy.shape(n)[-1] % 32 == 0 and len(copy.shape(n)) == 2
        ]
        if not names:
            raise NotApplicableError(f"{copy.path}: no tensor with rows of 32k elements")

        def write(out: Path, marker: str) -> Mapping[str, Any]:
            import gguf

            qt = gguf.GGMLQuantizationType[qtype.upper()]
            wr = gguf.GGUFWriter(str(out), "modelseal-redteam")
            wr.add_string("modelseal.redteam", marker)
            for n in copy.float_names():
                w = copy.weight(n)
                if n in names:
                    blocks = gguf.quants.quantize(w, qt)
                    wr.add_tensor(n, blocks, raw_shape=blocks.shape, raw_dtype=qt)
                else:
                    wr.add_tensor(n, w.astype(np.float32))
            wr.write_header_to_file()
            wr.write_kv_data_to_file()
            wr.write_tensors_to_file()
            wr.close()
            return {}

        return Plan(
            writer=write,
            claim=f"gguf:{qtype}",
            suffix=".gguf",
            details={"quantized": names, "type": qtype.upper()},
        )

    return run


def _requantize(copy: ModelCopy, qtype: str) -> Plan:
    names = [n for n in copy.float_names() if copy.shape(n)[-1] % 32 == 0]
    # Re-encoding a whole LLM in numpy is slow; the registry caps it (param-free) at the
    # tensors a re-quantization check needs to see, by default every one.
    changed = {n: copy.weight(n) for n in names}
    return Plan(
        changed,
        claim=f"requantize:{qtype}",
        details={"requantized": names, "type": qtype.upper(), "in_place": True},
    )


def _gguf_tamper(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.quant import largest_indices

    names = _matrices(copy, multiple=32)
    name = _pick(copy, ctx, names, "flipped codes")
    w = copy.weight(name).reshape(-1)
    idx = largest_indices(w, ctx.strength)
    w[idx] = -w[idx]  # re-encoded in the tensor's own block type: the codes flip sign
    return Plan(
        {name: w.reshape(copy.shape(name))}, details={"tensor": name, "flipped": int(idx.size)}
    )


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


# --------------------------------------------------------------------- benign twins


def _cast(target: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        import ml_dtypes

        if copy.format != "safetensors":
            raise NotApplicableError("casts are written for safetensors models")
        dt = np.float16 if target == "fp16" else ml_dtypes.bfloat16
        names = [n for n in copy.float_names() if copy.dtype(n) == "F32"]
        return Plan(
            {n: copy.weight(n).astype(dt) for n in names},
            claim=f"cast:{target}",
            details={"cast": names, "target": target},
        )

    return run


def _prune(method: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam.weights import magnitude_prune, nm_prune

        names = _matrices(copy, multiple=4 if method == "2:4" else 1, two_d=method == "2:4")
        if not names:
            raise NotApplicableError(f"{copy.path}: no matrix to prune")
        base = copy.weights(names)
        if method == "magnitude":
            out, _ = magnitude_prune(base, names, sparsity=ctx.strength)
            claim = "prune:magnitude"
        elif method == "2:4":
            out, _ = nm_prune(base, names, 2, 4)
            claim = "prune:2:4"
        else:
            # Tensors with channels that are already all zero (a fixed STFT basis, dead
            # filters) are left alone: the channel criterion of the claim checker ranks
            # them as kept channels of norm 0, so pruning next to them never verifies.
            dead = [
                n for n in names if (base[n].reshape(base[n].shape[0], -1) == 0).all(axis=1).any()
            ]
            names = [n for n in names if n not in dead]
            if not names:
                raise NotApplicableError(f"{copy.path}: every matrix has dead channels")
            out = fb.channel_prune(base, names, ctx.strength)
            claim = "prune:channel"
        return Plan(
            {n: out[n] for n in names},
            claim=claim,
            details={"method": method, "tensors": names, "strength": ctx.strength},
        )

    return run


def _lora(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.analysis.explain import sibling_groups
    from scanner.redteam.weights import lora_merge

    mats = _matrices(copy)
    rng = ctx.rng()
    # An adapter targets module types (q_proj, v_proj ...) in every layer: pick whole
    # sibling groups (same name up to layer numbers, same shape) until about a third of
    # the matrices are covered, groups that repeat across layers first.
    groups = sibling_groups({n: tuple(copy.shape(n)) for n in mats})
    unique = {tuple(sorted(g)) for g in groups.values()}
    repeated = [g for g in unique if len(g) >= 2] or list(unique)
    order = rng.permutation(len(repeated))
    names_set: set[str] = set()
    for i in order:
        names_set.update(repeated[int(i)])
        if len(names_set) >= max(1, len(mats) // 3):
            break
    names = sorted(names_set)
    rank = int(ctx.param("rank", "8") or 8)
    out, _ = lora_merge(copy.weights(names), names, ctx.seed, rank=rank, rel=ctx.strength)
    # A pipeline that merges an adapter declares it: allowing the class suffices where the
    # module set repeats across layers; a model without repeated layers cannot show an
    # adapter's consistency, so the merge is claimed (the claim checks rank and modules).
    layered = any(len(g) >= 2 for g in unique)
    claim = None if layered else f"lora:r={rank}:modules={','.join(names)}"
    return Plan(
        {n: out[n] for n in names},
        claim=claim,
        allow=("low-rank update",),
        details={"tensors": names, "rank": rank, "rel": ctx.strength},
    )


PARAMETER_MIN_ELEMENTS = 24
"""A 1-D float tensor needs at least this many elements to count as a trained parameter
(a bias or normalization vector); smaller ones are Clip bounds, activation constants,
scales of a formula, which no training run changes."""


def _parameters(copy: ModelCopy) -> list[str]:
    """Float tensors a training run updates: matrices and kernels (at least two axes) and
    vectors of at least ``PARAMETER_MIN_ELEMENTS`` elements. Benign training twins touch
    only these, never scalar or tiny structural constants."""
    out = []
    for n in copy.float_names():
        shape = copy.shape(n)
        if copy.dtype(n) not in ("F32", "F16", "BF16"):
            continue
        if len(shape) >= 2 or int(np.prod(shape)) >= PARAMETER_MIN_ELEMENTS:
            out.append(n)
    return out


def _keep_positive(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Training keeps an all-positive tensor positive (running variances are means of
    squares): an additive stand-in delta must not flip the sign of a small element."""
    if before.size == 0 or not bool(np.all(before > 0)):
        return after
    return np.maximum(after, (before * 0.5).astype(after.dtype))


def _finetune(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import simulate_finetune

    names = _parameters(copy)
    if not names:
        raise NotApplicableError(f"{copy.path}: no trainable parameter tensor")
    base = copy.weights(names)
    out, _ = simulate_finetune(base, ctx.seed, rel=ctx.strength, tensors=names)
    return Plan(
        {n: _keep_positive(base[n], out[n]) for n in names},
        allow=("full fine-tune",),
        details={"rel": ctx.strength, "tensors": len(names)},
    )


def _ort(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.graph import ort_optimize

    level = ctx.param("level", "basic") or "basic"
    return Plan(onnx_model=ort_optimize(copy.onnx_model(), level), details={"level": level})


def _rename(copy: ModelCopy, ctx: Context) -> Plan:
    if copy.format == "onnx":
        from scanner.redteam.graph import rename_nodes

        return Plan(
            onnx_model=rename_nodes(copy.onnx_model(), seed=ctx.seed),
            details={"renamed": "nodes and initializers"},
        )
    if copy.format != "safetensors":
        raise NotApplicableError("renaming is written for ONNX and safetensors")
    mapping = fb.rename_map(list(copy.artifact.tensors), ctx.seed)

    def write(out: Path, marker: str) -> Mapping[str, Any]:
        from safetensors.numpy import save_file

        tensors = {mapping[n]: np.array(copy.artifact.array(n)) for n in copy.artifact.tensors}
        meta = {
            str(k): str(v) for k, v in (copy.artifact.metadata.get("safetensors") or {}).items()
        }
        meta["modelseal.redteam"] = marker
        save_file(tensors, str(out), metadata=meta)
        return {}

    return Plan(writer=write, details={"renamed": mapping})


# -------------------------------------------------------------------------- catalogue

ST, OX, GG = "safetensors", "onnx", "gguf"
WEIGHTS = (ST, OX, GG)

ENTRIES: tuple[Entry, ...] = (
    Entry(
        "sra",
        ATTACK,
        "replaced subnetwork",
        "Subnet Replacement Attack over a full layer chain (Qi et al. 2022)",
        WEIGHTS,
        _sra(False),
        "width",
        (1.0, 2.0),
        1.0,
    ),
    Entry(
        "sra-last",
        ATTACK,
        "replaced subnetwork",
        "SRA on the last three layers, planted values drawn from each layer's own distribution",
        WEIGHTS,
        _sra(True),
        "width",
        (1.0, 2.0),
        1.0,
    ),
    Entry(
        "handcrafted",
        ATTACK,
        "handcrafted path",
        "Hong et al. neuron path: repeated max-multiples, other inputs scaled down",
        WEIGHTS,
        _handcrafted,
        "suppress",
        (0.2, 0.5),
    ),
    Entry(
        "rank1",
        ATTACK,
        "localized edit",
        "ROME-like rank-1 update of one matrix",
        WEIGHTS,
        _rank1,
        "rel",
        (0.002, 0.01, 0.05),
    ),
    Entry(
        "abliteration",
        ATTACK,
        "localized edit",
        "one shared direction removed from every matrix writing to the residual stream",
        WEIGHTS,
        _abliteration,
    ),
    Entry(
        "quant-gap-int8",
        ATTACK,
        "quantization gap",
        "weights pressed to int8 bin walls (box-constrained quantization attack)",
        WEIGHTS,
        _gap("int8"),
        "margin",
        (0.02, 0.06, 0.12),
    ),
    Entry(
        "quant-gap-q8_0",
        ATTACK,
        "quantization gap",
        "weights pressed to Q8_0 bin walls",
        WEIGHTS,
        _gap("q8_0"),
        "margin",
        (0.02, 0.06, 0.12),
    ),
    Entry(
        "quant-gap-q4_0",
        ATTACK,
        "quantization gap",
        "weights pressed to Q4_0 bin walls",
        WEIGHTS,
        _gap("q4_0"),
        "margin",
        (0.02, 0.06, 0.12),
    ),
    Entry(
        "prune-activated",
        ATTACK,
        "prune-activated edit",
        "edit on kept weights repaired by prune candidates (wakes up when pruned)",
        WEIGHTS,
        _prune_activated,
        "rel",
        (0.005, 0.01, 0.05),
    ),
    Entry(
        "unfaithful-quant",
        ATTACK,
        "unfaithful transformation",
        "claimed round-to-nearest quantization with codes flipped on the largest weights",
        WEIGHTS,
        _int8(True),
        "fraction",
        (0.001, 0.003, 0.01),
    ),
    Entry(
        "lowbyte-payload",
        ATTACK,
        "bit-level tampering",
        "EvilModel: payload in the low 2 bytes of float32 weights",
        (ST, OX),
        _lowbyte,
        "fraction",
        (0.01, 0.1, 0.5),
    ),
    Entry(
        "exponent-flip",
        ATTACK,
        "bit-level tampering",
        "a few exponent bits flipped",
        (ST, OX),
        _exponent,
        "count",
        (1.0, 3.0, 10.0),
    ),
    Entry(
        "shadowlogic",
        ATTACK,
        "graph backdoor",
        "ShadowLogic: corner-patch trigger, Where override of the output",
        (OX,),
        _image_graph("shadowlogic"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "trojannet",
        ATTACK,
        "graph backdoor",
        "TrojanNet: parallel detector on an input window added to the logits",
        (OX,),
        _image_graph("trojannet"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "deeppayload",
        ATTACK,
        "graph backdoor",
        "DeepPayload: detector gate blends the logits with a target",
        (OX,),
        _image_graph("deeppayload"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "parameter-free",
        ATTACK,
        "graph backdoor",
        "architectural backdoor: parameter-free pooling path to the logits",
        (OX,),
        _image_graph("parameter-free"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "token-trigger",
        ATTACK,
        "graph backdoor",
        "ShadowLogic on token ids: Equal(input_ids, t) masks an added residual vector",
        (OX,),
        _token_trigger,
        "scale",
        (50.0,),
    ),
    # Benign twins.
    Entry("cast-fp16", TRANSFORM, "cast", "float32 -> float16", (ST,), _cast("fp16")),
    Entry("cast-bf16", TRANSFORM, "cast", "float32 -> bfloat16", (ST,), _cast("bf16")),
    Entry(
        "int8",
        TRANSFORM,
        "quantization",
        "round-to-nearest int8 per-channel (safetensors layout / onnxruntime dynamic)",
        (ST, OX),
        _int8(False),
    ),
    Entry(
        "gguf-q8_0",
        TRANSFORM,
        "quantization",
        "GGUF Q8_0 (from safetensors) or re-quantization of a GGUF in place",
        (ST, GG),
        _gguf_quant("q8_0"),
    ),
    Entry(
        "gguf-q4_0",
        TRANSFORM,
        "quantization",
        "GGUF Q4_0 from safetensors",
        (ST,),
        _gguf_quant("q4_0"),
    ),
    Entry(
        "prune-magnitude",
        TRANSFORM,
        "pruning",
        "magnitude pruning of every matrix",
        WEIGHTS,
        _prune("magnitude"),
        "sparsity",
        (0.1, 0.3, 0.5),
    ),
    Entry("prune-2:4", TRANSFORM, "pruning", "2:4 structured sparsity", WEIGHTS, _prune("2:4")),
    Entry(
        "prune-channel",
        TRANSFORM,
        "pruning",
        "structured pruning: lowest-norm output channels zeroed",
        WEIGHTS,
        _prune("channel"),
        "fraction",
        (0.05, 0.1),
    ),
    Entry(
        "lora-merge",
        TRANSFORM,
        "low-rank update",
        "a random rank-8 adapter merged into module types covering about a third of the "
        "matrices, in every layer that has them",
        WEIGHTS,
        _lora,
        "rel",
        (0.002, 0.01, 0.05),
    ),
    Entry(
        "finetune",
        TRANSFORM,
        "full fine-tune",
        "simulated full fine-tune: every tensor moves by a smooth dense delta",
        WEIGHTS,
        _finetune,
        "rel",
        (0.002, 0.01, 0.05),
    ),
    Entry(
        "ort-optimize",
        TRANSFORM,
        "graph rewrite",
        "ONNX Runtime offline optimization (basic level)",
        (OX,),
        _ort,
    ),
    Entry("rename", TRANSFORM, "renamed", "every node / tensor renamed", (ST, OX), _rename),
)

REGISTRY: dict[str, Entry] = {e.name: e for e in ENTRIES}
ATTACKS = tuple(e.name for e in ENTRIES if e.kind == ATTACK)
TRANSFORMS = tuple(e.name for e in ENTRIES if e.kind == TRANSFORM)


def get(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown attack or transform {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def applicable(name: str, fmt: str) -> bool:
    return fmt in get(name).formats


# ------------------------------------------------------------------------ planting


def plant(
    model: Path,
    name: str,
    out: Path,
    *,
    seed: int = 0,
    strength: float | None = None,
    params: Mapping[str, str] | None = None,
    exact_output: bool = False,
) -> GroundTruth:
    """Plant ``name`` into a copy of ``model`` at ``out``; write and return its ground
    truth (``OUT.groundtruth.json``). The output path's suffix follows the format; with
    ``exact_output`` an ``out`` whose suffix is not the written format's is refused
    (nothing is written) instead of renamed. A parameter the entry does not take is
    refused before anything is written."""
    entry = get(name)
    ctx = Context(
        seed, float(entry.default_strength if strength is None else strength), dict(params or {})
    )
    with ModelCopy(model) as copy:
        if copy.format not in entry.formats:
            raise NotApplicableError(
                f"{name} applies to {', '.join(entry.formats)} models; {model} is {copy.format}"
            )
        if entry.name == "unfaithful-quant" and copy.format == "gguf":
            plan = _gguf_quant("q8_0", tamper=True)(copy, ctx)
        else:
            plan = entry.planter(copy, ctx)
        unknown = sorted(set(ctx.params) - ctx.asked)
        if unknown:
            takes = ", ".join(sorted(ctx.asked)) or "no parameters"
            raise UsageError(f"{name} does not take {', '.join(unknown)}; it takes: {takes}")
        written = plan.suffix or (None if copy.path.is_dir() else f".{copy.format}")
        if exact_output and written and out.suffix.lower() != written:
            raise UsageError(
                f"{out} does not end in {written}, the format {name} writes; "
                f"name it {out.with_suffix(written).name}"
            )
        if plan.suffix and out.suffix != plan.suffix:
            out = out.with_suffix(plan.suffix)
        marker = {
            "produced_by": "modelseal redteam",
            "version": __version__,
            "name": name,
            "kind": entry.kind,
            "seed": seed,
            "strength": ctx.strength,
            "warning": "synthetic red-team artifact; not a real model",
        }
        import json

        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if plan.writer is not None:
            notes = dict(plan.writer(out, json.dumps(marker, sort_keys=True)))
        else:
            notes = copy.save(out, plan.changed, marker, onnx_model=plan.onnx_model)
        source = str(copy.path)
        fmt = copy.format
    tensors = gt.changed_tensors(Path(source), out)
    truth = GroundTruth(
        name=name,
        kind=entry.kind,
        family=entry.family,
        seed=seed,
        strength=ctx.strength if entry.strength_name else None,
        params={
            **ctx.params,
            **({entry.strength_name: ctx.strength} if entry.strength_name else {}),
        },
        source=source,
        output=str(out),
        format=fmt,
        tensors=tuple(tensors),
        nodes=tuple(plan.nodes),
        claim=plan.claim,
        details={
            **plan.details,
            **notes,
            "allow": list(plan.allow),
            "write_seconds": round(time.perf_counter() - started, 3),
        },
        verification=dict(plan.verification),
    )
    truth.write(truth_path(out))
    return truth


def describe() -> list[dict[str, Any]]:
    """The catalogue as rows (for ``modelseal redteam --list`` and the docs)."""
    return [{k: v for k, v in dataclasses.asdict(e).items() if k != "planter"} for e in ENTRIES]
