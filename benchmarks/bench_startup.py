"""Time how long commands take to start: `modelseal --help` and `modelseal scan` of a
small safetensors file, against the anchor `python -c pass` (the interpreter alone).

    python benchmarks/bench_startup.py [--repeat 5]

Each command runs as a fresh process (what a user or a CI step pays); the figure is the
median of --repeat runs after one warm-up run, so files are in the page cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]


def median_seconds(cmd: list[str], repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, capture_output=True, env=env, check=False)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp, "model.safetensors")
        rng = np.random.default_rng(0)
        save_file(
            {
                f"layer.{i}.weight": rng.standard_normal((256, 256)).astype(np.float32)
                for i in range(8)
            },
            str(model),
        )
        py = sys.executable
        rows = [
            ("python -c pass (anchor)", [py, "-c", "pass"]),
            ("modelseal --help", [py, "-m", "scanner", "--help"]),
            ("modelseal scan model.safetensors (2 MB)", [py, "-m", "scanner", "scan", str(model)]),
            (
                "modelseal scan model.safetensors -f json",
                [py, "-m", "scanner", "scan", str(model), "-f", "json"],
            ),
        ]
        anchor = None
        print(f"median of {args.repeat} runs, fresh process each")
        for label, cmd in rows:
            seconds = median_seconds(cmd, args.repeat)
            anchor = anchor if anchor is not None else seconds
            extra = "" if seconds == anchor else f"   (+{seconds - anchor:.3f} s over the anchor)"
            print(f"  {label:44s} {seconds:7.3f} s{extra}")


if __name__ == "__main__":
    main()
