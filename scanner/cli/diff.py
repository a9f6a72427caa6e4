"""``modelseal diff TRUSTED DEPLOYED``."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanner.cli.common import add_output_options, allow_option, emit
from scanner.cli.progress import progress_for


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="compare a deployed artifact with the trusted one",
        description=(
            "Compare DEPLOYED with TRUSTED tensor by tensor: which tensors are identical, "
            "cast, changed (how much, and which rows / columns / blocks), added, removed or "
            "renamed; plus changes to graph, metadata and other files. Any unexplained "
            "change fails; a fine-tune, LoRA merge or pruning fails too until --allow, a "
            "claim or a rules pack accepts it."
        ),
        epilog="Exit codes: 0 pass, 1 policy failure, 2 could not complete.\n"
        "Example: modelseal diff trusted/ deployed/ --format sarif -o diff.sarif",
    )
    parser.add_argument("trusted", type=Path, help="the trusted artifact (file or model folder)")
    parser.add_argument("deployed", type=Path, help="the artifact to check (file or model folder)")
    parser.add_argument(
        "--claim",
        metavar="KIND[:PARAMS]",
        action="append",
        default=[],
        help="the transformation DEPLOYED claims to be (e.g. cast:fp16, quantize:int8, "
        "prune:2:4); it is re-derived from TRUSTED and checked tensor by tensor",
    )
    parser.add_argument(
        "--allow",
        metavar="CLASS",
        type=allow_option,
        action="append",
        default=[],
        help="accept a class of change (e.g. finetune, lora, prune; an unknown class is "
        "refused with the list); never accepts localized edits found inside it; repeatable",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="ONNX: also run both models on random and structured probe inputs and compare "
        "outputs (needs onnxruntime: pip install 'modelseal[runtime]')",
    )
    parser.add_argument(
        "--probe-budget",
        metavar="SECONDS",
        type=float,
        default=20.0,
        help="time budget of the behavioural check per model pair (default 20)",
    )
    add_output_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.diff import diff_open
    from scanner.formats import open_artifact
    from scanner.report.build import report_from_diff, with_notes

    progress = progress_for(args.quiet)
    with open_artifact(args.trusted) as trusted, open_artifact(args.deployed) as deployed:
        notes = []
        probe = args.probe
        if probe and not (trusted.format == deployed.format == "onnx"):
            probe = False
            notes.append(
                "--probe was not applied: it runs two ONNX models, and this pair is "
                f"{trusted.format} / {deployed.format}"
            )
        options = {
            "claims": list(args.claim),
            "allow": list(args.allow),
            "probe": probe,
            "probe_budget": args.probe_budget,
        }
        result = diff_open(trusted, deployed, options=options, progress=progress)
        report = with_notes(report_from_diff(result, args.fail_on), notes)
    return emit(report, args)
