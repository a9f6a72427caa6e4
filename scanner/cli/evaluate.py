"""``modelseal evaluate``: the evaluation protocol on the user's model (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from scanner.cli.common import add_fail_on, explicit_fail_on, write_text
from scanner.errors import UsageError

FORMATS = ("text", "markdown", "json")
SUITES = ("catalogue", "tamper", "sweep", "combination", "adaptive")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="plant attacks, tampering and benign twins, run the gate, score detection",
        description=(
            "For each attack and benign twin of `modelseal redteam` that applies to MODEL, "
            "over --seeds K and each entry's strength sweep: plant into a copy, run the gate "
            "(diff + scan, judged by --rules PACK, else --fail-on), and score detection, "
            "localization (a failing finding names a truly changed tensor or node), false "
            "alarms on the benign twins and time, each rate with its 95% Wilson interval. "
            "--suite chooses what runs (default catalogue; all for everything): tamper "
            "(generic tampering by region and magnitude: the smallest "
            "change the gate notices per tensor kind), sweep (every attacker-controlled "
            "planter parameter), combination (each attack with each benign twin, both "
            "orders), adaptive (attacks shrunk under an allowed cover, success measured by "
            "running the model). Prints tables (--format text or markdown) or the full "
            "record (--format json); --plot draws detection against strength, magnitude "
            "and attack success."
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
        "--suite",
        nargs="+",
        choices=(*SUITES, "all"),
        default=["catalogue"],
        metavar="NAME",
        help=f"what to run: {', '.join(SUITES)} or all (default catalogue)",
    )
    parser.add_argument(
        "--twins",
        nargs="+",
        metavar="NAME",
        help="benign twins for --suite combination (default: a fixed set, see docs/evaluation.md)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="trimmed strengths, magnitudes and grids"
    )
    parser.add_argument(
        "--rules",
        metavar="PACK",
        help="judge by this rules pack (default, strict, audit, or a file)",
    )
    add_fail_on(parser, default=None)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default="text",
        help="text table, markdown table, or json (the full record); default text",
    )
    output.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the result to FILE, not stdout"
    )
    output.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="detection vs strength, tamper magnitude and attack success (needs the plots extra)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.cli.common import check_output_path

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if args.plot is not None:
        # Refused before the run, which can take minutes, not after it.
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'modelseal[plots]'")
        check_output_path(args.plot, what="plot")
    if args.rules:
        from scanner.policy import PackError, load_pack

        try:
            load_pack(args.rules)
        except PackError as exc:
            raise UsageError(str(exc)) from None
    if args.attacks:
        from scanner.redteam import registry

        known = {e.name for e in registry.ENTRIES}
        unknown = [a for a in (*args.attacks, *(args.twins or ())) if a not in known]
        if unknown:
            raise UsageError(
                f"unknown entries {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
            )
    elif args.twins:
        from scanner.redteam import registry

        unknown = [a for a in args.twins if a not in registry.TRANSFORMS]
        if unknown:
            raise UsageError(
                f"not benign twins: {', '.join(unknown)}; choose from "
                f"{', '.join(registry.TRANSFORMS)}"
            )
    suites = SUITES if "all" in args.suite else tuple(dict.fromkeys(args.suite))

    from scanner.evaluate import evaluate, plot_detection, render_table, to_json

    ev = evaluate(
        args.model,
        names=args.attacks,
        seeds=args.seeds,
        pack=args.rules,
        fail_on=explicit_fail_on(args),
        suites=suites,
        twins=args.twins,
        quick=args.quick,
        progress=lambda line: sys.stderr.write(f"  {line}\n"),
    )
    if args.format == "json":
        write_text(args, to_json(ev))
    else:
        write_text(args, render_table(ev, markdown=args.format == "markdown"))
    if args.plot is not None:
        plot_detection(ev, args.plot)
    return 0
