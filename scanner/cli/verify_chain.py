"""``modelseal verify-chain``: verify the attested history of a deployed artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanner.cli.attest import artifact_name
from scanner.cli.common import write_text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify-chain",
        help="verify the chain of step attestations behind a deployed artifact",
        description=(
            "Verify every attestation in DIR against the policy (signers per step kind, "
            "trusted roots, validity window), check that DEPLOYED is the output of the last "
            "step, that every input links to a trusted root, that all steps belong to one "
            "chain, and re-check re-derivable claims where artifacts are supplied. "
            "See docs/policy.md."
        ),
        epilog="Exit codes: 0 pass, 1 fail, 2 could not complete.",
    )
    parser.add_argument("deployed", type=Path, help="the deployed artifact")
    parser.add_argument(
        "--attestations",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of attestation bundles (*.json)",
    )
    parser.add_argument("--policy", type=Path, required=True, metavar="policy.toml")
    parser.add_argument(
        "--artifact",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="an intermediate artifact, so its claims can be re-checked (repeat)",
    )
    parser.add_argument(
        "--trust-config",
        type=Path,
        metavar="FILE",
        help="Sigstore ClientTrustConfig for keyless attestations",
    )
    parser.add_argument(
        "--trusted-root",
        type=Path,
        metavar="FILE",
        help="Sigstore TrustedRoot for keyless attestations",
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=["text", "json", "sarif"],
        default="text",
        help="text (tree), json or sarif; default text",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the report to FILE instead of stdout",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.claims_bridge import check_step
    from scanner.manifest import build_manifest
    from signing.chain import read_attestations, verify_chain
    from signing.chain_output import ChainOutputFormat, render
    from signing.chain_policy import load_policy

    policy = load_policy(args.policy)
    texts = read_attestations(args.attestations)
    trust_config = args.trust_config or policy.trust_config
    trusted_root_path = args.trusted_root or policy.trusted_root
    root = None
    if trust_config or trusted_root_path:
        from signing.sigstore_keyless import load_trusted_root

        root = load_trusted_root(
            trust_config=trust_config, trusted_root=None if trust_config else trusted_root_path
        )
    deployed = build_manifest(args.deployed)
    artifacts = {build_manifest(p).root_digest: p for p in args.artifact}
    report = verify_chain(
        deployed,
        texts,
        policy,
        checker=check_step,
        artifacts=artifacts,
        deployed_path=args.deployed,
        deployed_name=artifact_name(args.deployed),
        trusted_root=root,
    )
    write_text(args, render(report, ChainOutputFormat(args.format)))
    return report.exit_code
