"""Run the evaluation protocol on the real fixture models and print the docs table.

    python benchmarks/run_evaluation.py [--seeds 3] [--json out.json] [--plot-dir DIR]

The Markdown it prints is what docs/evaluation.md publishes (with the date, the machine
and the modelseal commit added by hand).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS, SILERO_ST, TASHKEEL_INT8
from scanner.evaluate import evaluate, plot_detection, render_table, to_json

MODELS = {
    "silero-vad (safetensors, conv + LSTM)": (SILERO_ST, None),
    "rapidocr cls (ONNX CNN)": (RAPIDOCR_CLS, None),
    "tashkeel (ONNX int8, token ids)": (TASHKEEL_INT8, ["token-trigger", "ort-optimize", "rename"]),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rules", default="default")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot-dir", type=Path)
    args = ap.parse_args()
    for title, (key, names) in MODELS.items():
        ev = evaluate(real_model(key), names=names, seeds=args.seeds, pack=args.rules)
        sys.stdout.write(f"\n### {title}\n\n")
        sys.stdout.write(render_table(ev, markdown=True))
        if args.json:
            args.json.with_name(f"{args.json.stem}-{key}.json").write_text(to_json(ev))
        if args.plot_dir:
            plot_detection(ev, args.plot_dir / f"{key}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
