"""Quantization-gap check on low-precision storage: bf16 and fp16 tensors are tested
against the residual distribution of their own storage lattice, so honest casts stay
clean and box-projected weights stored in bf16/fp16 are flagged."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from scanner.claims.gap import SCHEMES, gap_tensor
from tests.claims.conftest import TAMPER_TENSOR
from tests.claims.tampering import press_to_walls

pytestmark = pytest.mark.long_file(22)

STORAGE = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16}
ATTACKED = ("int8-per-channel", "q8_0", "q4_0")
assert set(ATTACKED) <= set(SCHEMES)


def _stored(w: np.ndarray, storage: str) -> np.ndarray:
    return w.astype(STORAGE[storage]).astype(np.float32)


@pytest.mark.parametrize("storage", ["bf16", "fp16"])
def test_gap_on_low_precision_tensors(minilm, storage: str) -> None:
    rng = np.random.default_rng(17)
    names = [
        n for n, a in minilm.items() if a.ndim == 2 and a.size >= 4096 and n.startswith("encoder.")
    ]
    # Every matrix of the model, stored in bf16 and fp16, is scanned clean on every grid
    # by test_scan_bf16_and_fp16_models; here two layers' matrices are tested directly.
    honest = [n for n in names if n.startswith(("encoder.layer.0.", "encoder.layer.4."))]
    assert len(honest) == 12
    for scheme in ATTACKED:
        # Honest: the matrices of two layers, cast to the storage format.
        for n in honest:
            r = gap_tensor(n, _stored(minilm[n], storage), scheme, 10**6)
            assert not r.flagged and not r.skipped, (n, scheme, r.log10_p)
        # Attacked, then stored: flagged at any margin, with the lattice named.
        name = names[int(rng.integers(len(names)))]
        margin = float(rng.uniform(0.02, 0.15))
        attacked = _stored(press_to_walls(minilm[name], scheme, margin, seed=3), storage)
        r = gap_tensor(name, attacked, scheme, 10**6)
        assert r.flagged, (name, scheme, margin)
        assert r.extra["storage"] == ("fp16" if storage == "fp16" else "7-bit significand")
        assert r.flip_fraction > 2 * r.flip_expected


def test_scan_bf16_and_fp16_models(work: Path, minilm, run_cli) -> None:
    for storage, npd in STORAGE.items():
        honest = {n: (a.astype(npd) if a.dtype == np.float32 else a) for n, a in minilm.items()}
        path = work / f"gap_{storage}.safetensors"
        save_file(honest, str(path))
        res = run_cli("scan", path, "--format", "json")
        assert "MS409" not in [f["rule_id"] for f in res.json()["findings"]], storage
        # The other tensors are the honest ones just scanned clean: the attacked file
        # holds the tampered tensor's layer only, and the scan must flag that tensor.
        layer = TAMPER_TENSOR.rsplit(".", 3)[0] + "."
        attacked = {n: a for n, a in honest.items() if n.startswith(layer)}
        assert len(attacked) > 4
        attacked[TAMPER_TENSOR] = press_to_walls(
            minilm[TAMPER_TENSOR], "int8-per-channel", 0.07, seed=2
        ).astype(npd)
        apath = work / f"gap_{storage}_attacked.safetensors"
        save_file(attacked, str(apath))
        res = run_cli("scan", apath, "--format", "json")
        hits = [f for f in res.json()["findings"] if f["rule_id"] == "MS409"]
        assert hits and {f["locations"][0]["tensor"] for f in hits} == {TAMPER_TENSOR}
        assert hits[0]["evidence"]["null"] == "simulated storage lattice"
