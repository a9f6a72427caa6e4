"""``modelseal rules``: list, show and document the rule catalogue (optionally as a
rules pack configures it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.errors import UsageError
from scanner.rulebook import RULES, all_rules, rule_markdown, rules_markdown


def _pack_option(parser: argparse.ArgumentParser) -> None:
    from scanner.cli.common import rules_option

    parser.add_argument(
        "--rules",
        type=rules_option,
        default="",
        metavar="PACK_OR_PATH",
        help="show severities and thresholds as this rules pack sets them",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rules",
        help="list, show and document the rules findings refer to",
        description="Every finding names a rule; this command documents them. With --rules, "
        "severities and thresholds are those of a rules pack (default, strict, audit or a "
        "file).",
    )
    sub = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="one line per rule")
    _pack_option(listing)
    listing.set_defaults(handler=_list)
    show = sub.add_parser("show", help="the documentation of one rule")
    show.add_argument("rule_id", metavar="ID", help="rule id, e.g. MS201")
    _pack_option(show)
    show.set_defaults(handler=_show)
    docs = sub.add_parser("docs", help="write the rules reference (docs/rules.md)")
    docs.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout"
    )
    _pack_option(docs)
    docs.set_defaults(handler=_docs)


def _list(args: argparse.Namespace) -> int:
    pack = args.rules
    for rule in all_rules():
        severity = rule.severity
        note = ""
        if pack is not None:
            settings = pack.rules.get(rule.id)
            if settings is not None and settings.severity is not None:
                severity = settings.severity
            if settings is not None and settings.enabled is False:
                note = "  (disabled)"
        sys.stdout.write(f"{rule.id}  {severity!s:8}  {rule.name:34}  {rule.title}{note}\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    all_rules()
    rule = RULES.get(args.rule_id.upper())
    if rule is None:
        raise UsageError(f"unknown rule id {args.rule_id!r}; see `modelseal rules list`")
    sys.stdout.write(rule_markdown(rule, args.rules))
    return 0


def _docs(args: argparse.Namespace) -> int:
    text = rules_markdown(args.rules)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
