"""modelseal commands against their anchors, side by side, as whole commands.

    python benchmarks/bench_commands.py [--gb 1.6] [--shards 1] [--rounds 3] [--dir DIR]
        [--shard-size 256M] [--only WORK ...]

Writes a llama-shaped fp16 safetensors model of about --gb decimal GB (``--shards`` files
plus an index) and its twins (byte copy, one 64x64 block changed, bf16 cast, int8
per-channel codes with scales; ``benchmarks/scale_models.py``) under --dir (kept and
reused when present), warms the page cache, then runs every pair of commands in
interleaved rounds (modelseal, anchor, modelseal, anchor ...) so that neither side gets a
quieter machine or a warmer cache. Each command is a fresh process, start-up included;
peak RSS is the child's own (``wait4``). Prints the median seconds, the peak RSS and the
ratio modelseal / anchor per work, with the goal.

Anchors: ``model_signing sign key`` / ``verify key`` (also the anchor of ``manifest``,
which hashes every file and every tensor, and of ``sign --shard-size`` / ``verify (shard
signature)``, modelseal's OMS "shards" serialization, which hashes ranges of one file on
all cores; the anchor stays the default "files" method, the one ``model_signing`` can
verify), and ``benchmarks/numpy_diff.py`` (a plain
numpy memmap diff) for ``diff``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.scale_models import write_model, write_signing_key, write_twin  # noqa: E402

TWINS = ("identical", "block", "cast", "int8")


def model_signing_cmd() -> str:
    """The real console script, not a version-manager shim (modelseal runs as
    ``python -m`` here, so neither side pays a wrapper's start-up)."""
    beside = Path(sys.executable).with_name("model_signing")
    if beside.exists():
        return str(beside)
    found = shutil.which("model_signing")
    if not found:
        sys.exit("model_signing is not installed (pip install model-signing)")
    return found


def run(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Wall seconds and the child's peak RSS in bytes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if code not in ok:
        raise SystemExit(f"{' '.join(cmd)} exited {code}:\n{err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def in_child(func: Callable[..., None], *args: object) -> None:
    """Run ``func(*args)`` in a child process: writing a model grows the writer's memory,
    and Linux reports a parent's resident set at fork as part of each child's peak."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=func, args=args)
    proc.start()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"writing the models failed (exit {proc.exitcode})")


def build(root: Path, gb: float, shards: int, twins: tuple[str, ...] = TWINS) -> None:
    marker = root / f".built-{gb}-{shards}-{'-'.join(twins)}"
    if marker.exists() or (root / f".built-{gb}-{shards}").exists():
        return
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    print(f"writing a {gb} GB fp16 model in {shards} shard(s) and its twins in {root} ...")
    write_model(root / "base", gb, "F16", shards)
    for kind in twins:
        write_twin(root / "base", root / kind, kind, gb, "F16", shards)
    write_signing_key(root)
    marker.touch()


def warm(root: Path) -> None:
    for f in sorted(root.rglob("*.safetensors")):
        with open(f, "rb", buffering=0) as handle:
            while handle.read(64 << 20):
                pass


def works(
    root: Path, shard_size: str = "256M"
) -> list[tuple[str, list[str], str, list[str], float]]:
    ms = [sys.executable, "-m", "scanner.cli.main"]
    oms = model_signing_cmd()
    base, out = root / "base", root / "out"
    out.mkdir(exist_ok=True)
    sign_ms = [*ms, "sign", str(base), "--key", str(root / "key.pem"), "-o", str(out / "ms.sig")]
    sign_oms = [oms, "sign", "key", str(base), "--private_key", str(root / "key.pem")]
    sign_oms += ["--signature", str(out / "oms.sig")]
    verify_ms = [*ms, "verify", str(base), "--signature", str(out / "ms.sig")]
    verify_ms += ["--public-key", str(root / "pub.pem"), "-q"]
    verify_oms = [oms, "verify", "key", str(base), "--signature", str(out / "oms.sig")]
    verify_oms += ["--public_key", str(root / "pub.pem")]
    shard_sig = str(out / "ms-shards.sig")
    sign_shards = [*sign_ms[:-1], shard_sig, "--shard-size", shard_size]
    verify_shards = [*ms, "verify", str(base), "--signature", shard_sig]
    verify_shards += ["--public-key", str(root / "pub.pem"), "-q"]
    anchor = [sys.executable, str(REPO / "benchmarks" / "numpy_diff.py")]
    out_json = str(out / "diff.json")
    rows = [
        ("sign", sign_ms, "model_signing sign key", sign_oms, 0.67),
        ("verify", verify_ms, "model_signing verify key", verify_oms, 0.67),
        (f"sign --shard-size {shard_size}", sign_shards, "model_signing sign key", sign_oms, 0.67),
        ("verify (shard signature)", verify_shards, "model_signing verify key", verify_oms, 0.67),
        (
            "manifest",
            [*ms, "manifest", str(base), "-o", str(out / "manifest.json"), "-q"],
            "model_signing sign key",
            sign_oms,
            0.67,
        ),
    ]
    labels = {
        "identical": "diff, identical copy",
        "block": "diff, one 64x64 block changed",
        "cast": "diff, bf16 cast",
        "int8": "diff, int8 per-channel",
    }
    goals = {"identical": 1.0, "block": 1.0, "cast": 0.5, "int8": 0.5}
    for kind in TWINS:
        twin = str(root / kind)
        rows.append(
            (
                labels[kind],
                [*ms, "diff", str(base), twin, "-q", "--format", "json", "-o", out_json],
                "numpy memmap diff",
                [*anchor, str(base), twin],
                goals[kind],
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.6, help="model size, decimal GB")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/modelseal-bench-commands"))
    parser.add_argument(
        "--shard-size",
        default="256M",
        metavar="SIZE",
        help="shard size of the 'sign --shard-size' row (default 256M)",
    )
    parser.add_argument("--only", nargs="+", metavar="WORK", help="works whose name starts so")
    args = parser.parse_args()
    root = args.dir / f"{args.gb}gb-{args.shards}shards"
    # Twins are written only when a diff is asked for.
    diffs = not args.only or any(o.startswith("diff") for o in args.only)
    in_child(build, root, args.gb, args.shards, TWINS if diffs else ())
    warm(root)
    size = sum(f.stat().st_size for f in (root / "base").iterdir())
    print(f"model: {size / 1e9:.2f} GB fp16 in {args.shards} shard(s); {os.cpu_count()} cores")
    table = []
    for label, ours, anchor_label, theirs, goal in works(root, args.shard_size):
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        ok = (0, 1)  # a changed pair fails policy (exit 1): that is its correct verdict
        t_ours, t_theirs, rss = [], [], []
        for _ in range(args.rounds):
            s, r = run(ours, ok)
            t_ours.append(s)
            rss.append(r)
            t_theirs.append(run(theirs)[0])
        m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
        ratio = m_ours / m_theirs
        table.append((label, m_ours, max(rss), anchor_label, m_theirs, ratio, goal))
        print(
            f"  {label}: {m_ours:.2f} s ({max(rss) / 2**20:.0f} MiB) vs {anchor_label} "
            f"{m_theirs:.2f} s -> {ratio:.2f}x",
            flush=True,
        )
    print()
    print("| work | modelseal | peak RSS | anchor | ratio | goal |")
    print("|---|---|---|---|---|---|")
    for label, m_ours, rss, anchor_label, m_theirs, ratio, goal in table:
        mark = "met" if ratio <= goal else "missed"
        print(
            f"| `{label}` | {m_ours:.2f} s | {rss / 2**20:.0f} MiB | {anchor_label} "
            f"{m_theirs:.2f} s | {ratio:.2f}x | <= {goal}x ({mark}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
