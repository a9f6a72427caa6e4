"""Time ``modelseal sign`` against ``model_signing sign key`` on the same generated files.

    python benchmarks/bench_signing.py [--size-gb 1.5] [--files 6] [--repeat 2]

Files are numpy random bytes in a temporary folder (removed afterwards). Both tools sign
with the same EC P-256 key; the page cache is warmed first so both read from memory, and
runs alternate so neither gets a warmer cache. Prints each time and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_files(folder: Path, size_gb: float, files: int) -> int:
    rng = np.random.default_rng(0)
    per_file = int(size_gb * 1e9) // files
    block = 64 * 1024 * 1024
    for i in range(files):
        with open(folder / f"shard-{i:03d}.bin", "wb") as handle:
            left = per_file
            while left:
                n = min(block, left)
                handle.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                left -= n
    return per_file * files


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("model_signing") is None:
        sys.exit("model_signing is not installed (pip install model-signing)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-signing-"))
    try:
        model = tmp / "model"
        model.mkdir()
        total = make_files(model, args.size_gb, args.files)
        key = tmp / "key.pem"
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            check=True,
        )
        for f in model.iterdir():  # warm the page cache for both tools
            with open(f, "rb") as handle:
                while handle.read(16 << 20):
                    pass
        ours_cmd = [
            sys.executable,
            "-m",
            "scanner.cli.main",
            "sign",
            str(model),
            "--key",
            str(key),
            "-o",
            str(tmp / "ours.sig"),
        ]
        theirs_cmd = [
            "model_signing",
            "sign",
            "key",
            str(model),
            "--private_key",
            str(key),
            "--signature",
            str(tmp / "theirs.sig"),
        ]
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(timed(ours_cmd))
            theirs.append(timed(theirs_cmd))
        best_ours, best_theirs = min(ours), min(theirs)
        gb = total / 1e9
        print(f"data: {gb:.2f} GB in {args.files} files; best of {args.repeat} runs")
        print(f"modelseal sign           {best_ours:7.2f} s  {gb / best_ours:6.2f} GB/s")
        print(f"model_signing sign key   {best_theirs:7.2f} s  {gb / best_theirs:6.2f} GB/s")
        print(f"ratio model_signing / modelseal: {best_theirs / best_ours:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
