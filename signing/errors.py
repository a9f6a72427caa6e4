"""The root of modelseal's exception hierarchy.

It lives in ``signing`` because ``signing`` must not import ``scanner``; the scanner's
errors subclass :class:`ModelsealError`, so one ``except ModelsealError`` in the CLI
catches every failure the project anticipates.
"""

from __future__ import annotations


class ModelsealError(Exception):
    """Base class for every error modelseal raises on purpose.

    The message is one line that says what is wrong and, where possible, what to do.
    """

    exit_code = 2


class ManifestError(ModelsealError):
    """A manifest file could not be read or does not follow the manifest schema."""


class SigningError(ModelsealError):
    """A signature could not be produced."""


class VerificationError(ModelsealError):
    """A signature, attestation or chain did not verify."""

    exit_code = 1


class MalformedSignatureError(VerificationError):
    """A signature or attestation file that cannot be read as a bundle at all (not JSON,
    binary, wrong structure): an unreadable input, so the command could not complete."""

    exit_code = 2
