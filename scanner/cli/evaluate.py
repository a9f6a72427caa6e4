"""``modelseal evaluate``: the evaluation protocol on the user's model (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.findings import Severity


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="plant every attack and benign twin, run the gate, score detection",
        description=(
            "For each attack and benign twin of `modelseal redteam` that applies to MODEL, "
            "over --seeds K and each entry's strength sweep: plant into a copy, run the gate "
            "(diff + scan, judged by --rules PACK, else --fail-on), and score detection, "
            "localization (a failing finding names a truly changed tensor or node), false "
            "alarms on the benign twins and time. Prints a table; --json and --plot write "
            "the full record and detection-vs-strength plots."
        ),
        epilog="Exit codes: 0 done, 2 could not complete.",
    )
    parser.add_argument("model", type=Path)
    parser.add_argument(
        "--attacks",
        nargs="+",
        metavar="NAME",
        help="entries to run (attacks and/or transforms; default: all that "
        "apply to the model's format)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, metavar="K", help="seeds 0..K-1 per strength (default 3)"
    )
    parser.add_argument(
        "--rules",
        metavar="PACK",
        help="judge by this rules pack (default, strict, audit, or a file)",
    )
    parser.add_argument(
        "--fail-on",
        type=Severity.parse,
        default=Severity.MEDIUM,
        metavar="SEVERITY",
        help="threshold without a pack (default medium)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the full record")
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="detection vs strength (needs the plots extra)"
    )
    parser.add_argument("--markdown", action="store_true", help="table in Markdown")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.errors import UsageError
    from scanner.evaluate import evaluate, plot_detection, render_table, to_json

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    ev = evaluate(
        args.model,
        names=args.attacks,
        seeds=args.seeds,
        pack=args.rules,
        fail_on=args.fail_on,
        progress=lambda line: sys.stderr.write(f"  {line}\n"),
    )
    sys.stdout.write(render_table(ev, markdown=args.markdown))
    if args.json is not None:
        args.json.write_text(to_json(ev), encoding="utf-8")
    if args.plot is not None:
        plot_detection(ev, args.plot)
    return 0
