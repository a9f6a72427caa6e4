"""``modelseal manifest PATH``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.cli.progress import progress_for


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="write the per-file and per-tensor digest manifest",
        description=(
            "List every file (path, size, sha256) and every tensor (name, dtype, shape, "
            "container-independent digest) of PATH as JSON (schema modelseal/manifest/v1). "
            "See docs/digests.md for the digest definitions."
        ),
        epilog="Exit codes: 0 written, 2 could not complete.",
    )
    parser.add_argument("path", type=Path, help="model file or model folder")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the manifest to FILE instead of stdout",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.formats import open_artifact
    from scanner.manifest import manifest_of

    with open_artifact(args.path) as artifact:
        manifest = manifest_of(artifact, progress_for(args.quiet))
    text = manifest.to_json()
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {args.output} ({manifest.root_digest})\n")
    else:
        sys.stdout.write(text)
    return 0
