"""``modelseal attest``: re-check a transformation claim, then sign it as an attestation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scanner import __version__
from scanner.cli.sign import add_signer_options, build_signer

if TYPE_CHECKING:
    from signing.attest import Attestation


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attest",
        help="sign a transformation step (after re-checking its claim)",
        description=(
            "Record that PRODUCED was made from INPUT by a step of KIND (identical, cast, "
            "quantize, prune, convert are re-derivable; train, fine-tune, ... are "
            "declared-only). Re-derivable claims are re-checked first and not signed if they "
            "do not hold. See docs/attestations.md."
        ),
        epilog="Exit codes: 0 signed, 1 claim refused, 2 could not complete.",
    )
    parser.add_argument("kind", help="step kind, e.g. quantize, cast, identical, fine-tune")
    parser.add_argument(
        "--input",
        type=Path,
        action="append",
        default=[],
        metavar="TRUSTED",
        help="input artifact (repeat for several)",
    )
    parser.add_argument(
        "--produced",
        type=Path,
        required=True,
        metavar="PATH",
        help="the artifact the step produced",
    )
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="K=V",
        help="step parameter (repeat)",
    )
    parser.add_argument(
        "--parent",
        type=Path,
        action="append",
        default=[],
        metavar="ATT",
        help="attestation of the step that produced an input (repeat)",
    )
    parser.add_argument(
        "--chain", metavar="ID", help="chain identifier (default: the parents', else a new one)"
    )
    parser.add_argument(
        "--declared-only",
        action="store_true",
        help="sign a re-derivable claim that cannot be re-checked here as a "
        "declaration (never for a claim that fails)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="step.att.json",
        help="where to write the attestation bundle (its folder must exist)",
    )
    add_signer_options(parser)
    parser.set_defaults(handler=run)


def artifact_name(path: Path) -> str:
    """The name an attestation records for ``path`` (its last component, also for ``.``)."""
    return path.name or path.resolve().name


def _read_parent(path: Path) -> Attestation:
    from signing.attest import Attestation, parse_verified
    from signing.bundle import parse_bundle, read_bundle_text

    # Parents are only cited by digest; their signatures are checked by verify-chain.
    text = read_bundle_text(path, "parent attestation")
    bundle = parse_bundle(text, str(path))
    env = bundle.envelope
    step = parse_verified(env.payload_type, env.payload, None, str(path))  # type: ignore[arg-type]
    return Attestation(text, step.statement)


def run(args: argparse.Namespace) -> int:
    from scanner.claims_bridge import check_step
    from scanner.manifest import build_manifest
    from signing.attest import REDERIVABLE_KINDS, attest_step

    signer = build_signer(args)
    if len(args.input) > 1 and args.kind in REDERIVABLE_KINDS:
        sys.stderr.write("note: several inputs; the claim checker sees the first one\n")
    inputs = [(build_manifest(p), artifact_name(p)) for p in args.input]
    output = (build_manifest(args.produced), artifact_name(args.produced))
    parents = [_read_parent(p) for p in args.parent]
    # A claim that does not hold raises ClaimRefusedError (exit 1) and nothing is written.
    att = attest_step(
        args.kind,
        inputs,
        output,
        signer,
        checker=check_step,
        input_path=args.input[0] if args.input else None,
        output_path=args.produced,
        parameters=dict(args.param),
        parents=parents,
        chain_id=args.chain,
        declared_only=args.declared_only,
        tool_version=__version__,
    )
    args.output.write_text(att.bundle, encoding="utf-8")
    st = att.statement
    sys.stderr.write(
        f"attested {st.kind} ({st.claim.value}) -> {args.output}; chain {st.chain_id}\n"
    )
    return 0
