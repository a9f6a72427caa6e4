"""A claim that does not hold is never let through by a pack that allows its class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def test_violated_cast_claim_fails_every_pack_that_allows_casts(
    minilm: Path, tmp_path: Path, run_cli
) -> None:
    weights = {k: v for k, v in load_file(str(minilm)).items() if k.startswith("encoder.layer.0")}
    trusted = tmp_path / "trusted.safetensors"
    save_file(weights, str(trusted))
    cast = {k: v.astype(np.float16) for k, v in weights.items()}
    name = "encoder.layer.0.attention.self.query.weight"
    w = cast[name].copy()
    # One element moved to the neighbouring fp16 value: within rounding, but not the
    # correctly rounded result the claim promises.
    w.view(np.uint16)[5, 7] += 1
    cast[name] = w
    deployed = tmp_path / "deployed.safetensors"
    save_file(cast, str(deployed))
    for pack in ("default", "audit", "strict"):
        result = run_cli(
            "diff", trusted, deployed, "--claim", "cast:fp16", "--rules", pack, "--format", "json"
        )
        data = result.json()
        violated = [f for f in data["findings"] if f["evidence"].get("claimed_class") == "cast"]
        assert violated, pack
        assert violated[0]["evidence"]["class"] == "unfaithful transformation"
        if pack != "audit":  # audit reports everything and fails nothing
            assert result.code == 1, pack
            assert data["verdict"] == "fail"
    honest = tmp_path / "honest.safetensors"
    save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(honest))
    assert run_cli("diff", trusted, honest, "--claim", "cast:fp16", "--rules", "default").code == 0
