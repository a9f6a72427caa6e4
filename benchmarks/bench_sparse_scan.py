"""Peak memory of `modelseal scan` on a valid, sparse safetensors file of --gb GB.

    python benchmarks/bench_sparse_scan.py [--gb 4] [--dir DIR]

The file is one float32 tensor of zeros whose bytes are a hole in the file (written with
``truncate``): it takes no disk space, but every byte of it is read and analysed. The
scan runs as a fresh process; its peak RSS comes from ``wait4``. Prints seconds, peak
RSS and the 1 GB goal.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_commands import run  # noqa: E402

GOAL_BYTES = 1 << 30


def write_sparse(path: Path, gb: float) -> int:
    """A safetensors file holding one square-ish float32 tensor of about ``gb`` GB."""
    rows = 32768
    cols = max(1, int(gb * 1e9) // 4 // rows)
    nbytes = rows * cols * 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, nbytes]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + nbytes)
    return nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="tensor size, decimal GB")
    parser.add_argument("--dir", type=Path, help="where to write the file (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "sparse.safetensors"
        nbytes = write_sparse(path, args.gb)
        cmd = [sys.executable, "-m", "scanner.cli.main", "scan", str(path), "--format", "json"]
        seconds, peak = run(cmd)
    verdict = "met" if peak < GOAL_BYTES else "missed"
    print(
        f"scan of a sparse {nbytes / 1e9:.1f} GB safetensors file: {seconds:.1f} s, "
        f"peak RSS {peak / 2**20:.0f} MiB (goal < 1 GiB: {verdict})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
