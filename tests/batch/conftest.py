"""Models for the batch tests, made here from the demo model (a real trained VAD model):
copies, casts, edits the tests make themselves, a truncated file, signed and pinned
model folders. Expected verdicts come from the single commands (``modelseal diff``,
``scan``, ``verify``) run on the same inputs, so a batch must agree with them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.cli.main import main
from signing.keys import KeyType, generate_private_key, write_key_pair

DEMO = Path(__file__).resolve().parents[2] / "scanner" / "demo_data" / "silero_vad_16k.safetensors"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Models:
    root: Path
    trusted: Path
    same: Path
    fp16: Path
    bf16: Path
    rows: Path
    """conv2.weight rows 5..8 scaled by -3: a localized edit."""
    strided: Path
    """Every 7th LSTM input bias scaled by 1.5."""
    truncated: Path
    signed: Path
    signed_tampered: Path
    pinned: Path
    pinned_tampered: Path
    public_key: Path
    other_public_key: Path


def _edit(src: Path, dst: Path, change: Callable[[dict[str, np.ndarray]], None]) -> Path:
    tensors = {k: v.copy() for k, v in load_file(src).items()}
    change(tensors)
    save_file(tensors, dst)
    return dst


def _scale_rows(t: dict[str, np.ndarray]) -> None:
    t["conv2.weight"][5:9] *= -3.0


def _scale_strided(t: dict[str, np.ndarray]) -> None:
    t["lstm_cell.bias_ih"][0:512:7] *= 1.5


def _model_folder(folder: Path, weights: Path) -> Path:
    folder.mkdir()
    shutil.copy(weights, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"sample_rate": 16000}))
    return folder


def cli(*args: str | Path) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("batch-models")
    trusted = root / "trusted.safetensors"
    shutil.copy(DEMO, trusted)
    same = root / "same.safetensors"
    shutil.copy(DEMO, same)
    fp16 = _edit(
        DEMO,
        root / "fp16.safetensors",
        lambda t: t.update({k: v.astype(np.float16) for k, v in t.items()}),
    )
    bf16 = _edit(
        DEMO,
        root / "bf16.safetensors",
        lambda t: t.update({k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}),
    )
    rows = _edit(DEMO, root / "rows.safetensors", _scale_rows)
    strided = _edit(DEMO, root / "strided.safetensors", _scale_strided)
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(DEMO.read_bytes()[: DEMO.stat().st_size // 2])

    keys = root / "keys"
    keys.mkdir()
    write_key_pair(generate_private_key(KeyType.ED25519), keys / "k.pem", keys / "k.pub.pem")
    write_key_pair(generate_private_key(KeyType.ECDSA_P256), keys / "o.pem", keys / "o.pub.pem")

    signed = _model_folder(root / "signed", DEMO)
    assert (
        cli("sign", signed, "--key", keys / "k.pem", "-o", signed / "model.sig", "--tensors") == 0
    )
    signed_tampered = root / "signed-tampered"
    shutil.copytree(signed, signed_tampered)
    _edit(DEMO, signed_tampered / "model.safetensors", _scale_strided)

    pinned = _model_folder(root / "pinned", DEMO)
    manifest = pinned / "modelseal.manifest.json"
    assert cli("manifest", pinned, "-q", "-o", manifest) == 0
    pinned_tampered = root / "pinned-tampered"
    shutil.copytree(pinned, pinned_tampered)
    _edit(DEMO, pinned_tampered / "model.safetensors", _scale_rows)
    return Models(
        root,
        trusted,
        same,
        fp16,
        bf16,
        rows,
        strided,
        truncated,
        signed,
        signed_tampered,
        pinned,
        pinned_tampered,
        keys / "k.pub.pem",
        keys / "o.pub.pem",
    )


def job_specs(m: Models) -> list[dict[str, Any]]:
    """One job of every shape the tests use (without ids)."""
    return [
        {"kind": "diff", "trusted": str(m.trusted), "deployed": str(m.same)},
        {
            "kind": "diff",
            "trusted": str(m.trusted),
            "deployed": str(m.fp16),
            "claims": ["cast:fp16"],
        },
        {
            "kind": "diff",
            "trusted": str(m.trusted),
            "deployed": str(m.bf16),
            "claims": ["cast:bf16"],
        },
        {"kind": "diff", "trusted": str(m.trusted), "deployed": str(m.rows)},
        {"kind": "diff", "trusted": str(m.trusted), "deployed": str(m.strided)},
        {"kind": "diff", "trusted": str(m.trusted), "deployed": str(m.rows), "rules": "audit"},
        {"kind": "diff", "trusted": str(m.trusted), "deployed": str(m.truncated)},
        {"kind": "scan", "deployed": str(m.trusted)},
        {"kind": "scan", "deployed": str(m.truncated)},
        {
            "kind": "verify",
            "deployed": str(m.signed),
            "signature": str(m.signed / "model.sig"),
            "public_key": str(m.public_key),
        },
        {
            "kind": "verify",
            "deployed": str(m.signed_tampered),
            "signature": str(m.signed_tampered / "model.sig"),
            "public_key": str(m.public_key),
        },
        {
            "kind": "verify",
            "deployed": str(m.signed),
            "signature": str(m.signed / "model.sig"),
            "public_key": str(m.other_public_key),
        },
        {
            "kind": "verify",
            "deployed": str(m.pinned),
            "manifest": str(m.pinned / "modelseal.manifest.json"),
        },
        {
            "kind": "verify",
            "deployed": str(m.pinned_tampered),
            "manifest": str(m.pinned_tampered / "modelseal.manifest.json"),
        },
    ]


def fault_jobs(m: Models) -> list[dict[str, Any]]:
    """Jobs for the isolation tests (tests/batch/faults.py gives the ids their meaning)."""
    scan = {"kind": "scan", "deployed": str(m.trusted)}
    return [
        {"id": "ok-same", "kind": "diff", "trusted": str(m.trusted), "deployed": str(m.same)},
        {"id": "hang-1", **scan},
        {"id": "crash-1", **scan},
        {"id": "raise-1", **scan},
        {"id": "ok-rows", "kind": "diff", "trusted": str(m.trusted), "deployed": str(m.rows)},
        {"id": "ok-scan", **scan},
        {"id": "ok-truncated", "kind": "scan", "deployed": str(m.truncated)},
    ]


def check_isolation(lines: Mapping[str, Mapping[str, Any]], timeout: int, died: str) -> None:
    """Each lost job has its own line saying why; every other job has its own verdict."""
    assert lines["hang-1"]["timed_out"] and lines["hang-1"]["exit_code"] == 2
    assert lines["hang-1"]["error"] == f"timed out after {timeout} s; its worker was stopped"
    assert lines["hang-1"]["seconds"] >= timeout
    assert lines["crash-1"]["exit_code"] == 2 and died in lines["crash-1"]["error"]
    assert lines["raise-1"]["error"] == "internal error: RuntimeError: runner bug"
    assert lines["ok-same"]["verdict"] == "pass" and lines["ok-scan"]["verdict"] == "pass"
    rows = {"kind": "diff", "trusted": lines["ok-rows"]["inputs"]["trusted"]}
    assert lines["ok-rows"]["exit_code"] == reference_exit_code(
        {**rows, "deployed": lines["ok-rows"]["inputs"]["deployed"]}
    )
    assert lines["ok-truncated"]["exit_code"] == 2
    assert "truncated.safetensors" in lines["ok-truncated"]["error"]
    assert not any(x["timed_out"] for i, x in lines.items() if i != "hang-1")


def reference_exit_code(spec: Mapping[str, Any]) -> int:
    """What the single command says about the same inputs (manifest jobs have none: an
    unchanged copy of the pinned model passes, any edit fails)."""
    rules = ["--rules", spec["rules"]] if "rules" in spec else []
    if spec["kind"] == "diff":
        claims = [a for c in spec.get("claims", []) for a in ("--claim", c)]
        return cli("diff", spec["trusted"], spec["deployed"], "-q", *claims, *rules)
    if spec["kind"] == "scan":
        return cli("scan", spec["deployed"], "-q", *rules)
    if "signature" in spec:
        return cli(
            "verify",
            spec["deployed"],
            "--signature",
            spec["signature"],
            "--public-key",
            spec["public_key"],
        )
    return 1 if "tampered" in spec["deployed"] else 0


def write_jobs(path: Path, jobs: Iterable[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(dict(j)) + "\n" for j in jobs))
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
