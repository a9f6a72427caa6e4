"""The quantization-gap test streamed from a mapped storage-dtype tensor gives exactly the
results of the test on a float32 copy, and releases every row it walked.

Real MiniLM tensors, stored as float32, fp16 and bf16, plain and with one tensor boxed
into int8 bins by the red-team projection (so flagged results, rows and flip fractions
are compared too).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from scanner.claims.gap import BANDS, SCHEMES, gap_results, gap_tensor
from scanner.formats import open_artifact
from scanner.redteam.quant import project_into_int8_boxes

NAMES = ("encoder.layer.2.intermediate.dense.weight", "encoder.layer.4.attention.self.key.weight")


@pytest.mark.parametrize("storage", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_streamed_view_equals_the_float32_copy(minilm, storage, tmp_path: Path) -> None:
    tensors = {n: minilm[n] for n in NAMES}
    tensors[NAMES[0]] = project_into_int8_boxes(tensors[NAMES[0]], 0.06, seed=4)
    path = tmp_path / "m.safetensors"
    save_file({n: w.astype(storage) for n, w in tensors.items()}, str(path))
    with open_artifact(path) as art:
        streamed = gap_results(art)
        n_tests = len(SCHEMES) * len(BANDS) * sum(1 + art.tensors[n].shape[0] for n in NAMES)
        copied = [gap_tensor(r.tensor, art.to_float(r.tensor), r.scheme, n_tests) for r in streamed]
        released: list[tuple[int, int]] = []
        view = art.array(NAMES[1])
        gap_tensor(
            NAMES[1], view, "int8-per-channel", n_tests, lambda r0, n: released.append((r0, n))
        )
    assert len(streamed) == len(NAMES) * len(SCHEMES)
    assert [asdict(r) for r in streamed] == [asdict(r) for r in copied]
    if storage is np.float32:
        assert any(r.flagged for r in streamed)  # the boxed tensor, where the null is exact
    # Every row was released by every pass over it (storage, then counts).
    rows = view.shape[0]
    covered = sorted({r for r0, n in released for r in range(r0, r0 + n)})
    assert covered == list(range(rows))
