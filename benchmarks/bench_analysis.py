"""Timings of the weight-change analysis.

1. Rank estimation (randomized SVD against rounding noise) of 4096 x 4096 deltas:
   rank-8 update and full-rank change (target: under 2 s each).
2. Whole ``diff`` of two copies of a large safetensors model that differ in one 64 x 64
   block (target: >= 0.8 GB/s overall; unchanged tensors cost one byte compare and the
   changed one is analysed on its changed rows only).

    python benchmarks/bench_analysis.py --size-gb 1.5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from scanner.analysis.lowrank import rank_profile
from scanner.api import diff_artifacts


def bench_rank() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)
    low = rng.standard_normal((4096, 8)) @ rng.standard_normal((8, 4096))
    low *= 0.01 * np.linalg.norm(w) / np.linalg.norm(low)
    full = rng.standard_normal((4096, 4096)) * 0.01 * 0.02
    for label, delta in (("rank-8 update", low), ("full-rank change", full)):
        deployed = (w + delta).astype(np.float32)
        started = time.perf_counter()
        profile = rank_profile(w, deployed, "F32")
        took = time.perf_counter() - started
        print(f"rank 4096x4096 {label}: {took:.3f} s -> {profile.status} rank={profile.rank}")


def bench_diff(size_gb: float) -> None:
    rng = np.random.default_rng(1)
    n_tensors = max(1, int(size_gb * (1 << 30) / (4096 * 4096 * 4)))
    tensors = {
        f"layers.{i}.weight": (rng.standard_normal((4096, 4096), dtype=np.float32) * 0.02)
        for i in range(n_tensors)
    }
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.safetensors", Path(tmp) / "b.safetensors"
        save_file(tensors, str(a))
        target = tensors[f"layers.{n_tensors // 2}.weight"]
        target[100:164, 200:264] = rng.standard_normal((64, 64)).astype(np.float32)
        save_file(tensors, str(b))
        size = a.stat().st_size + b.stat().st_size
        started = time.perf_counter()
        result = diff_artifacts(a, b)
        took = time.perf_counter() - started
        print(
            f"diff {a.stat().st_size / 1e9:.2f} GB x 2, one 64x64 block changed: {took:.2f} s, "
            f"{size / took / 1e9:.2f} GB/s read; class {result.classification}; "
            f"weights analyzer {result.evidence.get('weights', {}).get('seconds')} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description="weight-change analysis timings")
    ap.add_argument("--size-gb", type=float, default=1.5)
    args = ap.parse_args()
    bench_rank()
    bench_diff(args.size_gb)


if __name__ == "__main__":
    main()
