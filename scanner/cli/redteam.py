"""``modelseal redteam``: plant one catalogued attack (or apply a benign twin) into a copy
of the user's model and write its ground truth."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scanner.errors import UsageError


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "redteam",
        help="plant a catalogued attack or a benign twin into a copy of a model",
        description=(
            "Write a copy of MODEL (safetensors, ONNX or GGUF) with one attack of the threat "
            "catalogue planted (--attack) or one benign transformation applied "
            "(--transform), and OUT.groundtruth.json saying what changed, where and with "
            "which parameters. The copy's metadata is the source's (no fingerprint a gate "
            "could key on); --mark adds a modelseal.redteam metadata key for copies handed "
            "around, never for measuring detection. Graph backdoors are run under "
            "onnxruntime to check that they fire on their trigger and leave clean outputs "
            "unchanged. See docs/redteam.md."
        ),
        epilog="Exit codes: 0 written, 2 could not complete (unknown name, wrong format).",
    )
    parser.add_argument("model", type=Path, nargs="?", help="the model to copy")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--attack", metavar="NAME", help="attack to plant")
    what.add_argument("--transform", metavar="NAME", help="benign transformation to apply")
    what.add_argument("--list", action="store_true", help="list attacks and transforms")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--strength",
        type=float,
        metavar="X",
        help="the entry's strength parameter (see --list; default: its middle sweep value)",
    )
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra parameter, e.g. tensor=NAME (repeat)",
    )
    parser.add_argument(
        "--mark",
        action="store_true",
        help="write a modelseal.redteam key into the copy's metadata (a metadata change: "
        "strict packs fail it on MS208, so never gate a marked copy to measure detection)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="output model path, never the input; its extension must be the written "
        "format's (the ground truth goes to OUT.groundtruth.json)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.redteam import registry
    from scanner.redteam.groundtruth import truth_path

    if args.list:
        for row in registry.describe():
            strength = (
                f" [{row['strength_name']}: {', '.join(f'{s:g}' for s in row['sweep'])}]"
                if row["strength_name"]
                else ""
            )
            sys.stdout.write(
                f"{row['kind']:9} {row['name']:17} {'/'.join(row['formats']):22} "
                f"{row['summary']}{strength}\n"
            )
        return 0
    name = args.attack or args.transform
    if args.model is None or name is None or args.output is None:
        raise UsageError("give MODEL, --attack NAME or --transform NAME, and -o OUT (or --list)")
    _refuse_overwriting_input(args.model, args.output)
    entry = registry.get(name)
    wanted = "attack" if args.attack else "transform"
    if entry.kind != wanted:
        raise UsageError(f"{name} is a {entry.kind}; use --{entry.kind}")
    truth = registry.plant(
        args.model,
        name,
        args.output,
        seed=args.seed,
        strength=args.strength,
        params=dict(args.param),
        exact_output=True,
        mark=args.mark,
    )
    strength = f", {entry.strength_name} {truth.strength:g}" if truth.strength is not None else ""
    what = f"{len(truth.tensors)} tensor{'' if len(truth.tensors) == 1 else 's'}"
    if truth.nodes:
        what += f" and {len(truth.nodes)} graph node{'' if len(truth.nodes) == 1 else 's'}"
    sys.stdout.write(
        f"wrote {truth.output}: {entry.kind} {name} (seed {truth.seed}{strength}) changed "
        f"{what}; ground truth in {truth_path(Path(truth.output))}\n"
    )
    if truth.claim:
        sys.stdout.write(f"  it claims to be: {truth.claim}\n")
    verification = truth.verification
    if verification:
        fires = bool(verification.get("fires_on_trigger"))
        clean = bool(verification.get("clean_unchanged"))
        sys.stdout.write(
            f"  under onnxruntime: {'fires' if fires else 'does NOT fire'} on its trigger, "
            f"clean outputs {'unchanged' if clean else 'CHANGED'}\n"
        )
        if not (fires and clean):
            sys.stderr.write(
                "modelseal redteam: warning: the planted backdoor did not behave as "
                "planned under onnxruntime (see the ground truth)\n"
            )
    return 0


def _refuse_overwriting_input(model: Path, output: Path) -> None:
    """The copy never replaces or lands inside the user's model."""
    if not model.exists():
        return  # the reader says so, with the usual message
    same = output.exists() and os.path.samefile(model, output)
    inside = model.is_dir() and model.resolve() in output.resolve().parents
    if same or output.resolve() == model.resolve() or inside:
        raise UsageError(
            f"-o {output} would overwrite the input model {model}; write the copy elsewhere"
        )
