"""The real fixture models the tamper matrix works on, one of each kind: a transformer
encoder (MiniLM, safetensors), a CNN (rapidocr's text-direction classifier, ONNX), an
LSTM (Silero VAD, ONNX: convolutions and an LSTM cell) and a GGUF LLM (SmolLM2 135M,
dequantized to an F32 GGUF, then quantized by llama.cpp's own ``llama-quantize``).

Each is cut to what keeps the matrix fast without changing its kind: MiniLM's first
two encoder layers (every module type in several layers, so a tensor has siblings),
SmolLM2's first two blocks (with the whole token embedding table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fixtures import real_model
from fixtures.llamacpp import float_base, quantize
from fixtures.real_models import MODELS, SMOLLM_Q4_1, derived_file
from tests.claims.conftest import rapidocr_float
from tests.tamper.storage import gguf_tensors, onnx_initializers, write_safetensors

SUBJECTS = ("encoder", "cnn", "lstm", "gguf")
KIND = {
    "encoder": "transformer encoder (MiniLM, safetensors)",
    "cnn": "CNN (rapidocr cls, ONNX)",
    "lstm": "LSTM (Silero VAD, ONNX)",
    "gguf": "GGUF LLM (SmolLM2 135M)",
}

GGUF_FILETYPE = {"Q8_0": "Q8_0", "Q4_K": "Q4_K_M", "Q6_K": "Q6_K"}
"""The llama.cpp file type each ggml storage is taken from (Q4_K_M stores FFN down of
block 0 as Q4_K)."""


@dataclass
class Subject:
    key: str
    fmt: str
    trusted: Path
    weights: dict[str, np.ndarray]
    """Values by name (float tensors as float32)."""
    targets: tuple[str, ...]
    """Tensors the matrix tampers with: matrices or conv weights of real size."""
    lora_modules: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ()
    """Tensors a tamper under a LoRA merge goes to (inside the adapted modules)."""
    folder: Path = Path()
    trainable: tuple[str, ...] | None = None
    """Tensors a fine-tune updates (None: every float tensor)."""
    tuned: tuple[str, ...] | None = None
    """Tensors the fine-tune a tamper hides under updates (None: ``trainable``): the
    upper layers, as fine-tunes that freeze the lower ones do; it keeps each trial's
    scan proportionate."""
    _files: dict[str, Path] = field(default_factory=dict)
    _cache: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def matrices(self) -> set[str]:
        """Float matrices: what an int8 export quantizes."""
        return {n for n, a in self.weights.items() if a.ndim == 2 and a.dtype.kind == "f"}

    def file(self, key: str, make) -> Path:  # type: ignore[no-untyped-def]
        """A derived file built once (``make(path)``) and reused."""
        if key not in self._files:
            self._files[key] = make(self.folder / f"{self.key}-{key}")
        return self._files[key]


def _encoder(folder: Path) -> Subject:
    src = load_file(str(real_model("minilm")))
    layers = tuple(f"encoder.layer.{i}." for i in range(2))
    weights = {n: a for n, a in src.items() if n.startswith(layers)}
    trusted = write_safetensors(folder / "encoder.safetensors", weights, "F32")
    return Subject(
        "encoder",
        "safetensors",
        trusted,
        weights,
        (
            "encoder.layer.1.attention.output.dense.weight",
            "encoder.layer.0.intermediate.dense.weight",
            "encoder.layer.1.attention.self.value.weight",
        ),
        lora_modules=("query", "value"),
        lora_targets=(
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.1.attention.self.value.weight",
        ),
        folder=folder,
        tuned=tuple(n for n in weights if n.startswith("encoder.layer.1.")),
    )


def _cnn(folder: Path) -> Subject:
    trusted = rapidocr_float(folder)
    weights = onnx_initializers(trusted)
    convs = sorted(
        (n for n, a in weights.items() if a.ndim == 4 and a.shape[0] >= 16 and a[0].size >= 16),
        key=lambda n: -weights[n].size,
    )
    return Subject(
        "cnn",
        "onnx",
        trusted,
        weights,
        tuple(convs[:3]),
        folder=folder,
        trainable=_parameters(trusted, weights),
    )


def _lstm(folder: Path) -> Subject:
    trusted = real_model("silero-onnx")
    weights = onnx_initializers(trusted)
    targets = (
        "model.decoder.rnn.weight_ih",
        "model.decoder.rnn.weight_hh",
        "model.encoder.1.reparam_conv.weight",
    )
    return Subject(
        "lstm",
        "onnx",
        trusted,
        weights,
        targets,
        folder=folder,
        trainable=_parameters(trusted, weights),
    )


TRAINED_OPS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "BatchNormalization", "LSTM", "GRU", "RNN"}
)


def _parameters(path: Path, weights: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Float initializers a fine-tune trains: inputs of the layers that carry weights
    (in subgraphs too), biases added to their outputs, every other float matrix and
    tensor named a bias (never shape constants, clip bounds or other scalars)."""
    import onnx

    def nodes(graph):  # type: ignore[no-untyped-def]
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.g is not None and attr.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(attr.g)

    all_nodes = list(nodes(onnx.load(str(path)).graph))
    trained_out = {o for n in all_nodes if n.op_type in TRAINED_OPS for o in n.output}
    used: set[str] = set()
    for node in all_nodes:
        if node.op_type in TRAINED_OPS or (node.op_type == "Add" and trained_out & set(node.input)):
            used.update(node.input)
    # Weights reached through reshapes or control flow: every float matrix, and biases.
    used.update(n for n, a in weights.items() if a.ndim >= 2 or "bias" in n.lower())
    return tuple(n for n, a in weights.items() if n in used and a.dtype.kind == "f" and a.size > 1)


VOCAB = 2048
"""Token embedding rows kept in the GGUF subject: the table is 85% of the file, and every
scan of the whole table would dominate the matrix's time without adding a tensor kind."""


def _gguf(folder: Path) -> Subject:
    trusted = _gguf_base()
    weights = {n: a for n, (_, a) in gguf_tensors(trusted).items()}
    targets = ("blk.1.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_v.weight")
    # Fine-tunes of LLMs commonly freeze the token embeddings; it also keeps the
    # simulated optimizer off a 28M-element table.
    blocks = tuple(n for n in weights if n.startswith("blk."))
    return Subject(
        "gguf",
        "gguf",
        trusted,
        weights,
        targets,
        lora_modules=("attn_q", "attn_v"),
        lora_targets=("blk.1.attn_q.weight", "blk.0.attn_v.weight"),
        folder=folder,
        trainable=blocks,
        tuned=tuple(
            n for n in blocks if n.startswith("blk.1.attn") or n.startswith("blk.0.ffn_down")
        ),
    )


def _gguf_base() -> Path:
    """The F32 base, built once and kept next to the fixture models (it is derived only
    from the pinned SmolLM2 wheel, so its name says how)."""
    return derived_file(
        f"smollm2-135m-{MODELS[SMOLLM_Q4_1].sha256[:16]}-f32-2blocks-vocab{VOCAB}.gguf",
        lambda out: float_base(real_model(SMOLLM_Q4_1), out, layers=2, vocab=VOCAB),
    )


BUILDERS = {"encoder": _encoder, "cnn": _cnn, "lstm": _lstm, "gguf": _gguf}


def load_subject(key: str, folder: Path) -> Subject:
    folder.mkdir(parents=True, exist_ok=True)
    return BUILDERS[key](folder)


def gguf_quantized(subject: Subject, storage: str) -> Path:
    """llama-quantize's output of the F32 base for the file type holding ``storage``."""
    ftype = GGUF_FILETYPE[storage]
    return subject.file(f"{ftype}.gguf", lambda p: quantize(subject.trusted, p, ftype))


def gguf_types(subject: Subject, storage: str) -> dict[str, str]:
    """name -> ggml type of the quantized file holding ``storage``."""
    key = f"types-{storage}"
    if key not in subject._cache:
        path = gguf_quantized(subject, storage)
        subject._cache[key] = {n: t for n, (t, _) in gguf_tensors(path).items()}  # type: ignore[assignment]
    return subject._cache[key]  # type: ignore[return-value]


def gguf_target(subject: Subject, storage: str, rng: np.random.Generator) -> str:
    """A tensor stored as ``storage`` in the quantized file (block tensors only)."""
    types = gguf_types(subject, storage)
    names = [n for n in subject.targets if types.get(n) == storage]
    if not names:
        names = sorted(n for n, t in types.items() if t == storage and n.startswith("blk."))
    return names[int(rng.integers(len(names)))]
