"""Loading and validating rules packs: shipped packs, extends, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanner.findings import Severity
from scanner.policy import PackError, load_pack, parse_pack, shipped_pack_dir


def test_shipped_packs_load_with_their_intent() -> None:
    default, strict, audit = (load_pack(n) for n in ("default", "strict", "audit"))
    assert default.fail_on is Severity.MEDIUM and "cast" in default.allow
    # routine training fails unless accepted: by --allow, a claim or an attested chain
    assert "full fine-tune" not in default.allow and "full fine-tune" in default.allow_claimed
    assert "low-rank update" not in default.allow and "pruning" not in default.allow
    assert "rounding noise" in default.allow
    assert "quantization" in default.allow_claimed and "quantization" not in default.allow
    assert strict.allow == ("identical", "cast") and strict.require == ("trusted",)
    assert "full fine-tune" not in strict.allow_claimed
    assert strict.rules["MS204"].severity is Severity.HIGH
    assert audit.fail_on is None


def test_shipped_pack_dir_is_the_rules_folder() -> None:
    names = {p.stem for p in shipped_pack_dir().glob("*.toml")}
    assert {"audit", "default", "strict"} <= names
    repo_rules = Path(__file__).resolve().parents[2] / "rules"
    assert shipped_pack_dir().resolve() == repo_rules.resolve()


def _write(tmp_path: Path, text: str, name: str = "pack.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_user_pack_extends_and_overrides(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[pack]
name = "ours"
extends = "default"
[rules.MS208]
severity = "high"
[rules.MS804]
thresholds = { warn_days = 3 }
[[tensors]]
pattern = "lm_head.*"
allow = ["full fine-tune"]
""",
    )
    pack = load_pack(path)
    assert pack.lineage == ("default", "ours")
    assert pack.allow == load_pack("default").allow  # inherited
    assert pack.rules["MS208"].severity is Severity.HIGH
    assert pack.threshold("MS804", "warn_days", 14) == 3
    assert pack.threshold("MS805", "min_rel_change", 1.0) == 0.0  # from default
    assert pack.allowed_classes("lm_head.weight", claimed=False)[0] == ("full fine-tune",)
    assert pack.allowed_classes("encoder.weight", claimed=False)[1] == "classes.allow"


def test_extends_a_file_relative_to_the_pack(tmp_path: Path) -> None:
    _write(tmp_path, '[pack]\nname = "base"\nextends = "strict"\n', "base.toml")
    sub = tmp_path / "sub"
    sub.mkdir()
    pack = load_pack(_write(sub, '[pack]\nname = "child"\nextends = "../base.toml"\n'))
    assert pack.lineage == ("strict", "base", "child")
    assert pack.require == ("trusted",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rules.MS999]\nseverity = 'high'\n", r"\[rules.MS999\]: unknown rule id 'MS999'"),
        (
            "[rules.MS201]\nseverity = 3\n",
            r"rules.MS201.severity: expected a string .* got an "
            "integer",
        ),
        ("[rules.MS201]\nseverity = 'severe'\n", r"unknown severity 'severe'"),
        ("[rules.MS201]\nseverty = 'high'\n", r"unknown key 'severty' in \[rules.MS201\]"),
        ("[rules.MS201]\nenabled = 'no'\n", r"rules.MS201.enabled: expected a boolean"),
        (
            "[rules.MS804]\nthresholds = { warn = 3 }\n",
            r"unknown threshold 'warn' for MS804 \(declared: warn_days\)",
        ),
        (
            "[rules.MS804]\nthresholds = { warn_days = 'soon' }\n",
            r"thresholds.warn_days: expected an integer like the default 14, got a string",
        ),
        ("[classes]\nallow = ['finetune']\n", r"classes.allow: unknown change class 'finetune'"),
        ("[gate]\nrequire = ['sbom']\n", r"gate.require: unknown input 'sbom'"),
        ("[surprise]\n", r"unknown key 'surprise' in the top level"),
        ("[[tensors]]\nallow = []\n", r"tensors\[0\]: 'pattern' is required"),
        ("[[suppress]]\nrule = 'MS208'\n", r"suppress\[0\]: 'reason' is required"),
        (
            "[[suppress]]\nrule = 'MS208'\nreason = 'x'\nexpires = 'soon'\n",
            r"suppress\[0\].expires: 'soon' is not a date",
        ),
        ("[pack]\nextends = 'nosuch'\n", r"no shipped rules pack named 'nosuch'"),
        ("[pack]\nfail_on = 'sometimes'\n", r"pack.fail_on: unknown severity"),
    ],
)
def test_validation_errors_are_precise(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PackError, match=message) as err:
        load_pack(path)
    assert str(path) in str(err.value)  # every message names the file


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, '[pack]\nextends = "b.toml"\n', "a.toml")
    _write(tmp_path, '[pack]\nextends = "a.toml"\n', "b.toml")
    with pytest.raises(PackError, match="cycle"):
        load_pack(tmp_path / "a.toml")


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="not valid TOML"):
        load_pack(_write(tmp_path, "[rules\n"))
    with pytest.raises(PackError, match="cannot read rules pack"):
        load_pack(tmp_path / "missing.toml")


def test_parse_pack_from_data() -> None:
    pack = parse_pack({"pack": {"name": "inline"}, "classes": {"allow": ["identical"]}}, "inline")
    assert pack.name == "inline" and pack.allow == ("identical",)
