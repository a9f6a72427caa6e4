"""Judging reports by packs: tensor-pattern overrides, the three shipped packs on the
same pairs, suppressions with expiry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from scanner.diff.model import TensorStatus
from scanner.findings import Severity
from scanner.policy import PolicyReport, apply_pack, load_pack, parse_pack
from tests.gate.builders import changed_finding, finetune_report, pair_report, tensor

TODAY = dt.date(2026, 3, 1)


def _pack(tmp_path: Path, text: str):
    path = tmp_path / "pack.toml"
    path.write_text(text, encoding="utf-8")
    return load_pack(path)


ALLOW_FINETUNE = """
[pack]
name = "finetune-ok"
extends = "default"
[[tensors]]
pattern = "*"
allow = ["identical", "cast", "full fine-tune"]
[[tensors]]
pattern = "embeddings.*"
allow = ["identical"]
severity = "critical"
"""


def test_finetune_fails_default_and_strict_unless_allowed(tmp_path: Path) -> None:
    report = finetune_report()
    default = apply_pack(report, load_pack("default"), today=TODAY)
    strict = apply_pack(report, load_pack("strict"), today=TODAY)
    audit = apply_pack(report, load_pack("audit"), today=TODAY)
    # a fine-tune nothing accepted fails by default: "transformed only as allowed"
    assert default.verdict == "fail" and strict.verdict == "fail"
    assert {f.rule_id for f in default.failing()} == {"MS805"}
    assert {f.rule_id for f in strict.findings} == {"MS805"}
    assert audit.verdict == "pass" and len(audit.findings) == 3  # reported, not failing
    assert all(f.severity is Severity.INFO for f in audit.findings)
    # an attested chain accepts it under default (allow_claimed), not under strict
    attested = apply_pack(report, load_pack("default"), attested=True, today=TODAY)
    assert attested.verdict == "pass"
    assert apply_pack(report, load_pack("strict"), attested=True, today=TODAY).verdict == "fail"
    # a pack that extends default allows it, and can still forbid it where it must not happen
    forbidding = _pack(
        tmp_path,
        """
[pack]
extends = "default"
[classes]
allow = ["identical", "cast", "full fine-tune"]
[[tensors]]
pattern = "encoder.*"
allow = ["identical", "cast"]
""",
    )
    judged = apply_pack(report, forbidding, today=TODAY)
    assert judged.verdict == "fail"
    assert [f.locations[0].tensor for f in judged.findings if f.severity > Severity.INFO] == [
        "encoder.0.weight"
    ]


def test_allow_on_the_command_line_is_honoured_by_packs() -> None:
    """``--allow finetune`` labels the tensors it accepted; any one acceptance suffices."""
    report = finetune_report()
    for t in report.tensors:
        t.labels["allowed_by"] = "--allow"
    assert apply_pack(report, load_pack("default"), today=TODAY).verdict == "pass"


def test_tensor_patterns_allow_lm_head_and_forbid_embeddings(tmp_path: Path) -> None:
    pack = _pack(tmp_path, ALLOW_FINETUNE)
    judged = apply_pack(finetune_report(), pack, today=TODAY)
    assert judged.verdict == "fail"
    (only,) = judged.findings
    assert only.rule_id == "MS805" and only.severity is Severity.CRITICAL
    assert only.locations[0].tensor == "embeddings.word.weight"
    assert only.evidence["decided_by"] == "tensors['embeddings.*']"


def test_unexplained_change_finding_is_downgraded_only_where_its_class_is_allowed(
    tmp_path: Path,
) -> None:
    pack = _pack(
        tmp_path,
        """
[pack]
extends = "strict"
[[tensors]]
pattern = "lm_head.*"
allow = ["full fine-tune"]
""",
    )
    report = pair_report(
        [tensor("lm_head.weight", "full fine-tune"), tensor("encoder.0.weight", "full fine-tune")],
        [changed_finding("lm_head.weight"), changed_finding("encoder.0.weight")],
    )
    judged = apply_pack(report, pack, today=TODAY)
    by_tensor = {f.locations[0].tensor: f for f in judged.findings}
    assert by_tensor["lm_head.weight"].severity is Severity.INFO
    assert by_tensor["lm_head.weight"].evidence["policy"]["allowed_by"] == "tensors['lm_head.*']"
    assert by_tensor["encoder.0.weight"].severity is Severity.HIGH
    assert judged.verdict == "fail"
    # no MS805 duplicate for a tensor a failing finding already reports
    assert [f.rule_id for f in judged.findings].count("MS805") == 0


def test_unclassified_change_is_never_allowed_by_class() -> None:
    allow = [*load_pack("audit").allow, "unexplained change", "full fine-tune"]
    pack = parse_pack({"classes": {"allow": allow}}, "p")
    report = pair_report([tensor("w", None)], [changed_finding("w")])
    assert apply_pack(report, pack, today=TODAY).verdict == "fail"


def test_claimed_quantization_passes_default_and_strict_but_not_unclaimed() -> None:
    claimed = pair_report([tensor("w", "quantization", claim=True)], [])
    unclaimed = pair_report([tensor("w", "quantization")], [])
    for name in ("default", "strict"):
        assert apply_pack(claimed, load_pack(name), today=TODAY).verdict == "pass"
        assert apply_pack(unclaimed, load_pack(name), today=TODAY).verdict == "fail"
    # an attested chain of re-derived steps counts as a claim for every tensor
    assert apply_pack(unclaimed, load_pack("strict"), attested=True, today=TODAY).verdict == "pass"


def test_cast_and_rename_on_the_three_packs() -> None:
    cast = tensor("w", None, status=TensorStatus.CAST)
    renamed = tensor("v", None, status=TensorStatus.RENAMED)
    rename_finding = changed_finding("v", "MS204", Severity.LOW)
    report = pair_report([cast, renamed], [rename_finding])
    verdicts = {
        n: apply_pack(report, load_pack(n), today=TODAY).verdict
        for n in ("default", "strict", "audit")
    }
    assert verdicts == {"default": "pass", "strict": "fail", "audit": "pass"}


def test_disabled_rule_and_severity_override() -> None:
    pack = parse_pack({"rules": {"MS201": {"enabled": False}, "MS208": {"severity": "high"}}}, "p")
    meta = changed_finding("x", "MS208", Severity.LOW)
    report = pair_report([], [changed_finding("w"), meta])
    judged = apply_pack(report, pack, today=TODAY)
    (only,) = judged.findings
    assert only.rule_id == "MS208" and only.severity is Severity.HIGH
    assert only.evidence["policy"]["catalogue_severity"] == "low"
    assert judged.evidence["policy"]["disabled_findings"] == 1


def test_explicit_fail_on_wins_over_the_pack() -> None:
    report = pair_report([], [changed_finding("x", "MS208", Severity.LOW)])
    assert apply_pack(report, load_pack("strict"), today=TODAY).verdict == "fail"
    assert (
        apply_pack(report, load_pack("strict"), today=TODAY, fail_on=Severity.HIGH).verdict
        == "pass"
    )


SUPPRESS = """
[pack]
extends = "default"
[[suppress]]
rule = "MS201"
tensor = "lm_head.*"
reason = "accepted head retrain, ticket ML-42"
expires = {expires}
[[suppress]]
rule = "MS208"
reason = "tokenizer metadata bump"
"""


def test_suppression_hides_and_is_reported_with_reason(tmp_path: Path) -> None:
    pack = _pack(tmp_path, SUPPRESS.format(expires="2026-06-30"))
    report = pair_report(
        [tensor("lm_head.weight", None), tensor("enc.weight", None)],
        [changed_finding("lm_head.weight"), changed_finding("enc.weight")],
    )
    judged = apply_pack(report, pack, today=TODAY)
    assert isinstance(judged, PolicyReport)
    assert [f.locations[0].tensor for f in judged.findings] == ["enc.weight"]
    (s,) = judged.suppressed
    assert s.suppression.reason == "accepted head retrain, ticket ML-42"
    data = judged.to_dict()
    assert data["rules_pack"] == "pack"  # a pack without a name takes its file name
    assert data["suppressed"][0]["suppression"]["expires"] == "2026-06-30"
    assert "MS208" in data["evidence"]["policy"]["unused_suppressions"][0]


def test_expired_suppression_no_longer_applies_and_is_reported(tmp_path: Path) -> None:
    pack = _pack(tmp_path, SUPPRESS.format(expires="2026-02-01"))
    report = pair_report([tensor("lm_head.weight", None)], [changed_finding("lm_head.weight")])
    judged = apply_pack(report, pack, today=TODAY)
    assert judged.suppressed == ()
    rules = sorted(f.rule_id for f in judged.findings)
    assert rules == ["MS201", "MS804"]
    expired = next(f for f in judged.findings if f.rule_id == "MS804")
    assert expired.severity is Severity.MEDIUM and expired.evidence["days_expired"] == 28
    assert judged.verdict == "fail"


def test_suppression_expiring_soon_is_an_info_finding(tmp_path: Path) -> None:
    pack = _pack(tmp_path, SUPPRESS.format(expires="2026-03-05"))
    report = pair_report([tensor("lm_head.weight", None)], [changed_finding("lm_head.weight")])
    judged = apply_pack(report, pack, today=TODAY)
    (soon,) = judged.findings
    assert soon.rule_id == "MS804" and soon.severity is Severity.INFO
    assert soon.evidence["days_left"] == 4
    assert judged.verdict == "pass"
