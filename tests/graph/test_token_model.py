"""ShadowLogic on a sequence model (a trigger token adds a direction to the residual
stream) against its benign twins: a pad mask built from input_ids, and ONNX Runtime's
LayerNorm / GELU / MatMul-scale fusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from scanner.cli.main import main
from scanner.graph.canonical import canonicalize
from scanner.graph.single import find_footprints
from tests.graph import backdoors as bd
from tests.graph import twins as tw

pytestmark = pytest.mark.long_file(29)

TRIGGER_ID = 7592  # kept equal to conftest.TRIGGER_ID (test modules cannot import it)
PAD_ID = 0


def _plant(tm: object, spread: bool) -> tuple[onnx.ModelProto, bd.Injected]:
    direction = np.random.default_rng(3).standard_normal(tm.hidden)  # type: ignore[attr-defined]
    direction /= np.linalg.norm(direction)
    return bd.token_shift(
        tm.clean,
        input_name="input_ids",  # type: ignore[attr-defined]
        residual=tm.residual,  # type: ignore[attr-defined]
        token=TRIGGER_ID,
        direction=direction,
        whole_sequence=spread,
    )


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _sequences(vocab: int, n: int = 6, length: int = 24) -> np.ndarray:
    ids = np.random.default_rng(11).integers(1000, vocab, (n, length)).astype(np.int64)
    ids[ids == TRIGGER_ID] = TRIGGER_ID + 1
    return ids


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("spread", [False, True], ids=["per-position", "whole-sequence"])
def test_token_trigger_fires_only_on_the_token(token_models: object, spread: bool) -> None:
    tm = token_models
    bad, truth = _plant(tm, spread)
    clean_s, bad_s = _session(tm.clean), _session(bad)  # type: ignore[attr-defined]
    ids = _sequences(tm.vocab)  # type: ignore[attr-defined]
    ref = clean_s.run(None, {"input_ids": ids})[0]
    got = bad_s.run(None, {"input_ids": ids})[0]
    assert np.array_equal(ref, got)  # bit-identical without the trigger token
    trig = ids.copy()
    trig[:, 5] = TRIGGER_ID
    ref, got = clean_s.run(None, {"input_ids": trig})[0], bad_s.run(None, {"input_ids": trig})[0]
    moved = np.abs(got - ref).max(axis=-1)  # [batch, seq]
    scale = np.abs(ref).max()
    assert (moved[:, 5] > 0.25 * scale).all()  # the trigger position is pushed hard
    assert (ref.argmax(-1)[:, 5] != got.argmax(-1)[:, 5]).any()
    others = np.delete(moved, 5, axis=1)
    if spread:
        assert (others > 0.1 * scale).mean() > 0.5
    else:  # only attention carries it elsewhere: far smaller than at the trigger
        assert others.max() < moved[:, 5].min()
    assert truth.nodes[0].startswith("/encoder/layer.0/")  # exporter-style names


@pytest.mark.parametrize("spread", [False, True], ids=["per-position", "whole-sequence"])
def test_diff_and_scan_flag_the_token_trigger(
    token_models: object, spread: bool, tmp_path: Path
) -> None:
    tm = token_models
    bad, truth = _plant(tm, spread)
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, bad_path)
    out = tmp_path / "r.json"
    trusted = str(tm.paths["clean"])  # type: ignore[attr-defined]
    assert main(["diff", trusted, str(bad_path), "--format", "json", "-o", str(out), "-q"]) == 1
    ms501 = [f for f in _report(out)["findings"] if f["rule_id"] == "MS501"]
    assert len(ms501) == 1
    ev = ms501[0]["evidence"]
    assert set(ev["nodes"]) == set(truth.nodes)
    assert {loc["node"] for loc in ms501[0]["locations"]} == set(truth.nodes)
    assert ev["merge_ops"] == ["Add"] and ev["merge_nodes"] == [truth.merge_node]
    assert ev["reads_inputs"] == ["input_ids"]
    assert ev["writes_into"] == [tm.residual]  # type: ignore[attr-defined]
    assert "Equal" in ev["ops"] and "Equal" in ev["reason"]
    assert main(["scan", str(bad_path), "--format", "json", "-o", str(out), "-q"]) == 1
    ms506 = [f for f in _report(out)["findings"] if f["rule_id"] == "MS506"]
    assert ms506 and "payload of 384 values" in ms506[0]["message"]
    assert ms506[0]["evidence"]["merge_node"] == truth.merge_node
    # the backdoor survives ONNX Runtime's optimizer, and so does its detection
    opt = tmp_path / "bad-opt.onnx"
    onnx.save(tw.ort_optimize(bad, "extended"), opt)
    assert main(["diff", trusted, str(opt), "--format", "json", "-o", str(out), "-q"]) == 1
    findings = _report(out)["findings"]
    assert [f["rule_id"] for f in findings].count("MS501") == 1
    assert not [f for f in findings if f["rule_id"] in ("MS209", "MS503")]


def test_pad_mask_is_benign_in_scan_and_a_change_in_diff(
    token_models: object, tmp_path: Path
) -> None:
    tm = token_models
    paths = tm.paths  # type: ignore[attr-defined]
    out = tmp_path / "r.json"
    # a model exported with its pad mask is clean, as is the one without
    for key in ("clean", "padded"):
        code = main(["scan", str(paths[key]), "--format", "json", "-o", str(out), "-q"])
        assert code == 0, (key, _report(out)["findings"])
    assert find_footprints(canonicalize(tm.padded)) == []  # type: ignore[attr-defined]
    # the mask does what a pad mask does: only sequences holding PAD change
    ids = _sequences(tm.vocab)  # type: ignore[attr-defined]
    clean_s, pad_s = _session(tm.clean), _session(tm.padded)  # type: ignore[attr-defined]
    assert np.array_equal(
        clean_s.run(None, {"input_ids": ids})[0], pad_s.run(None, {"input_ids": ids})[0]
    )
    padded_ids = ids.copy()
    padded_ids[:, 18:] = PAD_ID
    assert not np.allclose(
        clean_s.run(None, {"input_ids": padded_ids})[0][:, :18],
        pad_s.run(None, {"input_ids": padded_ids})[0][:, :18],
        atol=1e-3,
    )
    # Added between trusted and deployed, a mask is a real change of behaviour (any token
    # id can be "masked": that is also how a token-suppression backdoor looks), so the
    # diff reports the branch; the comparison constant is named in the evidence.
    code = main(
        [
            "diff",
            str(paths["clean"]),
            str(paths["padded"]),
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 1
    ms501 = [f for f in _report(out)["findings"] if f["rule_id"] == "MS501"]
    assert len(ms501) == 1 and ms501[0]["evidence"]["reads_inputs"] == ["input_ids"]
    assert set(ms501[0]["evidence"]["ops"]) == {"Add", "Equal", "Unsqueeze", "Where"}
    # the same mask on both sides is no difference at all
    code = main(
        [
            "diff",
            str(paths["padded"]),
            str(paths["padded"]),
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_ort_optimized_token_model_is_equivalent(
    token_models: object, level: str, tmp_path: Path
) -> None:
    tm = token_models
    paths = tm.paths  # type: ignore[attr-defined]
    opt = onnx.load(str(paths[level]))
    ops = {n.op_type for n in opt.graph.node}
    if level == "extended":  # the fusions really happened
        assert {"LayerNormalization", "BiasGelu", "FusedMatMul"} <= ops
    out = tmp_path / "r.json"
    code = main(
        ["diff", str(paths["clean"]), str(paths[level]), "--format", "json", "-o", str(out), "-q"]
    )
    findings = _report(out)["findings"]
    assert code == 0, [(f["rule_id"], f["message"]) for f in findings]
    rules = {f["rule_id"] for f in findings}
    assert not rules & {"MS501", "MS209", "MS503", "MS505"}
    ms502 = [f for f in findings if f["rule_id"] == "MS502"]
    if level == "extended":
        notes = " ".join(ms502[0]["evidence"]["deployed_rewrites"])
        assert "split LayerNormalization" in notes and "split BiasGelu" in notes
        assert not ms502[0]["evidence"]["regions"]  # matched exactly, not by boundary
