"""Real artifacts for claim tests, built once per session from pinned real models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from scanner.redteam.quant import largest_indices, quantize_int8, unfaithful_quantization

FRACTION = 0.003


def _weights2d(tensors: dict[str, np.ndarray]) -> list[str]:
    return [n for n, a in tensors.items() if a.ndim == 2 and a.dtype == np.float32
            and n.endswith(".weight")]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return real_model("minilm")


@pytest.fixture(scope="session")
def minilm(minilm_path: Path) -> dict[str, np.ndarray]:
    return load_file(str(minilm_path))


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("claims")


def int8_artifact(base: dict[str, np.ndarray], path: Path, *, per_channel: bool,
                  symmetric: bool = True, tamper: str | None = None) -> Path:
    """MiniLM with every 2-D weight stored as ``x.weight`` I8 + ``x.weight_scale``
    (+ ``x.weight_zero_point`` when asymmetric). ``tamper`` names one tensor whose codes
    are flipped on its 0.3% largest-magnitude weights."""
    out: dict[str, np.ndarray] = {}
    for name, arr in base.items():
        if name not in _weights2d(base):
            out[name] = arr
            continue
        if name == tamper:
            q, _ = unfaithful_quantization(arr, FRACTION, per_channel=per_channel,
                                           symmetric=symmetric)
        else:
            q = quantize_int8(arr, per_channel=per_channel, symmetric=symmetric)
        out[name] = q.codes
        out[name + "_scale"] = q.scale if per_channel else q.scale.reshape(())
        if not symmetric:
            out[name + "_zero_point"] = q.zero_point if per_channel else \
                q.zero_point.reshape(())
    save_file(out, str(path))
    return path


@pytest.fixture(scope="session")
def build(work: Path, minilm: dict[str, np.ndarray]) -> Callable[..., Path]:
    cache: dict[str, Path] = {}

    def make(key: str, **kw: object) -> Path:
        if key not in cache:
            cache[key] = int8_artifact(minilm, work / f"{key}.safetensors", **kw)  # type: ignore[arg-type]
        return cache[key]

    return make


TAMPER_TENSOR = "encoder.layer.3.output.dense.weight"


def tampered_indices(w: np.ndarray) -> np.ndarray:
    return largest_indices(w, FRACTION)
