"""``modelseal rules``: list, show and document the rule catalogue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.errors import UsageError
from scanner.rulebook import RULES, all_rules, rule_markdown, rules_markdown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rules", help="list, show and document the rules findings refer to",
        description="Every finding names a rule; this command documents them.",
    )
    sub = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="one line per rule").set_defaults(handler=_list)
    show = sub.add_parser("show", help="the documentation of one rule")
    show.add_argument("rule_id", metavar="ID", help="rule id, e.g. MS201")
    show.set_defaults(handler=_show)
    docs = sub.add_parser("docs", help="write the rules reference (docs/rules.md)")
    docs.add_argument("-o", "--output", type=Path, metavar="FILE",
                      help="write to FILE instead of stdout")
    docs.set_defaults(handler=_docs)


def _list(args: argparse.Namespace) -> int:
    for rule in all_rules():
        sys.stdout.write(f"{rule.id}  {str(rule.severity):8}  {rule.name:34}  {rule.title}\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    all_rules()
    rule = RULES.get(args.rule_id.upper())
    if rule is None:
        raise UsageError(f"unknown rule id {args.rule_id!r}; see `modelseal rules list`")
    sys.stdout.write(rule_markdown(rule))
    return 0


def _docs(args: argparse.Namespace) -> int:
    text = rules_markdown()
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
