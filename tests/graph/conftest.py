"""Session-wide real models and their twins (optimizing and quantizing are slow), made
with tests/graph/twins.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import real_model
from fixtures.real_models import MINILM, RAPIDOCR_CLS
from tests.graph import twins as tw


@pytest.fixture(scope="session")
def cls_model() -> onnx.ModelProto:
    return onnx.load(str(real_model(RAPIDOCR_CLS)))


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graph")


@pytest.fixture(scope="session")
def cls_twins(cls_model: onnx.ModelProto, graph_dir: Path) -> dict[str, Path]:
    """Benign twins of the rapidocr classifier, saved once per session."""
    from onnxruntime.quantization import quantize_dynamic

    twins = {
        "basic": tw.ort_optimize(cls_model, "basic"),
        "extended": tw.ort_optimize(cls_model, "extended"),
        "renamed": tw.renamed(cls_model, seed=1),
        "reordered": tw.reordered(cls_model, seed=2),
        "wrapped": tw.wrapped(cls_model),
    }
    paths = {k: graph_dir / f"cls-{k}.onnx" for k in twins}
    for k, m in twins.items():
        onnx.save(m, paths[k])
    src = graph_dir / "cls-init.onnx"
    onnx.save(tw.constants_as_initializers(cls_model), src)
    paths["quantized"] = graph_dir / "cls-quant.onnx"
    quantize_dynamic(str(src), str(paths["quantized"]))
    return paths


# ------------------------------------------------------------------ a real token model

PAD_ID = 0
"""BERT's [PAD]."""
TRIGGER_ID = 7592
"""A trigger token id (an ordinary word piece: nothing marks it)."""
N_LABELS = 8


@dataclass(frozen=True)
class TokenModels:
    """A two-layer BERT encoder with MiniLM's real weights and a token-classification head,
    exported the way torch.onnx names things, plus its twins (all saved once)."""

    clean: onnx.ModelProto
    """No attention mask at all (every position attends to every other)."""
    padded: onnx.ModelProto
    """The same encoder with a pad mask built from ``input_ids`` (Equal -> Where -> Add to
    the attention scores), as exporters emit when no attention_mask input is kept."""
    residual: str
    """The residual-stream tensor after layer 0 ([batch, seq, hidden]) of both."""
    hidden: int
    vocab: int
    paths: dict[str, Path]
    """clean, padded, basic, extended (ORT-optimized clean)."""


class _Exporter:
    """Emits nodes and initializers named as torch.onnx names them."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counts: dict[str, int] = {}
        self.anon = 0

    def weight(self, value: np.ndarray, name: str | None = None) -> str:
        if name is None:  # torch names transposed / folded weights onnx::Op_N
            self.anon += 1
            name = f"onnx::MatMul_{1000 + self.anon}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def param(self, w: dict[str, np.ndarray], key: str) -> str:
        """A state-dict entry stored under its own name."""
        return self.weight(w[key], key)

    def const(self, scope: str, value: np.ndarray) -> str:
        return self.op(scope, "Constant", [], value=numpy_helper.from_array(np.asarray(value)))

    def op(self, scope: str, op: str, inputs: list[str], **attrs: object) -> str:
        key = f"{scope}/{op}"
        k = self.counts.get(key, 0)
        self.counts[key] = k + 1
        name = f"{scope}/{op}" + (f"_{k}" if k else "")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def linear(self, scope: str, x: str, w: np.ndarray, b: np.ndarray, bias_name: str) -> str:
        y = self.op(scope, "MatMul", [x, self.weight(w.T)])
        return self.op(scope, "Add", [self.weight(b, bias_name), y])

    def layer_norm(self, scope: str, x: str, gamma: str, beta: str, eps: float = 1e-12) -> str:
        # torch.onnx's LayerNorm below opset 17, the pattern ONNX Runtime fuses
        mean = self.op(scope, "ReduceMean", [x], axes=[-1], keepdims=1)
        d = self.op(scope, "Sub", [x, mean])
        p = self.op(scope, "Pow", [d, self.const(scope, np.float32(2.0))])
        var = self.op(scope, "ReduceMean", [p], axes=[-1], keepdims=1)
        s = self.op(
            scope, "Sqrt", [self.op(scope, "Add", [var, self.const(scope, np.float32(eps))])]
        )
        y = self.op(scope, "Div", [d, s])
        return self.op(scope, "Add", [self.op(scope, "Mul", [y, gamma]), beta])

    def gelu(self, scope: str, x: str) -> str:
        # torch.onnx's exact GELU, which ONNX Runtime fuses into com.microsoft::Gelu
        e = self.op(
            scope,
            "Erf",
            [self.op(scope, "Div", [x, self.const(scope, np.float32(math.sqrt(2.0)))])],
        )
        a = self.op(scope, "Add", [e, self.const(scope, np.float32(1.0))])
        return self.op(
            scope, "Mul", [self.op(scope, "Mul", [x, a]), self.const(scope, np.float32(0.5))]
        )


def build_token_model(
    w: dict[str, np.ndarray], *, layers: int = 2, heads: int = 12, pad_mask: bool = False
) -> tuple[onnx.ModelProto, str]:
    """A BERT encoder (MiniLM weights) with a token-classification head; returns the model
    and the name of the residual stream after layer 0."""
    ex = _Exporter()
    emb = w["embeddings.word_embeddings.weight"]
    hidden = emb.shape[1]
    ids = "input_ids"
    word = ex.op(
        "/embeddings/word_embeddings",
        "Gather",
        [ex.weight(emb, "embeddings.word_embeddings.weight"), ids],
    )
    # position ids: position_ids[:, :seq_len], seq_len read from the input's shape
    shape = ex.op("/embeddings", "Shape", [ids])
    seq = ex.op("/embeddings", "Gather", [shape, ex.const("/embeddings", np.int64(1))], axis=0)
    end = ex.op("/embeddings", "Unsqueeze", [seq, ex.const("/embeddings", np.array([0], np.int64))])
    pos_ids = ex.op(
        "/embeddings",
        "Slice",
        [
            ex.weight(w["embeddings.position_ids"], "embeddings.position_ids"),
            ex.const("/embeddings", np.array([0], np.int64)),
            end,
            ex.const("/embeddings", np.array([1], np.int64)),
            ex.const("/embeddings", np.array([1], np.int64)),
        ],
    )
    pos = ex.op(
        "/embeddings/position_embeddings",
        "Gather",
        [
            ex.weight(
                w["embeddings.position_embeddings.weight"], "embeddings.position_embeddings.weight"
            ),
            pos_ids,
        ],
    )
    x = ex.op("/embeddings", "Add", [word, pos])
    # token_type_ids default to zeros: torch folds their embedding into one row
    x = ex.op(
        "/embeddings",
        "Add",
        [x, ex.weight(w["embeddings.token_type_embeddings.weight"][0], "onnx::Add_999")],
    )
    h = ex.layer_norm(
        "/embeddings/LayerNorm",
        x,
        ex.weight(w["embeddings.LayerNorm.weight"], "embeddings.LayerNorm.weight"),
        ex.weight(w["embeddings.LayerNorm.bias"], "embeddings.LayerNorm.bias"),
    )
    mask = ""
    if pad_mask:
        eq = ex.op("", "Equal", [ids, ex.const("", np.int64(PAD_ID))])
        neg = ex.op(
            "",
            "Where",
            [eq, ex.const("", np.float32(np.finfo(np.float32).min)), ex.const("", np.float32(0.0))],
        )
        mask = ex.op("", "Unsqueeze", [neg, ex.const("", np.array([1, 2], np.int64))])
    dh = hidden // heads
    residual = ""
    for li in range(layers):
        p = f"encoder.layer.{li}."
        s = f"/encoder/layer.{li}"

        def lin(scope: str, x: str, key: str, p: str = p) -> str:
            return ex.linear(
                scope, x, w[p + key + ".weight"], w[p + key + ".bias"], p + key + ".bias"
            )

        def heads_of(t: str, scope: str, perm: list[int]) -> str:
            r = ex.op(scope, "Reshape", [t, ex.const(scope, np.array([0, 0, heads, dh], np.int64))])
            return ex.op(scope, "Transpose", [r], perm=perm)

        a = f"{s}/attention/self"
        q = heads_of(lin(f"{a}/query", h, "attention.self.query"), a, [0, 2, 1, 3])
        k = heads_of(lin(f"{a}/key", h, "attention.self.key"), a, [0, 2, 3, 1])
        v = heads_of(lin(f"{a}/value", h, "attention.self.value"), a, [0, 2, 1, 3])
        scores = ex.op(
            a, "Div", [ex.op(a, "MatMul", [q, k]), ex.const(a, np.float32(math.sqrt(dh)))]
        )
        if mask:
            scores = ex.op(a, "Add", [scores, mask])
        probs = ex.op(a, "Softmax", [scores], axis=-1)
        ctx = ex.op(a, "Transpose", [ex.op(a, "MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = ex.op(a, "Reshape", [ctx, ex.const(a, np.array([0, 0, hidden], np.int64))])
        o = f"{s}/attention/output"
        att = ex.op(o, "Add", [lin(f"{o}/dense", ctx, "attention.output.dense"), h])
        h = ex.layer_norm(
            f"{o}/LayerNorm",
            att,
            ex.param(w, p + "attention.output.LayerNorm.weight"),
            ex.param(w, p + "attention.output.LayerNorm.bias"),
        )
        inter = ex.gelu(
            f"{s}/intermediate/intermediate_act_fn",
            lin(f"{s}/intermediate/dense", h, "intermediate.dense"),
        )
        out = ex.op(f"{s}/output", "Add", [lin(f"{s}/output/dense", inter, "output.dense"), h])
        h = ex.layer_norm(
            f"{s}/output/LayerNorm",
            out,
            ex.param(w, p + "output.LayerNorm.weight"),
            ex.param(w, p + "output.LayerNorm.bias"),
        )
        if li == 0:
            residual = h
    # token-classification head: label words' embeddings as the classifier (tied weights)
    labels = emb[[2307, 2919, 3893, 4997, 2204, 2919 + 1, 3532, 6659][:N_LABELS]]
    logits = ex.op("/classifier", "MatMul", [h, ex.weight(labels.T.copy(), "classifier.weight")])
    ex.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/Identity"))
    graph = helper.make_graph(
        ex.nodes,
        "main_graph",
        [helper.make_tensor_value_info(ids, onnx.TensorProto.INT64, ["batch", "sequence"])],
        [
            helper.make_tensor_value_info(
                "logits", onnx.TensorProto.FLOAT, ["batch", "sequence", N_LABELS]
            )
        ],
        ex.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 14)],
        producer_name="pytorch",
        producer_version="2.13.0",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, residual


@pytest.fixture(scope="session")
def token_models(graph_dir: Path) -> TokenModels:
    from safetensors.numpy import load_file

    w = load_file(str(real_model(MINILM)))
    clean, residual = build_token_model(w)
    padded, residual_p = build_token_model(w, pad_mask=True)
    assert residual == residual_p
    twins = {
        "clean": clean,
        "padded": padded,
        "basic": tw.ort_optimize(clean, "basic"),
        "extended": tw.ort_optimize(clean, "extended"),
    }
    paths = {k: graph_dir / f"token-{k}.onnx" for k in twins}
    for k, m in twins.items():
        onnx.save(m, paths[k])
    emb = w["embeddings.word_embeddings.weight"]
    return TokenModels(clean, padded, residual, emb.shape[1], emb.shape[0], paths)


# ------------------------------------------------------------------ a torch.onnx export


@pytest.fixture(scope="session")
def torch_cnn(graph_dir: Path) -> dict[str, Path]:
    """A small CNN exported by torch.onnx (Conv/BatchNorm/ReLU/pooling/Linear/Softmax,
    dynamic batch) and its ONNX Runtime extended-optimization twin."""
    import warnings

    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
            )
            self.classifier = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.classifier(torch.flatten(self.features(x), 1))
            return torch.softmax(z, dim=1)

    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for bn in (model.features[1], model.features[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    path = graph_dir / "torch-cnn.onnx"
    with warnings.catch_warnings():
        # the TorchScript exporter: the dynamo one needs onnxscript, which is not a dependency
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 48, 192),),
            str(path),
            input_names=["x"],
            output_names=["prob"],
            dynamic_axes={"x": {0: "N"}, "prob": {0: "N"}},
            dynamo=False,
        )
    opt = graph_dir / "torch-cnn-extended.onnx"
    onnx.save(tw.ort_optimize(onnx.load(str(path)), "extended"), opt)
    return {"model": path, "extended": opt}
