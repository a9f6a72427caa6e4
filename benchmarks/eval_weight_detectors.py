"""Detection / false-positive matrix of the weight-change detectors over random seeds.

Each case plants one attack (or one benign transformation) into real weights with a
fresh seed (random layers, channels, magnitudes) and runs the weight analyzer. An attack
counts as detected when the expected rule fires; a benign case counts a false positive
when any attack rule (MS301-MS307) fires.

    python benchmarks/eval_weight_detectors.py --seeds 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import real_model
from fixtures.real_models import MINILM, RAPIDOCR_CLS
from scanner.analysis.outliers import module_type
from scanner.checks import weights as weight_checks
from scanner.diff import diff_open
from scanner.formats import open_artifact
from scanner.redteam import weights as rt
from scanner.redteam.weights import ChainLayer
from tests.analysis.weights_io import onnx_weights, write_onnx, write_safetensors

ATTACK_RULES = {"MS301", "MS302", "MS303", "MS304", "MS305", "MS306", "MS307"}
Case = Callable[[np.random.Generator, int], tuple[dict, bool]]


def _cnn_layer(name: str) -> ChainLayer:
    if name == "fc_0.w_0":
        return ChainLayer(name, 1, 0, ("fc_0.b_0",))
    p = name.removesuffix("_weights")
    return ChainLayer(
        name, params=tuple(f"{p}_bn_{x}" for x in ("scale", "offset", "mean", "variance"))
    )


def _block_path(i: int) -> list[str]:
    """intermediate -> output of block i -> intermediate of block i+1 (widths chain)."""
    return [
        f"encoder.layer.{i}.intermediate.dense.weight",
        f"encoder.layer.{i}.output.dense.weight",
        f"encoder.layer.{i + 1}.intermediate.dense.weight",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    mini = load_file(str(real_model(MINILM)))
    mini = {
        k: v
        for k, v in mini.items()
        if k.startswith(tuple(f"encoder.layer.{i}." for i in range(6)))
    }
    mats = sorted(k for k, v in mini.items() if v.ndim == 2)
    cnn_path = real_model(RAPIDOCR_CLS)
    cnn = onnx_weights(cnn_path)
    spine = [n for n in cnn if n.endswith("_weights") and "_se_" not in n]
    spine.sort(key=lambda n: (int("".join(c for c in n.split("_")[0] if c.isdigit()) or 99), n))
    order = {"expand": 0, "depthwise": 1, "linear": 2}
    spine.sort(key=lambda n: (int("".join(c for c in n.split("_")[0] if c.isdigit()) or 99),
                              next((v for k, v in order.items() if k in n), 0)))  # fmt: skip
    spine.append("fc_0.w_0")

    def sra(rescale: bool, last: int | None) -> Case:
        def run(rng: np.random.Generator, seed: int) -> tuple[dict, bool]:
            if last:
                layers = spine[-last:]
            else:  # a random sub-chain of the spine ending at the classifier
                start = int(rng.integers(0, len(spine) - 3))
                layers = spine[start:]
            return rt.plant_sra(cnn, [_cnn_layer(n) for n in layers], seed, rescale)[0], True

        return run

    def pick(rng: np.random.Generator, k: int, pool: list[str]) -> list[str]:
        return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]

    # An adapter targets module types in every layer: two random module types, all layers.
    module_types = sorted({module_type(m) for m in mats})

    def adapter_targets(rng: np.random.Generator) -> list[str]:
        chosen = set(pick(rng, 2, module_types))
        return [m for m in mats if module_type(m) in chosen]

    cases: dict[str, tuple[str, str | None, Case]] = {
        "SRA full chain": ("cnn", "MS301", sra(False, None)),
        "SRA last 3, rescaled": ("cnn", "MS301", sra(True, 3)),
        "handcrafted path": ("st", "MS302", lambda r, s: (rt.plant_handcrafted(
            mini, _block_path(int(r.integers(0, 5))), s)[0], False)),
        "ROME rank-1 @1%": ("st", "MS303", lambda r, s: (rt.plant_rank1(
            mini, pick(r, 1, mats)[0], s, float(r.uniform(0.005, 0.02)))[0], False)),
        "abliteration": ("st", "MS304", lambda r, s: (rt.plant_abliteration(
            mini, [m for m in mats if m.endswith("output.dense.weight")], s)[0], False)),
        "low-byte payload 10%": ("st", "MS305", lambda r, s: (rt.plant_lowbyte_payload(
            mini, pick(r, 1, mats)[0], s, 0.1)[0], False)),
        "3 exponent flips": ("st", "MS306", lambda r, s: (rt.flip_exponent_bits(
            mini, mats, s, 3)[0], False)),
        "prune-activated": ("st", "MS307", lambda r, s: (rt.plant_prune_activated(
            mini, pick(r, 1, [m for m in mats if "intermediate" in m])[0], s)[0], False)),
        "LoRA r=8 0.5% bf16": ("st", None, lambda r, s: (rt.lora_merge(
            mini, adapter_targets(r), s, 8, 0.005)[0], True)),
        "LoRA r=8 2% bf16": ("st", None, lambda r, s: (rt.lora_merge(
            mini, adapter_targets(r), s, 8, 0.02)[0], True)),
        "full fine-tune": ("st", None, lambda r, s: (rt.simulate_finetune(
            mini, s, float(r.uniform(0.002, 0.02)))[0], False)),
        "magnitude prune 30%": ("st", None, lambda r, s: (rt.magnitude_prune(mini, mats, 0.3)[0], False)),  # noqa: E501
        "2:4 prune": ("st", None, lambda r, s: (rt.nm_prune(mini, mats)[0], False)),
        "DARE merge": ("st", None, lambda r, s: (rt.dare_merge(
            mini, s, float(r.uniform(0.5, 0.95)))[0], False)),
        "DARE on weights": ("st", None, lambda r, s: (rt.dare_merge(
            mini, s, float(r.uniform(0.3, 0.7)), on_weights=True)[0], False)),
        "SRA twin: channel pruning (cnn)": ("cnn", None, None),  # filled below
    }  # fmt: skip

    def channel_prune(r: np.random.Generator, s: int) -> tuple[dict, bool]:
        w = {k: v.copy() for k, v in cnn.items()}
        c = int(r.integers(200))
        w["conv_last_weights"][c] = 0
        w["fc_0.w_0"][c] = 0
        return w, False

    cases["SRA twin: channel pruning (cnn)"] = ("cnn", None, channel_prune)
    analyzers = list(weight_checks.ANALYZERS)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        base_st = write_safetensors(t / "base.safetensors", mini)
        base_bf = write_safetensors(t / "base_bf16.safetensors", mini, bf16=True)
        base_cnn = write_onnx(cnn_path, t / "base.onnx", cnn)
        print("| case | expected | seeds | detected | false positives | classes seen | s/run |")
        print("|---|---|---|---|---|---|---|")
        for name, (kind, rule, make) in cases.items():
            hits = fps = 0
            classes: dict[str, int] = {}
            started = time.perf_counter()
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 + seed)
                weights, bf16 = make(rng, seed)  # type: ignore[misc]
                if kind == "cnn":
                    path, base = write_onnx(cnn_path, t / "d.onnx", weights), base_cnn
                else:
                    path = write_safetensors(t / "d.safetensors", weights, bf16)
                    base = base_bf if bf16 else base_st
                with open_artifact(base) as a, open_artifact(path) as b:
                    res = diff_open(a, b, analyzers=analyzers)
                fired = {f.rule_id for f in res.findings}
                classes[res.classification] = classes.get(res.classification, 0) + 1
                if rule is not None:
                    hits += rule in fired
                else:
                    fps += bool(fired & ATTACK_RULES)
            per = (time.perf_counter() - started) / args.seeds
            seen = ", ".join(f"{c} x{n}" for c, n in sorted(classes.items()))
            det = f"{hits}/{args.seeds}" if rule else "-"
            fp = f"{fps}/{args.seeds}" if rule is None else "-"
            print(f"| {name} | {rule or 'benign'} | {args.seeds} | {det} | {fp} | {seen} | {per:.2f} |",  # noqa: E501
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
