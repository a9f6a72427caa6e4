"""Session-wide real models and their twins (optimizing and quantizing are slow)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS
from scanner.redteam import graph as rg


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
        "basic": rg.ort_optimize(cls_model, "basic"),
        "extended": rg.ort_optimize(cls_model, "extended"),
        "renamed": rg.rename_nodes(cls_model, seed=1),
        "reordered": rg.reorder_nodes(cls_model, seed=2),
        "wrapped": rg.add_pre_post_processing(cls_model),
    }
    paths = {k: graph_dir / f"cls-{k}.onnx" for k in twins}
    for k, m in twins.items():
        onnx.save(m, paths[k])
    src = graph_dir / "cls-init.onnx"
    onnx.save(rg.constants_to_initializers(cls_model), src)
    paths["quantized"] = graph_dir / "cls-quant.onnx"
    quantize_dynamic(str(src), str(paths["quantized"]))
    return paths
