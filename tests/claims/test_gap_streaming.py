"""The quantization-gap test reads a mapped tensor in its storage dtype, converts only
the rows it tests, and drops the pages it walked; its results are exactly those on the
same values stored as float32.

Real MiniLM tensors, stored as fp16 and bf16, plain and with one tensor boxed into int8
bins by the test itself (so flagged results and rows are compared too).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from scanner.claims.gap import gap_results
from scanner.formats import open_artifact

NAMES = ("encoder.layer.2.intermediate.dense.weight", "encoder.layer.4.attention.self.key.weight")


def _boxed(w: np.ndarray, margin: float, seed: int) -> np.ndarray:
    """Every weight moved to within ``margin`` of a bin wall of its row's int8 grid."""
    rng = np.random.default_rng(seed)
    step = np.abs(w).max(axis=1, keepdims=True) / 127.0
    code = np.rint(w / step)
    side = np.where(rng.random(w.shape) < 0.5, -1.0, 1.0)
    return ((code + side * (0.5 - margin)) * step).astype(np.float32)


@pytest.mark.parametrize("storage", [np.float16, ml_dtypes.bfloat16])
def test_mapped_storage_dtype_equals_float32_values(minilm, storage, tmp_path: Path) -> None:
    tensors = {n: minilm[n] for n in NAMES}
    tensors[NAMES[0]] = _boxed(tensors[NAMES[0]], 0.03, seed=4)
    stored = {n: w.astype(storage) for n, w in tensors.items()}
    narrow, wide = tmp_path / "narrow.safetensors", tmp_path / "wide.safetensors"
    save_file(stored, str(narrow))
    save_file({n: w.astype(np.float32) for n, w in stored.items()}, str(wide))
    released: list[str] = []
    with open_artifact(narrow) as art:
        release = art.release
        art.release = lambda name, *a: (released.append(name), release(name, *a))[1]  # type: ignore[method-assign]
        got = gap_results(art)
    with open_artifact(wide) as art:
        expected = gap_results(art)
    assert [asdict(r) for r in got] == [asdict(r) for r in expected]
    assert set(released) == set(NAMES)  # every tensor walked had its pages dropped
