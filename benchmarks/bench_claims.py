"""Throughput of re-deriving an int8 per-channel claim on a large fp16 model.

Generates a synthetic fp16 safetensors model (``--size-gb``) and its honest int8
per-channel quantization in a temporary folder with numpy, then times
``scanner.claims.check_claim("quantize", "int8:per-channel:symmetric", ...)`` in a fresh
process and prints GB/s (trusted bytes per second) and that process's peak resident set
(``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def build(folder: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    rows, cols = 4096, 4096
    per_tensor = rows * cols * 2
    n = max(1, int(size_gb * 1e9 // per_tensor))
    trusted, deployed = folder / "trusted", folder / "deployed"
    trusted.mkdir()
    deployed.mkdir()
    for i in range(n):
        w = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
        save_file({f"layers.{i}.weight": w}, str(trusted / f"model-{i:04d}.safetensors"))
        w32 = w.astype(np.float32)
        scale = (np.abs(w32).max(axis=1) / 127.0).astype(np.float32)
        codes = np.clip(np.rint(w32 / scale[:, None]), -128, 127).astype(np.int8)
        save_file(
            {f"layers.{i}.weight": codes, f"layers.{i}.weight_scale": scale},
            str(deployed / f"model-{i:04d}.safetensors"),
        )
        del w, w32, codes
    return trusted, deployed


def check(trusted: Path, deployed: Path) -> int:
    """Time the claim in this process and print throughput and peak RSS."""
    from scanner.claims import check_claim

    size = sum(p.stat().st_size for p in trusted.iterdir())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = check_claim("quantize", "int8:per-channel:symmetric", trusted, deployed)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"claim holds: {result.holds} ({len(result.tensors)} tensors)")
    print(f"trusted size: {size / 1e9:.2f} GB, {seconds:.2f} s, {size / 1e9 / seconds:.2f} GB/s")
    print(f"peak RSS: {peak_kb / 1024:.0f} MiB (after imports: {before / 1024:.0f} MiB)")
    return 0 if result.holds else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument(
        "--check", nargs=2, type=Path, metavar=("TRUSTED", "DEPLOYED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.check:
        return check(*args.check)
    with tempfile.TemporaryDirectory() as tmp:
        trusted, deployed = build(Path(tmp), args.size_gb)
        # A fresh process, so that the peak resident set is the check's own and not the
        # generator's.
        root = Path(__file__).resolve().parent.parent
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(root), os.environ.get("PYTHONPATH", "")])
            ),
        }
        return subprocess.run(
            [sys.executable, __file__, "--check", str(trusted), str(deployed)], env=env, check=False
        ).returncode


if __name__ == "__main__":
    sys.exit(main())
