"""Timings of the merge and LoRA claims on the full MiniLM (22.7 M parameters, F32).

Inputs: MiniLM and two fine-tune twins (diffuse noise at 2% / 3% of each tensor's std);
merges written here (linear; DARE-TIES with random masks, density 0.5 / 0.7); a rank-8
LoRA merged into every query/key/value matrix. Prints seconds per claim and whether it
held.

    PYTHONPATH=. python benchmarks/bench_merge_claims.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from scanner.claims import check_claim


def _save(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "m.st"))
    return folder / "m.st"


def main() -> None:
    base = load_file(str(real_model("minilm")))
    floats = [k for k, v in base.items() if v.dtype == np.float32]
    rng = np.random.default_rng(0)
    twins = []
    for s in (0.02, 0.03):
        t = dict(base)
        for k in floats:
            sd = float(base[k].std()) or 1.0
            t[k] = (base[k] + rng.standard_normal(base[k].shape) * sd * s).astype(np.float32)
        twins.append(t)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _save(root / "base", base)
        for i, t in enumerate(twins):
            _save(root / f"tune{i + 1}", t)
        linear = {
            k: (0.5 * base[k] + 0.3 * twins[0][k] + 0.2 * twins[1][k]).astype(np.float32)
            if k in floats
            else base[k]
            for k in base
        }
        dare = dict(base)
        for k in floats:
            wd = []
            for t, w, p in zip(twins, (0.6, 0.4), (0.5, 0.7), strict=True):
                d = t[k].astype(np.float64) - base[k]
                kept = d * (rng.random(d.shape) < p)
                wd.append(w * kept * (np.abs(d).sum() / max(np.abs(kept).sum(), 1e-30)))
            wd = np.stack(wd)
            maj = np.where(wd.sum(axis=0) >= 0, 1.0, -1.0)
            dare[k] = (base[k] + np.where(np.sign(wd) == maj, wd, 0).sum(axis=0)).astype(np.float32)
        (root / "linear.yml").write_text(
            "models:\n  - {model: base, parameters: {weight: 0.5}}\n"
            "  - {model: tune1, parameters: {weight: 0.3}}\n"
            "  - {model: tune2, parameters: {weight: 0.2}}\nmerge_method: linear\n"
        )
        (root / "dare.yml").write_text(
            "models:\n  - {model: tune1, parameters: {weight: 0.6, density: 0.5}}\n"
            "  - {model: tune2, parameters: {weight: 0.4, density: 0.7}}\n"
            "merge_method: dare_ties\nbase_model: base\n"
        )
        lora = dict(base)
        adapter = {}
        for k in floats:
            if k.endswith(("query.weight", "key.weight", "value.weight")):
                a = (rng.standard_normal((8, 384)) * 0.05).astype(np.float32)
                b = (rng.standard_normal((384, 8)) * 0.05).astype(np.float32)
                module = "base_model.model." + k[: -len(".weight")]
                adapter[module + ".lora_A.weight"] = a
                adapter[module + ".lora_B.weight"] = b
                lora[k] = (base[k] + (b @ a) * np.float32(2.0)).astype(np.float32)
        save_file(adapter, str(root / "adapter_model.safetensors"))
        (root / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
        cases = [
            ("merge linear", "merge", {"config": str(root / "linear.yml")}, linear),
            ("merge dare_ties", "merge", {"config": str(root / "dare.yml")}, dare),
            ("lora adapter", "lora", {"adapter": str(root)}, lora),
            ("lora r=8 q/k/v", "lora", "r=8:modules=query,key,value", lora),
        ]
        trusted = root / "base" / "m.st"
        for label, kind, params, tensors in cases:
            path = _save(root / label.replace(" ", "_"), tensors)
            t0 = time.perf_counter()
            result = check_claim(kind, params, trusted, path)
            dt = time.perf_counter() - t0
            print(f"{label:18s} {dt:7.2f} s  holds={result.holds}  {result.message[:70]}")


if __name__ == "__main__":
    main()
