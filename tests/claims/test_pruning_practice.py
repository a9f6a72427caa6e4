"""Pruning as it is done: one global magnitude threshold, channel pruning of a tensor
with dead channels, structured pruning that removes channels along a chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file as _save_file

from scanner.api import diff_artifacts
from scanner.claims import check_claim


def save_file(tensors: dict[str, np.ndarray], path: str) -> None:
    # safetensors writes a strided view's buffer, not its elements: make them contiguous.
    _save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)


def _encoder(minilm) -> list[str]:
    return [n for n, a in minilm.items() if a.ndim == 2 and n.startswith("encoder.layer.")]


def test_global_magnitude_pruning_passes_and_an_edit_fails(
    minilm, minilm_path: Path, work: Path
) -> None:
    names = _encoder(minilm)
    allw = np.concatenate([np.abs(minilm[n]).reshape(-1) for n in names])
    thr = np.quantile(allw, 0.4)
    out = dict(minilm)
    for n in names:
        out[n] = np.where(np.abs(minilm[n]) <= thr, 0, minilm[n]).astype(np.float32)
    path = work / "global_prune.safetensors"
    save_file(out, str(path))
    for claim in ("magnitude", "magnitude:global"):
        r = check_claim("prune", claim, minilm_path, path)
        assert r.holds, r.message
    result = diff_artifacts(minilm_path, path)
    assert any(f.rule_id == "MS408" for f in result.findings)
    assert not [f for f in result.findings if f.rule_id in ("MS405", "MS201")]
    # One large weight zeroed on top: above the global threshold, named.
    name = names[7]
    bad = dict(out)
    t = out[name].copy()
    r0, c0 = np.unravel_index(int(np.argmax(np.abs(minilm[name]))), t.shape)
    t[r0, c0] = 0
    bad[name] = t
    path = work / "global_prune_bad.safetensors"
    save_file(bad, str(path))
    r = check_claim("prune", "magnitude:global", minilm_path, path)
    failed = [v for v in r.tensors if not v.ok]
    assert [v.tensor for v in failed] == [name] and failed[0].rows == (r0,)


def _conv_chain(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A conv -> BN -> conv chain with weights drawn like a trained CNN's (heavy tails)."""
    return {
        "conv1.weight": (rng.standard_t(4, (32, 3, 3, 3)) * 0.1).astype(np.float32),
        "conv1.bias": (rng.standard_normal(32) * 0.01).astype(np.float32),
        "bn1.weight": (1 + rng.standard_normal(32) * 0.1).astype(np.float32),
        "bn1.bias": (rng.standard_normal(32) * 0.05).astype(np.float32),
        "bn1.running_mean": (rng.standard_normal(32) * 0.1).astype(np.float32),
        "bn1.running_var": (1 + rng.random(32)).astype(np.float32),
        "conv2.weight": (rng.standard_t(4, (16, 32, 3, 3)) * 0.05).astype(np.float32),
        "conv2.bias": (rng.standard_normal(16) * 0.01).astype(np.float32),
    }


def test_channel_pruning_with_dead_channels(work: Path) -> None:
    rng = np.random.default_rng(4)
    t = _conv_chain(rng)
    t["conv1.weight"][[3, 11]] = 0  # dead before pruning
    norms = np.linalg.norm(t["conv1.weight"].reshape(32, -1), axis=1)
    live = np.flatnonzero(norms > 0)
    pruned = live[np.argsort(norms[live])[:6]]
    d = dict(t)
    d["conv1.weight"] = t["conv1.weight"].copy()
    d["conv1.weight"][pruned] = 0
    d["conv1.bias"] = t["conv1.bias"].copy()
    d["conv1.bias"][pruned] = 0
    a, b = work / "cnn.safetensors", work / "cnn_channel.safetensors"
    save_file(t, str(a))
    save_file(d, str(b))
    r = check_claim("prune", "channel", a, b)
    assert r.holds, r.message
    # Pruning a strong channel instead of a weak one is named.
    strong = int(np.argmax(norms))
    d["conv1.weight"][strong] = 0
    save_file(d, str(b))
    r = check_claim("prune", "channel", a, b)
    assert not r.holds
    assert strong in next(v for v in r.tensors if not v.ok).rows


def test_structured_channel_removal_along_a_chain(work: Path) -> None:
    rng = np.random.default_rng(9)
    t = _conv_chain(rng)
    norms = np.abs(t["conv1.weight"]).reshape(32, -1).sum(axis=1)
    keep = np.sort(np.argsort(norms)[8:])  # the 8 lowest-L1 channels removed
    d = {
        "conv1.weight": t["conv1.weight"][keep],
        "conv1.bias": t["conv1.bias"][keep],
        **{
            k: t[k][keep] for k in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var")
        },
        "conv2.weight": t["conv2.weight"][:, keep],
        "conv2.bias": t["conv2.bias"],
    }
    a, b = work / "chain.safetensors", work / "chain_removed.safetensors"
    save_file(t, str(a))
    save_file(d, str(b))
    r = check_claim("prune", "channel:remove", a, b)
    assert r.holds, r.message
    result = diff_artifacts(a, b)
    assert any(f.rule_id == "MS408" for f in result.findings), [f.rule_id for f in result.findings]
    # A kept channel's value changed on the way: named.
    d["conv2.weight"] = d["conv2.weight"].copy()
    d["conv2.weight"][2, 5, 1, 1] += 0.3
    save_file(d, str(b))
    r = check_claim("prune", "channel:remove", a, b)
    assert [v.tensor for v in r.tensors if not v.ok] == ["conv2.weight"]
    # Removing the strongest channels instead: the criterion is named.
    keep2 = np.sort(np.argsort(norms)[:-8])
    d2 = {k: (v[keep2] if v.shape[:1] == (32,) else v) for k, v in t.items()}
    d2["conv2.weight"] = t["conv2.weight"][:, keep2]
    save_file(d2, str(b))
    r = check_claim("prune", "channel:remove", a, b)
    assert any(v.problem == "criterion" for v in r.tensors if not v.ok)
