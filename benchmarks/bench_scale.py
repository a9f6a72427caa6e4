"""Time, throughput and peak memory of every command on a large sharded model.

    python benchmarks/bench_scale.py [--gb 20] [--dtypes F16 BF16] [--shard-gb 2] [--dir DIR]

Writes, per dtype, a llama-shaped safetensors model of about --gb decimal GB in shards of
about --shard-gb with its index, a byte-identical twin, a twin with one 64x64 block
changed, and a cast twin (fp16 -> bf16, bf16 -> fp16; ``benchmarks/scale_models.py``),
under --dir (kept and reused when present; needs about 3 x --gb per dtype of disk: the
one-block twin links its unchanged shards to the model's). Then runs
``manifest``, ``sign``, ``verify`` and ``diff`` (identical, one block, cast) once each as
fresh processes, the files each reads warmed in the page cache first, and prints seconds,
throughput (model bytes per second; a diff reads two models), the child's peak RSS and
the linear extrapolation of the time to a 100 GB model.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_commands import in_child, run, warm  # noqa: E402
from benchmarks.scale_models import write_model, write_signing_key, write_twin  # noqa: E402

TWINS = ("identical", "block", "cast")


def build(root: Path, gb: float, dtype: str, shards: int) -> None:
    marker = root / f".built-{gb}-{dtype}-{shards}"
    if marker.exists():
        return
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    print(f"writing a {gb} GB {dtype} model in {shards} shards and its twins in {root} ...")
    write_model(root / "base", gb, dtype, shards)
    for kind in TWINS:
        write_twin(root / "base", root / kind, kind, gb, dtype, shards)
    write_signing_key(root)
    marker.touch()


def commands(root: Path) -> list[tuple[str, list[str], int]]:
    """(label, argv, how many models the command reads)."""
    ms = [sys.executable, "-m", "scanner.cli.main"]
    base, out = str(root / "base"), root / "out"
    out.mkdir(exist_ok=True)
    sig = str(out / "model.sig")
    rows = [
        ("manifest", [*ms, "manifest", base, "-o", str(out / "manifest.json"), "-q"], 1),
        ("sign", [*ms, "sign", base, "--key", str(root / "key.pem"), "-o", sig, "-q"], 1),
        ("verify", [*ms, "verify", base, "--signature", sig, "--public-key"], 1),
    ]
    rows[-1][1].extend([str(root / "pub.pem"), "-q"])
    for kind, label in (
        ("identical", "diff identical"),
        ("block", "diff one block"),
        ("cast", "diff cast"),
    ):
        argv = [*ms, "diff", base, str(root / kind), "-q", "--format", "json"]
        rows.append((label, [*argv, "-o", str(out / f"diff-{kind}.json")], 2))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=20.0, help="model size, decimal GB")
    parser.add_argument("--dtypes", nargs="+", default=["F16", "BF16"], choices=["F16", "BF16"])
    parser.add_argument("--shard-gb", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/modelseal-bench-scale"))
    args = parser.parse_args()
    shards = max(2, math.ceil(args.gb / args.shard_gb))
    print("| model | command | seconds | throughput | peak RSS | at 100 GB |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        root = args.dir / f"{args.gb}gb-{dtype}"
        in_child(build, root, args.gb, dtype, shards)
        size = sum(f.stat().st_size for f in (root / "base").iterdir())
        for label, argv, reads in commands(root):
            # Page cache warm with what the command reads: the figures are the tool's,
            # not the disk's (on a model larger than memory, add the disk's read time).
            warm(root / "base")
            if reads == 2:
                warm(Path(argv[argv.index("diff") + 2]))
            seconds, rss = run(argv, ok=(0, 1))  # a changed pair fails policy: exit 1
            print(
                f"| {size / 1e9:.1f} GB {dtype}, {shards} shards | `{label}` | {seconds:.1f} s | "
                f"{reads * size / seconds / 1e9:.2f} GB/s | {rss / 2**20:.0f} MiB | "
                f"{seconds * 100e9 / size / 60:.1f} min |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
