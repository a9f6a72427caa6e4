"""Rules raised by the deployment gate and by rules-pack evaluation (MS8xx).

Signature and attestation-chain failures become findings here so that a pipeline gets
one verdict and one list of findings; the signing package itself never imports the
scanner, so its results are translated at this boundary.
"""

from __future__ import annotations

from scanner.findings import Severity
from scanner.rulebook import Threshold, define_rule

SIGNATURE_INVALID = define_rule(
    "MS801",
    "signature-not-verified",
    Severity.CRITICAL,
    "Model signature does not verify",
    checks="The signature bundle given to `modelseal gate` (`--signature`) is checked against "
    "the trusted signer (public key, certificate chain or Sigstore identity). Fails when the "
    "bundle is malformed, the signature is invalid, or it was made by a signer that is not "
    "trusted.",
    why="A signature says who vouches for the artifact. One that does not verify vouches for "
    "nothing, and a bundle signed by an unexpected key is how a substituted model gets a "
    "valid-looking signature.",
    example="`model.sig`: signed by key 3f2a..., which is not the trusted public key.",
    fix="Re-sign the artifact with the release key, or point the gate at the right trusted "
    "signer (`--public-key`, `--certificate-chain`, `--identity`).",
    references=("docs/signing.md",),
)
MODEL_NOT_AS_SIGNED = define_rule(
    "MS802",
    "model-differs-from-signature",
    Severity.CRITICAL,
    "Model files differ from what was signed",
    checks="The signature verifies, but re-hashing the deployed artifact finds files (and, "
    "when the signature records tensor digests, tensors) that were modified, added or removed "
    "after signing.",
    why="Any byte changed after signing is outside the signer's statement: it is exactly the "
    "window in which deployment-stage weight surgery happens.",
    example="file 'model.safetensors' modified; tensor 'encoder.layer.3.output.dense.weight' "
    "modified.",
    fix="Deploy the signed bytes, or sign the new artifact after reviewing the diff.",
    references=("docs/signing.md",),
)
CHAIN_FAILED = define_rule(
    "MS803",
    "attestation-chain-failed",
    Severity.HIGH,
    "Attestation chain does not verify",
    checks="The step attestations given to `modelseal gate` (`--attestations` with a chain "
    "`--chain-policy`) are verified as a chain from a trusted root to the deployed artifact. "
    "Each chain problem (its own id MSC001-MSC015, in `evidence.chain_rule`) becomes one "
    "finding.",
    why="The chain says which transformations produced the deployed artifact and who signed "
    "each one; a missing link or a re-check that fails means the history is not what it "
    "claims.",
    example="MSC007: input sha256:ab12... of the 'quantize' step is neither a trusted root nor "
    "the output of a verified step (missing link).",
    fix="Attest the missing step, fix the chain policy, or reject the artifact.",
    references=("docs/policy.md", "docs/attestations.md"),
)
SUPPRESSION_EXPIRED = define_rule(
    "MS804",
    "suppression-expired",
    Severity.MEDIUM,
    "Suppression expired",
    checks="A suppression (`[[suppress]]` in a rules pack or gate configuration) has an "
    "`expires` date in the past. Expired suppressions no longer hide findings; each is "
    "reported once. Suppressions that expire within `warn_days` are reported at `info`.",
    why="Accepted risks must be re-reviewed; a suppression nobody revisits turns into a "
    "permanent blind spot.",
    example='MS208 on `config.json` suppressed until 2025-01-31 ("tokenizer update, '
    'ticket SEC-12"): expired 40 days ago.',
    fix="Re-review the finding, then extend the expiry with a fresh reason or remove the "
    "suppression.",
    thresholds=(
        Threshold("warn_days", 14, "report suppressions expiring within this many days (info)"),
    ),
)
CLASS_NOT_ALLOWED = define_rule(
    "MS805",
    "change-class-not-allowed",
    Severity.HIGH,
    "Change class not allowed by the rules pack",
    checks="A tensor changed and the diff classified the change (e.g. `full fine-tune`, "
    "`quantization`, `low-rank update`), but the active rules pack does not allow that class "
    "for the tensor: neither `[classes] allow`, nor (for a verified claim or attested chain) "
    "`allow_claimed`, nor a `[[tensors]]` override whose pattern matches the tensor name.",
    why="The policy decides which transformations may reach production. A benign-looking "
    "class is still a change nobody approved for that part of the model.",
    example="`embeddings.word_embeddings.weight`: full fine-tune, forbidden by the pattern "
    "`embeddings.*` (allow = []).",
    fix="Allow the class for the tensors where it is expected (`[[tensors]] pattern = "
    '"lm_head.*"`, `allow = ["full fine-tune"]`), claim the transformation, or reject.',
    references=("docs/rules-packs.md",),
    thresholds=(
        Threshold(
            "min_rel_change",
            0.0,
            "ignore classified changes whose relative L2 change is at most this value",
        ),
    ),
)
INPUT_MISSING = define_rule(
    "MS806",
    "gate-input-missing",
    Severity.HIGH,
    "Required gate input missing",
    checks="The rules pack's `[gate] require` lists evidence the gate must see (`signature`, "
    "`trusted`, `attestations`) and the run did not supply it.",
    why="A gate that silently skips signature or chain verification when an input is missing "
    "passes exactly the artifacts that arrive without evidence.",
    example="strict pack requires `signature`; no `--signature` was given.",
    fix="Pass the missing input (or set it in modelseal.toml), or use a pack that does not "
    "require it.",
    references=("docs/ci.md",),
)
