"""Weight-change analysis on real weights: each attack next to its benign twin, both
made here (tests/analysis/tampering.py, tests/tamper/hosts.py), never by the red-team
planters the evaluation uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scanner.analysis.rules import allowed_classes
from scanner.api import diff_artifacts
from scanner.findings import Severity
from tests.analysis import tampering as tp
from tests.analysis.weights_io import write_safetensors
from tests.tamper import hosts

pytestmark = pytest.mark.long_file(40)

ATTACK_RULES = {"MS301", "MS302", "MS303", "MS304", "MS305", "MS306", "MS307"}


def _subset(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Four real encoder layers of MiniLM (keeps every test fast)."""
    keep = tuple(f"encoder.layer.{i}." for i in (2, 3, 4, 5))
    return {k: v for k, v in weights.items() if k.startswith(keep)}


def _mats(weights: dict[str, np.ndarray]) -> list[str]:
    return sorted(k for k, v in weights.items() if v.ndim == 2)


def _diff(tmp_path: Path, base: dict, new: dict, bf16: bool = False, allow=()):
    a = write_safetensors(tmp_path / "trusted.safetensors", base, bf16)
    b = write_safetensors(tmp_path / "deployed.safetensors", new, bf16)
    return diff_artifacts(a, b, options={"allow": list(allow)})


def _rules(result) -> set[str]:
    return {f.rule_id for f in result.findings if f.severity >= Severity.HIGH}


def _attack_rules(result) -> set[str]:
    return {f.rule_id for f in result.findings if f.rule_id in ATTACK_RULES}


def _cnn_layer(name: str) -> tp.Layer:
    if name == "fc_0.w_0":
        return tp.Layer(name, transposed=True, params=("fc_0.b_0",))
    prefix = name.removesuffix("_weights")
    bn = tuple(f"{prefix}_bn_{x}" for x in ("scale", "offset", "mean", "variance"))
    return tp.Layer(name, params=bn)


def _sra_case(cnn_weights, write_cnn, layers, seed, width):
    planted, path = tp.graft_chain(cnn_weights, [_cnn_layer(n) for n in layers], seed, width)
    base = write_cnn("trusted", cnn_weights)
    result = diff_artifacts(base, write_cnn("deployed", planted))
    found = [f for f in result.findings if f.rule_id == "MS301"]
    return result, found, path


FULL_CHAIN = [
    "conv1_weights", "conv2_expand_weights", "conv2_depthwise_weights", "conv2_linear_weights",
    "conv3_expand_weights", "conv3_depthwise_weights", "conv3_linear_weights",
    "conv5_expand_weights", "conv5_depthwise_weights", "conv5_linear_weights",
    "conv7_expand_weights", "conv7_depthwise_weights", "conv7_linear_weights",
    "conv10_expand_weights", "conv10_depthwise_weights", "conv10_linear_weights",
    "conv11_expand_weights", "conv11_depthwise_weights", "conv11_linear_weights",
    "conv_last_weights", "fc_0.w_0",
]  # fmt: skip
LAST3 = ["conv12_linear_weights", "conv_last_weights", "fc_0.w_0"]


@pytest.mark.parametrize("seed", [11, 12])
def test_sra_full_chain_found_with_channels(cnn_weights, write_cnn, seed):
    # The chain skips blocks through residual adds (conv3 -> conv5, conv7 -> conv10).
    result, found, path = _sra_case(cnn_weights, write_cnn, FULL_CHAIN, seed, width=2)
    assert result.classification == "replaced subnetwork"
    assert len(found) == 1
    chain = found[0].evidence["chain"]
    assert [c["tensor"] for c in chain] == FULL_CHAIN
    planted = {c["tensor"]: c for c in path}
    for step in chain[1:-1]:
        if "out" in planted[step["tensor"]]:
            assert step["out_channels"] == planted[step["tensor"]]["out"]
    assert found[0].evidence["target_logits"] == [planted["fc_0.w_0"]["target"]]
    assert found[0].severity is Severity.CRITICAL


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_sra_last_three_layers(cnn_weights, write_cnn, seed):
    result, found, path = _sra_case(cnn_weights, write_cnn, LAST3, seed, width=1)
    assert len(found) == 1
    ev = found[0].evidence
    assert [c["tensor"] for c in ev["chain"]] == LAST3
    assert ev["chain"][1]["out_channels"] == path[1]["out"]
    assert ev["chain"][1]["in_channels"] == path[1]["in"]
    assert ev["target_logits"] == [path[2]["target"]]
    # BatchNorm of the chain channels belongs to the chain, not to MS201.
    assert "conv_last_bn_scale" in ev["channel_params"]
    assert not any(f.rule_id == "MS201" for f in result.findings)


def test_structured_channel_pruning_is_not_sra(cnn_weights, write_cnn):
    """Benign twin: a channel removed (row of one layer, column of the next zeroed), no
    block planted."""
    pruned = {k: v.copy() for k, v in cnn_weights.items()}
    pruned["conv_last_weights"][17] = 0
    pruned["fc_0.w_0"][17] = 0
    result = diff_artifacts(write_cnn("t", cnn_weights), write_cnn("d", pruned))
    assert "MS301" not in _rules(result)


def test_handcrafted_path(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    layers = [
        "encoder.layer.3.intermediate.dense.weight",
        "encoder.layer.3.output.dense.weight",
        "encoder.layer.4.intermediate.dense.weight",
    ]
    planted, neurons = tp.handcrafted_path(base, layers, seed=5)
    result = _diff(tmp_path, base, planted)
    found = [f for f in result.findings if f.rule_id == "MS302"]
    assert len(found) == 1, [f.message for f in result.findings]
    chain = found[0].evidence["chain"]
    assert [c["tensor"] for c in chain] == layers
    assert chain[0]["out_channels"] == [neurons[0]]
    assert result.classification == "handcrafted path"


@pytest.mark.parametrize("seed", [1, 2])
def test_rome_rank1_edit_is_localized(minilm_weights, tmp_path, seed):
    base = _subset(minilm_weights)
    target = "encoder.layer.3.output.dense.weight"
    planted = tp.key_value_edit(base, target, seed, rel=0.01)
    result = _diff(tmp_path, base, planted)
    assert _attack_rules(result) == {"MS303"}
    assert result.classification == "localized edit"
    t = next(t for t in result.tensors if t.name == target)
    assert t.labels["class"] == "localized edit" and t.labels["rank"] == 1


def test_abliteration_shared_direction(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    outs = [k for k in _mats(base) if k.endswith("output.dense.weight")]
    planted = tp.remove_direction(base, outs, seed=3)
    result = _diff(tmp_path, base, planted)
    found = [f for f in result.findings if f.rule_id == "MS304"]
    assert len(found) == 1 and len(found[0].evidence["tensors"]) == len(outs)
    assert result.classification == "localized edit"


@pytest.mark.parametrize("rel", [0.005, 0.02])
def test_lora_merge_bf16_is_low_rank_not_attack(minilm_weights, tmp_path, rel):
    base = _subset(minilm_weights)
    targets = [k for k in _mats(base) if "query" in k or "value" in k]
    merged = hosts.lora_merge(base, ("query", "value"), rank=8, rel=rel, seed=4)
    result = _diff(tmp_path, base, merged, bf16=True)
    assert not _attack_rules(result)
    assert result.classification == "low-rank update"
    if rel == 0.02:
        ranks = {t.labels.get("rank") for t in result.tensors if t.name in targets}
        assert ranks == {8}
    assert not _rules(result)


def test_full_finetune(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    tuned = hosts.finetune(base, lr=1e-4, seed=6)
    result = _diff(tmp_path, base, tuned)
    assert result.classification == "full fine-tune"
    assert not _rules(result)
    # not allowed: fails by default policy at medium (allowed, it passes: test_cli_exit_codes)
    assert {(f.rule_id, f.severity) for f in result.findings if f.severity > Severity.INFO} == {
        ("MS308", Severity.MEDIUM)
    }


@pytest.mark.parametrize("how", ["magnitude-30", "2:4"])
def test_pruning_passes(minilm_weights, tmp_path, how):
    base = _subset(minilm_weights)
    mats = _mats(base)
    pruned = hosts.magnitude_prune(base, 0.3, mats) if how != "2:4" else tp.prune_n_of_m(base, mats)
    result = _diff(tmp_path, base, pruned)
    assert result.classification == "pruning"
    assert not _rules(result)


@pytest.mark.parametrize("on_weights", [False, True])
def test_dare_merge_is_not_a_surgical_edit(minilm_weights, tmp_path, on_weights):
    base = _subset(minilm_weights)
    tuned = hosts.finetune(base, lr=1e-4, seed=8)
    merged = tp.drop_and_rescale(base, tuned, seed=7, drop=0.5 if on_weights else 0.9,
                                 on_weights=on_weights)  # fmt: skip
    result = _diff(tmp_path, base, merged)
    assert not _attack_rules(result)
    assert not _rules(result)


def test_lowbyte_payload_vs_finetune(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    target = "encoder.layer.2.intermediate.dense.weight"
    planted, count = tp.hide_bytes(base, target, seed=8)
    result = _diff(tmp_path, base, planted)
    found = [f for f in result.findings if f.rule_id == "MS305"]
    # Every changed word is accounted for (a random byte equals the one it replaces one
    # time in 256), nearly all of them in the payload.
    ev = found[0].evidence if len(found) == 1 else {}
    assert 0.99 * count <= ev["words"] + ev["other_changed_words"] <= count
    assert ev["words"] >= 0.9 * count
    assert result.classification == "bit-level tampering"
    # Benign twin: a tiny fine-tune of the same tensor is no payload.
    tuned = hosts.finetune(base, lr=1e-6, seed=8, only=[target])
    assert "MS305" not in _rules(_diff(tmp_path, base, tuned))


def test_exponent_bit_flips(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    flipped, hit = tp.flip_exponents(base, _mats(base), seed=9, count=4)
    result = _diff(tmp_path, base, flipped)
    found = [f for f in result.findings if f.rule_id == "MS306"]
    assert len(found) == 1
    assert sorted(found[0].evidence["tensors"]) == sorted(hit)
    assert result.classification == "bit-level tampering"


def test_prune_activated_edit(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    target = "encoder.layer.4.intermediate.dense.weight"
    planted = tp.prune_activated(base, target, seed=10)
    result = _diff(tmp_path, base, planted)
    assert "MS307" in _rules(result)
    tuned = hosts.finetune(base, lr=1e-4, seed=10, only=[target])
    assert not _attack_rules(_diff(tmp_path, base, tuned))


def test_allow_aliases():
    assert allowed_classes(["finetune", "LoRA", "prune", "localized-edit", "quantize:int8"]) == {
        "full fine-tune",
        "low-rank update",
        "pruning",
        "localized edit",
    }


def test_allow_drops_an_attack_class_to_info(minilm_weights, tmp_path):
    base = _subset(minilm_weights)
    planted = tp.key_value_edit(base, "encoder.layer.3.output.dense.weight", 3, rel=0.01)
    result = _diff(tmp_path, base, planted, allow=["localized-edit"])
    assert not _rules(result)
    assert any(f.rule_id == "MS303" and f.severity is Severity.INFO for f in result.findings)


def test_cli_exit_codes(minilm_weights, tmp_path, run_cli):
    base = _subset(minilm_weights)
    trusted = write_safetensors(tmp_path / "t.safetensors", base)
    attack = write_safetensors(
        tmp_path / "a.safetensors",
        tp.key_value_edit(base, "encoder.layer.5.output.dense.weight", 4),
    )
    tuned = write_safetensors(tmp_path / "f.safetensors", hosts.finetune(base, lr=1e-4, seed=4))
    out = tmp_path / "report.json"
    res = run_cli("diff", trusted, attack, "--format", "json", "-o", out, "-q")
    assert res.code == 1
    report = json.loads(out.read_text())
    assert "MS303" in json.dumps(report)
    res = run_cli(
        "diff", trusted, tuned, "--allow", "finetune", "--format", "json", "-o", out, "-q"
    )
    assert res.code == 0, res.err
