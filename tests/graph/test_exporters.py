"""Graphs of the same weights written by different exporters and builders.

What is provable passes (opset versions of one exporter, ONNX Runtime's optimizers); what
is not says so (MS510) and says what differs: silero-vad's own ONNX files are a 16 kHz-only
export, a dual-rate graph built with spox (an If on the sample rate), and a dynamo export
whose 8 kHz weights differ from the others'.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from fixtures import real_model, torch_exports
from fixtures.real_models import SILERO_ONNX, SILERO_ONNX_IF, SILERO_ONNX_IFLESS
from scanner.cli.main import main


def _diff(trusted: Path | str, deployed: Path | str, tmp: Path) -> tuple[int, list[dict]]:
    out = tmp / "r.json"
    code = main(["diff", str(trusted), str(deployed), "--format", "json", "-o", str(out), "-q"])
    return code, json.loads(out.read_text())["findings"]


def _one(findings: list[dict], rule: str) -> dict:
    hits = [f for f in findings if f["rule_id"] == rule]
    assert len(hits) == 1, [(f["rule_id"], f["message"][:120]) for f in findings]
    return hits[0]


@pytest.mark.parametrize(
    ("trusted", "deployed", "side"),
    [(SILERO_ONNX_IF, SILERO_ONNX, "trusted"), (SILERO_ONNX, SILERO_ONNX_IF, "deployed")],
)
def test_dual_rate_and_16k_only_are_equivalent_only_at_16k(
    trusted: str, deployed: str, side: str, tmp_path: Path
) -> None:
    code, findings = _diff(real_model(trusted), real_model(deployed), tmp_path)
    assert code == 1
    ms510 = _one(findings, "MS510")
    cond = ms510["evidence"]["conditional"]
    assert cond["side"] == side and cond["holds_when"] == "sr == 16000"
    assert cond["weights_verified"] > 0
    assert "equivalent when sr == 16000" in ms510["message"]


def test_dynamo_export_is_not_shown_equivalent(tmp_path: Path) -> None:
    """The TorchScript and dynamo exports of the 16 kHz network differ in how they write
    the LSTM step (an ONNX LSTM vs gates written out) and the squeeze of the last frame
    (an If on its length vs a Gather of frame 0): equal only for some input lengths, so
    not shown; and the dual-rate files hold different 8 kHz weights."""
    code, findings = _diff(real_model(SILERO_ONNX), real_model(SILERO_ONNX_IFLESS), tmp_path)
    assert code == 1
    ms510 = _one(findings, "MS510")
    assert ms510["evidence"]["conditional"] is None
    assert "could not show equivalence" in ms510["message"]
    code, findings = _diff(real_model(SILERO_ONNX_IF), real_model(SILERO_ONNX_IFLESS), tmp_path)
    assert code == 1
    assert _one(findings, "MS510")
    ms503 = {loc["tensor"] for f in findings if f["rule_id"] == "MS503" for loc in f["locations"]}
    assert ms503 and all(t.startswith("model_8k.") for t in ms503)


@pytest.fixture(scope="module")
def opsets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("opsets")
    out = {}
    for opset in (14, 17):
        path = folder / f"minilm-{opset}.onnx"
        out[f"minilm-{opset}"] = torch_exports.export_minilm(path, opset=opset)
    for opset in (11, 17):
        out[f"crepe-{opset}"] = torch_exports.export_crepe(
            folder / f"crepe-{opset}.onnx",
            torch_exports.crepe_state(),
            bn_first=True,
            prelu=False,
            opset=opset,
        )
    return out


@pytest.mark.parametrize(("old", "new"), [("minilm-14", "minilm-17"), ("crepe-11", "crepe-17")])
def test_opset_versions_of_one_export_are_equivalent(
    old: str, new: str, opsets: dict[str, Path], tmp_path: Path
) -> None:
    # opset 17 writes LayerNormalization as one operator, opset 11 Squeeze/Pad attributes
    # as attributes: canonical forms agree
    code, findings = _diff(opsets[old], opsets[new], tmp_path)
    serious = [(f["rule_id"], f["message"][:120]) for f in findings if f["severity"] != "info"]
    assert code == 0 and not [s for s in serious if s[0] != "MS208"], serious


def test_a_renamed_and_edited_weight_in_another_opset_is_caught(
    opsets: dict[str, Path], tmp_path: Path
) -> None:
    model = onnx.load(str(opsets["minilm-17"]))
    g = model.graph
    target = max(
        (i for i in g.initializer if len(i.dims) == 2 and i.dims[0] == i.dims[1]),
        key=lambda i: i.name,
    )
    arr = numpy_helper.to_array(target).copy()
    arr[:, 100] += 0.03  # one input feature of a projection (a column of the stored [in, out])
    new_name = target.name + "_renamed"
    for node in g.node:
        node.input[:] = [new_name if i == target.name else i for i in node.input]
    target.CopyFrom(numpy_helper.from_array(arr, new_name))
    bad = tmp_path / "minilm-17-edited.onnx"
    onnx.save(model, str(bad))
    code, findings = _diff(opsets["minilm-14"], bad, tmp_path)
    assert code == 1
    ms503 = _one(findings, "MS503")
    assert [loc["tensor"] for loc in ms503["locations"]] == [new_name]


def test_transformer_optimizer_fusions_are_not_shown_equivalent(
    opsets: dict[str, Path], tmp_path: Path
) -> None:
    """onnxruntime.transformers fuses attention (fused QKV weights), the embeddings and the
    skip LayerNorms into contrib operators. Its EmbedLayerNormalization turns the attention
    mask into sequence lengths, which equals the trusted masking only for masks of leading
    ones: not equivalent for every input, so reported as not shown, not as an injection."""
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(
        str(opsets["minilm-14"]), model_type="bert", num_heads=12, hidden_size=384, opt_level=0
    )
    fused = tmp_path / "fused.onnx"
    opt.save_model_to_file(str(fused))
    ops = {n.op_type for n in onnx.load(str(fused)).graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ops
    code, findings = _diff(opsets["minilm-14"], fused, tmp_path)
    assert code == 1
    assert _one(findings, "MS510")
    assert not [f for f in findings if f["severity"] == "critical"]
    # every weight the fused graph holds still comes from the trusted one (QKV concatenated)
    ms408 = _one(findings, "MS408")
    assert ms408["evidence"]["holds"], ms408["evidence"]["violated"]
    assert ms408["evidence"]["pairings"].get("concatenated", 0) >= 2 * torch_exports.MINILM_LAYERS
