"""``modelseal gate``: one command for pipelines, one verdict with all findings."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from scanner.cli.common import (
    add_output_options,
    allow_option,
    check_output_path,
    emit,
    exit_code,
    explicit_fail_on,
    rules_option,
    use_color,
)
from scanner.cli.progress import progress_for
from scanner.cli.verify import add_verifier_options, build_verifier
from scanner.errors import UsageError
from scanner.findings import Severity
from scanner.report import OutputFormat


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gate",
        help="deployment gate: signature, attestation chain, diff and scan, one verdict",
        description=(
            "Check DEPLOYED with every piece of evidence given: verify its signature "
            "(--signature and a trusted signer), verify its attestation chain "
            "(--attestations with --chain-policy), diff it against the trusted artifact "
            "(--trusted, with --claim) and scan it on its own; then judge all findings by "
            "one rules pack (--rules, default 'default'). Settings may come from "
            "modelseal.toml or [tool.modelseal] in pyproject.toml (docs/ci.md); options "
            "given here win."
        ),
        epilog="Exit codes: 0 pass, 1 policy failure, 2 could not complete (also when "
        "there is nothing to check DEPLOYED against).\n"
        "Example: modelseal gate deployed/ --trusted trusted/ --signature model.sig "
        "--public-key release.pub --rules strict -f sarif -o gate.sarif",
    )
    parser.add_argument(
        "deployed",
        type=Path,
        nargs="?",
        help="the artifact to gate (default: `deployed` in the configuration)",
    )
    parser.add_argument(
        "--trusted", type=Path, metavar="PATH", help="the trusted artifact to diff against"
    )
    parser.add_argument(
        "--signature",
        type=Path,
        metavar="model.sig",
        help="signature bundle of DEPLOYED (needs a trusted signer below)",
    )
    parser.add_argument(
        "--attestations",
        type=Path,
        metavar="DIR",
        help="folder of step attestations (*.json) ending at DEPLOYED",
    )
    parser.add_argument(
        "--chain-policy",
        type=Path,
        metavar="policy.toml",
        help="chain policy the attestations are verified against",
    )
    parser.add_argument(
        "--artifact",
        type=Path,
        action="append",
        default=None,
        metavar="PATH",
        help="intermediate artifact, so chain claims can be re-derived (repeat)",
    )
    parser.add_argument(
        "--claim",
        action="append",
        default=None,
        metavar="KIND[:PARAMS]",
        help="transformation DEPLOYED claims to be of TRUSTED (repeat)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        type=allow_option,
        default=None,
        metavar="CLASS",
        help="accept a class of change in the diff analyzers (repeat)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="gate configuration (default: modelseal.toml, else "
        "[tool.modelseal] in pyproject.toml, searched upwards from here)",
    )
    parser.add_argument("--no-config", action="store_true", help="ignore configuration files")
    add_verifier_options(parser)
    add_output_options(parser)
    parser.set_defaults(handler=run)

    hook = subparsers.add_parser(
        "hook",
        help="pre-commit hook: scan model files and verify the signatures next to them",
        description=(
            "Gate every FILE on its own (no trusted reference): scan it and, when a "
            "signature `FILE.sig` or `model.sig` sits next to it and a trusted signer is "
            "configured, verify it. Settings come from modelseal.toml / [tool.modelseal] "
            "(their fail_on, rules and trusted signer; a commit has no trusted reference). "
            "Prints one line per file and the full text report of each file that fails. "
            "Used by the hooks in .pre-commit-hooks.yaml."
        ),
        epilog="Exit codes: 0 all pass, 1 a file fails, 2 a file could not be checked.",
    )
    hook.add_argument("files", type=Path, nargs="*", metavar="FILE")
    hook.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="gate configuration (default: searched upwards from here)",
    )
    hook.add_argument("--no-config", action="store_true", help="ignore configuration files")
    add_verifier_options(hook)
    add_output_options(hook, report_file=False)
    hook.set_defaults(handler=run_hook)


def _pick(args: argparse.Namespace, config: Any, key: str, attr: str | None = None) -> Any:
    value = getattr(args, attr or key)
    return value if value not in (None, []) else config.get(key)


def _fail_on(args: argparse.Namespace, config: Any) -> Severity | None:
    """--fail-on if given, else the configuration's fail_on, else the pack decides."""
    explicit = explicit_fail_on(args)
    if explicit is None and config.get("fail_on"):
        try:
            explicit = Severity.parse(str(config.get("fail_on")))
        except ValueError as exc:
            raise UsageError(f"{config.source}: fail_on: {exc}") from None
    return explicit


def _allow(args: argparse.Namespace, config: Any) -> tuple[str, ...]:
    values = _pick(args, config, "allow") or ()
    try:
        return tuple(allow_option(str(v)) for v in values)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{config.source or 'configuration'}: allow: {exc}") from None


def _config(args: argparse.Namespace) -> Any:
    from scanner.gate.config import GateConfig, find_config, load_config

    if args.no_config:
        if args.config:
            raise UsageError("--config and --no-config contradict each other")
        return GateConfig()
    path = args.config or find_config(Path.cwd())
    return load_config(path) if path is not None else GateConfig()


def _fill_verifier(args: argparse.Namespace, config: Any) -> None:
    for key in (
        "public_key",
        "certificate_chain",
        "identity",
        "issuer",
        "trust_config",
        "trusted_root",
    ):
        if getattr(args, key, None) in (None, []) and config.get(key):
            setattr(args, key, config.get(key))


def run_hook(args: argparse.Namespace) -> int:
    """Gate each file; print one line per file (the full report for failures)."""
    from scanner.gate import GateRequest, run_gate
    from scanner.policy import with_suppressions
    from signing.errors import ModelsealError

    config = _config(args)
    _fill_verifier(args, config)
    pack = args.rules or rules_option(config.get("rules") or "default")
    assert pack is not None
    pack = with_suppressions(pack, config.suppressions)
    # A commit has no trusted reference or attestation folder per file; of the pack's
    # gate requirements only "signature" can be met here, so only it is kept.
    pack = dataclasses.replace(pack, require=tuple(r for r in pack.require if r == "signature"))
    has_signer = any(
        getattr(args, k, None) for k in ("public_key", "certificate_chain", "identity")
    )
    fail_on = _fail_on(args, config)
    worst = 0
    for path in args.files:
        signature = next(
            (
                s
                for s in (path.with_name(path.name + ".sig"), path.with_name("model.sig"))
                if s.is_file()
            ),
            None,
        )
        if signature is not None and not has_signer:
            sys.stderr.write(
                f"{path}: signature {signature} found but no trusted signer "
                "configured; not verified\n"
            )
            signature = None
        try:
            request = GateRequest(
                deployed=path,
                pack=pack,
                signature=signature,
                verifier=build_verifier(args) if signature is not None else None,
                fail_on=fail_on,
            )
            report = run_gate(request, progress=progress_for(True))
        except ModelsealError as exc:
            sys.stdout.write(f"{path}: ERROR {exc}\n")
            worst = 2
            continue
        checked = "signature verified, scanned" if signature is not None else "scanned"
        n = len(report.findings)
        sys.stdout.write(
            f"{path}: {report.verdict.upper()} ({checked}, {n} finding{'' if n == 1 else 's'}, "
            f"fail on {report.fail_on})\n"
        )
        if report.verdict != "pass" and not args.quiet:
            from scanner.report import render

            sys.stdout.write(render(report, OutputFormat.TEXT, color=use_color(args)))
        worst = max(worst, exit_code(report.verdict))
    return worst


def run(args: argparse.Namespace) -> int:
    from scanner.gate import GateRequest, run_gate
    from scanner.policy import with_suppressions

    config = _config(args)

    # Fill what the command line left out from the configuration.
    if config.get("format") and args.format is OutputFormat.TEXT:
        try:
            args.format = OutputFormat(config.get("format"))
        except ValueError:
            names = ", ".join(str(f) for f in OutputFormat)
            raise UsageError(
                f"{config.source}: format {config.get('format')!r} is not one of {names}"
            ) from None
    if args.output is None and config.get("output"):
        args.output = Path(config.get("output"))
        check_output_path(args.output, formats=(str(args.format),))
    explicit = _fail_on(args, config)
    _fill_verifier(args, config)

    deployed = _pick(args, config, "deployed")
    if deployed is None:
        raise UsageError("no deployed artifact: give DEPLOYED or set `deployed` in modelseal.toml")
    trusted = _pick(args, config, "trusted")
    signature = _pick(args, config, "signature")
    attestations = _pick(args, config, "attestations")
    if trusted is None and signature is None and attestations is None:
        raise UsageError(
            f"nothing to check {deployed} against: give --trusted (diff), --signature with a "
            "trusted signer, or --attestations with --chain-policy (or set them in "
            "modelseal.toml); `modelseal scan` audits a file on its own"
        )
    pack = args.rules or rules_option(config.get("rules") or "default")
    assert pack is not None
    pack = with_suppressions(pack, config.suppressions)
    verifier = build_verifier(args) if signature is not None else None
    request = GateRequest(
        deployed=Path(deployed),
        pack=pack,
        trusted=trusted,
        signature=signature,
        verifier=verifier,
        attestations=attestations,
        chain_policy=_pick(args, config, "chain_policy"),
        artifacts=tuple(_pick(args, config, "artifacts", "artifact") or ()),
        claims=tuple(_pick(args, config, "claims", "claim") or ()),
        allow=_allow(args, config),
        fail_on=explicit,
    )
    if not args.quiet and args.format is OutputFormat.TEXT and config.source:
        sys.stderr.write(f"modelseal gate: configuration {config.source}\n")
    report = run_gate(request, progress=progress_for(args.quiet))
    return emit(report, args)
