"""Benign training twins touch parameter tensors only, and a fine-tuned, pruned or
LoRA-merged ONNX classifier (weights in Conv initializers, BatchNormalization after each
Conv) diffs as a weight change, never as a graph change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS
from scanner.cli.main import main
from scanner.redteam import registry
from scanner.redteam.registry import PARAMETER_MIN_ELEMENTS


def _constants(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    out = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = real_model(RAPIDOCR_CLS)
    out = tmp_path_factory.mktemp("benign") / "finetune.onnx"
    registry.plant(src, "finetune", out, seed=1)
    return src, out


def test_finetune_leaves_structural_constants_alone(finetuned: tuple[Path, Path]) -> None:
    src, out = finetuned
    before, after = _constants(src), _constants(out)
    changed = [
        k
        for k in before
        if k in after and before[k].dtype.kind == "f" and not np.array_equal(before[k], after[k])
    ]
    assert changed, "the fine-tune twin changed nothing"
    for k in changed:
        assert before[k].ndim >= 2 or before[k].size >= PARAMETER_MIN_ELEMENTS, k
    # scalar constants (Clip bounds, hard-sigmoid offsets and divisors) are untouched
    scalars = [k for k, v in before.items() if v.dtype.kind == "f" and v.size == 1]
    assert scalars and all(np.array_equal(before[k], after[k]) for k in scalars)
    # all-positive tensors (running variances) stay positive
    for k in changed:
        if np.all(before[k] > 0):
            assert np.all(after[k] > 0), k


@pytest.mark.parametrize("name", ["finetune", "prune-magnitude", "lora-merge"])
def test_weight_only_twin_is_no_graph_change(name: str, tmp_path: Path) -> None:
    src = real_model(RAPIDOCR_CLS)
    out = tmp_path / f"{name}.onnx"
    registry.plant(src, name, out, seed=1)
    report = tmp_path / "r.json"
    code = main(
        [
            "diff",
            str(src),
            str(out),
            "--allow",
            "finetune",
            "--allow",
            "lora",
            "--format",
            "json",
            "-o",
            str(report),
        ]
    )
    import json

    findings = json.loads(report.read_text())["findings"]
    assert not [f for f in findings if f["rule_id"] in ("MS209", "MS503")], [
        f["message"] for f in findings if f["rule_id"] in ("MS209", "MS503")
    ][:5]
    assert code == 0
