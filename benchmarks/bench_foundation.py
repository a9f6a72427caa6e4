"""Speed and memory of `manifest` and `diff` on a large fp16 safetensors model.

    python benchmarks/bench_foundation.py [--size-gb 1.5] [--dir DIR] [--repeat 3]

Builds a transformer-shaped fp16 model of about --size-gb, a copy that differs in one
64x64 block, then runs `modelseal manifest` and `modelseal diff` in fresh processes
(page cache warm, as on a CI runner that just wrote or downloaded the model) and
prints throughput and peak resident memory of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# VmHWM is this process image's own peak; ru_maxrss would include the parent's peak,
# which Linux carries across fork+exec.
RUNNER = r"""
import sys, time
from scanner.cli.main import main
t = time.perf_counter()
code = main(sys.argv[1:])
elapsed = time.perf_counter() - t
status = open("/proc/self/status").read()
rss = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(f"BENCH {code} {elapsed:.4f} {rss}", file=sys.stderr)
"""


def build_model(folder: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path, str]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    hidden = 2048
    per_layer = 12 * hidden * hidden * 2  # q, k, v, o + 4x up + 4x down, fp16
    n_layers = max(1, int(size_gb * 1e9 // per_layer))
    tensors: dict[str, np.ndarray] = {}
    base = rng.normal(0, 0.02, size=(4 * hidden, hidden)).astype(np.float16)
    for i in range(n_layers):
        # Distinct values per tensor, cheaply: roll a shared random block.
        p = f"model.layers.{i}"
        shift = i * 7919
        tensors[f"{p}.self_attn.q_proj.weight"] = np.roll(base[:hidden], shift + 1)
        tensors[f"{p}.self_attn.k_proj.weight"] = np.roll(base[:hidden], shift + 2)
        tensors[f"{p}.self_attn.v_proj.weight"] = np.roll(base[:hidden], shift + 3)
        tensors[f"{p}.self_attn.o_proj.weight"] = np.roll(base[:hidden], shift + 4)
        tensors[f"{p}.mlp.up_proj.weight"] = np.roll(base, shift + 5)
        tensors[f"{p}.mlp.down_proj.weight"] = np.roll(base, shift + 6).T.copy()
        tensors[f"{p}.input_layernorm.weight"] = np.ones(hidden, np.float16)
    trusted = folder / "trusted.safetensors"
    save_file(tensors, str(trusted))
    target = f"model.layers.{n_layers // 2}.mlp.up_proj.weight"
    changed = tensors[target].copy()
    changed[1000:1064, 500:564] += np.float16(0.01)
    tensors[target] = changed
    deployed = folder / "deployed.safetensors"
    save_file(tensors, str(deployed))
    return trusted, deployed, target


def run(args: list[str]) -> tuple[int, float, int]:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH "))
    _, code, seconds, rss = line.split()
    return int(code), float(seconds), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the models")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="modelseal-bench-", dir=opts.dir))
    try:
        t = time.perf_counter()
        trusted, deployed, target = build_model(folder, opts.size_gb)
        size = trusted.stat().st_size
        built = time.perf_counter() - t
        print(f"model: {size / 1e9:.2f} GB fp16 safetensors, built in {built:.1f} s")
        print(f"cores: {os.cpu_count()}; page cache warm; best of {opts.repeat} runs\n")
        out = folder / "manifest.json"
        cases = {
            "manifest": ["manifest", str(trusted), "-o", str(out), "-q"],
            "diff (one 64x64 block)": [
                "diff",
                str(trusted),
                str(deployed),
                "-q",
                "--format",
                "json",
                "-o",
                str(folder / "diff.json"),
            ],
        }
        run(cases["manifest"])  # warm the page cache for both files
        run(cases["diff (one 64x64 block)"])
        print(f"{'command':26} {'seconds':>8} {'GB/s':>7} {'peak RSS MB':>12}")
        for label, argv in cases.items():
            best = min((run(argv) for _ in range(opts.repeat)), key=lambda r: r[1])
            code, seconds, rss = best
            print(
                f"{label:26} {seconds:8.2f} {size / 1e9 / seconds:7.2f} {rss / 1e6:12.0f}"
                f"   (exit {code})"
            )
        report = json.loads((folder / "diff.json").read_text())
        changed = [t["name"] for t in report["tensors"] if t["status"] != "identical"]
        print(f"\ndiff found: {changed} (planted in {target})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
