"""The command-line contract of docs/cli.md, command by command.

Exit codes: 0 pass, 1 policy failure, 2 could not complete (bad usage, unreadable or
malformed input). Every accepted flag works or is refused; `-o` is checked before any
work; messages are sentences, one line on error, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from scanner.cli.main import build_parser
from signing.keys import KeyType, generate_private_key, write_key_pair

ROOT = Path(__file__).resolve().parents[2]
LIFECYCLE = ROOT / "examples" / "lifecycles" / "llm.toml"


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": rng.standard_normal((48, 24)).astype(np.float32),
        "head.weight": rng.standard_normal((24, 6)).astype(np.float32),
    }


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a model, a key pair and no gate configuration."""
    monkeypatch.chdir(tmp_path)
    save_file(_weights(), str(tmp_path / "model.safetensors"))
    write_key_pair(
        generate_private_key(KeyType.ECDSA_P256), tmp_path / "key.pem", tmp_path / "key.pub"
    )
    return tmp_path


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("modelseal: error: "), err
    return lines[-1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command parser by its command line, nested ones included."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}".strip()] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


# -- one vocabulary ---------------------------------------------------------------------


def test_o_means_the_output_file_and_format_is_the_only_format_flag() -> None:
    for name, parser in _subcommands().items():
        options = {o for a in parser._actions for o in a.option_strings}
        dests = {o: a.dest for a in parser._actions for o in a.option_strings}
        assert "--json" not in options and "--markdown" not in options, name
        if "-o" in options:
            assert dests["-o"] == "output" and "--output" in options, name
        if "--output" in options:
            assert "-o" in options, name
        if "--format" in options:
            assert "-f" in options, name


def test_every_report_command_takes_format_and_fail_on() -> None:
    commands = _subcommands()
    for name in ("scan", "diff", "gate", "demo", "lifecycle check"):
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--format", "-o", "--fail-on"} <= options, name
    for name in ("verify", "verify-chain", "evaluate"):
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--format", "-o"} <= options, name


def test_help_lines_are_wrapped() -> None:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    for name in ("", *_subcommands()):
        out = subprocess.run(
            [sys.executable, "-m", "scanner", *name.split(), "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        long = [line for line in out.splitlines() if len(line) > 80]
        assert not long, f"modelseal {name} --help: {long[:2]}"


# -- exit 2: usage errors and unreadable input --------------------------------------------


def test_a_missing_trusted_signer_is_a_usage_error(work: Path, run_cli) -> None:
    assert run_cli("sign", "model.safetensors", "--key", "key.pem", "-o", "model.sig").code == 0
    for args in (
        ("verify", "model.safetensors", "--signature", "model.sig"),
        ("gate", "model.safetensors", "--signature", "model.sig", "--no-config"),
        ("lifecycle", "check", LIFECYCLE, "--attestations", work),
    ):
        result = run_cli(*args)
        assert result.code == 2, args
        assert "trusted signer" in _one_line_error(result.err)


def test_unreadable_signatures_exit_2_with_one_line(work: Path, run_cli) -> None:
    binary = work / "binary.sig"
    binary.write_bytes(bytes(range(256)) * 4)
    (work / "text.sig").write_text("not a bundle at all", encoding="utf-8")
    (work / "object.sig").write_text('{"mediaType": "something/else"}', encoding="utf-8")
    for sig in ("binary.sig", "text.sig", "object.sig", "absent.sig"):
        for args in (
            ("verify", "model.safetensors", "--signature", sig, "--public-key", "key.pub"),
            ("gate", "model.safetensors", "--signature", sig, "--public-key", "key.pub"),
        ):
            result = run_cli(*args, "--no-config") if args[0] == "gate" else run_cli(*args)
            assert result.code == 2, (args, result.err)
            assert sig in _one_line_error(result.err)


def test_a_signature_that_does_not_verify_is_a_failure(work: Path, run_cli) -> None:
    """Readable evidence that says no is exit 1, not 2."""
    run_cli("sign", "model.safetensors", "--key", "key.pem", "-o", "model.sig")
    other = work / "other"
    other.mkdir()
    write_key_pair(generate_private_key(KeyType.ECDSA_P256), other / "k.pem", other / "k.pub")
    result = run_cli(
        "verify", "model.safetensors", "--signature", "model.sig", "--public-key", other / "k.pub"
    )
    assert result.code == 1
    _one_line_error(result.err)


def test_sign_refuses_an_unwritable_output_before_hashing(
    work: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signing._hashing

    hashed: list[Path] = []
    real = signing._hashing.sha256_file
    monkeypatch.setattr(
        signing._hashing, "sha256_file", lambda p, *a, **k: hashed.append(p) or real(p, *a, **k)
    )
    result = run_cli("sign", "model.safetensors", "--key", "key.pem", "-o", "/missing/dir/x.sig")
    assert result.code == 2
    assert "folder /missing/dir does not exist" in _one_line_error(result.err)
    assert hashed == []
    result = run_cli("sign", "model.safetensors", "--key", "key.pem", "-o", work)
    assert result.code == 2 and "is a folder" in result.err
    assert hashed == []


def test_report_extension_must_match_the_format(work: Path, run_cli) -> None:
    result = run_cli("scan", "model.safetensors", "--format", "json", "-o", "report.sarif")
    assert result.code == 2 and "--format sarif" in _one_line_error(result.err)
    assert not (work / "report.sarif").exists()
    assert run_cli("scan", "model.safetensors", "-f", "sarif", "-o", "report.sarif").code == 0
    assert json.loads((work / "report.sarif").read_text())["version"] == "2.1.0"


def test_no_traceback_for_a_bug_either(work: Path, run_cli, monkeypatch) -> None:
    import scanner.cli.scan

    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("something the code did not expect")

    monkeypatch.delenv("MODELSEAL_TRACEBACK", raising=False)
    monkeypatch.setattr(scanner.cli.scan, "run", broken)
    result = run_cli("scan", "model.safetensors")
    assert result.code == 2
    assert "internal error (RuntimeError: something" in _one_line_error(result.err)


def test_binary_signature_in_a_fresh_process_prints_no_traceback(work: Path) -> None:
    (work / "binary.sig").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    env = {k: v for k, v in os.environ.items() if k != "MODELSEAL_TRACEBACK"}
    command = ("verify", "model.safetensors", "--signature", "binary.sig", "--public-key")
    done = subprocess.run(
        [sys.executable, "-m", "scanner", *command, "key.pub"],
        capture_output=True,
        text=True,
        cwd=work,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# -- every accepted flag works or is refused ----------------------------------------------


def test_unknown_values_are_refused_with_the_valid_ones(work: Path, run_cli) -> None:
    result = run_cli("scan", "model.safetensors", "--fail-on", "bogus")
    assert result.code == 2 and "info, low, medium, high, critical" in result.err
    result = run_cli("diff", "model.safetensors", "model.safetensors", "--allow", "foo")
    assert result.code == 2
    assert "unknown change class 'foo'" in result.err and "full fine-tune" in result.err
    assert "finetune" in result.err  # aliases are listed too
    assert run_cli("diff", "model.safetensors", "model.safetensors", "--allow", "lora").code == 0


def test_redteam_refuses_unknown_params_overwriting_and_wrong_extensions(
    work: Path, run_cli
) -> None:
    model = work / "model.safetensors"
    before = model.read_bytes()
    result = run_cli("redteam", model, "--attack", "rank1", "--param", "foo=bar", "-o", "x.st")
    assert result.code == 2
    line = _one_line_error(result.err)
    assert "rank1 does not take foo" in line and "it takes:" in line
    result = run_cli("redteam", model, "--attack", "rank1", "-o", model)
    assert result.code == 2 and "overwrite the input" in _one_line_error(result.err)
    result = run_cli("redteam", model, "--attack", "rank1", "-o", work / "copy.onnx")
    assert result.code == 2 and ".safetensors" in _one_line_error(result.err)
    assert model.read_bytes() == before
    assert not list(work.glob("copy*")) and not list(work.glob("x.st*"))
    result = run_cli("redteam", model, "--attack", "rank1", "-o", work / "copy.safetensors")
    assert result.code == 0
    assert result.out.startswith(f"wrote {work / 'copy.safetensors'}: attack rank1 (seed 0")
    assert "{" not in result.out  # a sentence, not a dict


def test_probe_on_a_non_onnx_pair_says_it_was_not_applied(work: Path, run_cli) -> None:
    result = run_cli("diff", "model.safetensors", "model.safetensors", "--probe")
    assert result.code == 0
    assert "note: --probe was not applied" in result.out
    data = run_cli("diff", "model.safetensors", "model.safetensors", "--probe", "-f", "json")
    assert any("--probe was not applied" in n for n in data.json()["evidence"]["notes"])


def test_hook_honours_fail_on_and_the_configs_fail_on_and_refuses_format(
    work: Path, run_cli
) -> None:
    weights = _weights()
    weights["encoder.weight"][3, 4] = np.nan  # MS101, medium
    save_file(weights, str(work / "nan.safetensors"))
    result = run_cli("hook", "nan.safetensors")
    assert result.code == 1 and "nan.safetensors: FAIL" in result.out
    assert run_cli("hook", "nan.safetensors", "--fail-on", "high").code == 0
    (work / "modelseal.toml").write_text('fail_on = "high"\n', encoding="utf-8")
    result = run_cli("hook", "nan.safetensors")
    assert result.code == 0 and "fail on high" in result.out
    assert run_cli("hook", "nan.safetensors", "--fail-on", "medium").code == 1
    for flag in (("--format", "json"), ("-o", "x.json")):
        assert run_cli("hook", "nan.safetensors", *flag).code == 2


def test_demo_honours_rules(run_cli) -> None:
    assert run_cli("demo", "-q").code == 0
    # The audit pack never fails: the tampered copy passes, which the demo reports.
    result = run_cli("demo", "--rules", "audit")
    assert result.code == 1
    assert "unexpected verdicts: tampered copy PASS" in result.out


def test_evaluate_keeps_an_explicit_fail_on_with_a_pack(
    work: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scanner.evaluate

    seen: dict[str, object] = {}

    def fake(model: Path, **kw: object) -> object:
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(scanner.evaluate, "evaluate", fake)
    args = ("evaluate", "model.safetensors", "--rules", "default", "--seeds", "1")
    run_cli(*args, "--fail-on", "medium")
    assert seen["fail_on"] is not None and str(seen["fail_on"]) == "medium"
    run_cli(*args)
    assert seen["fail_on"] is None  # the pack's own fail_on applies


def test_evaluate_plot_without_matplotlib_fails_before_the_run(
    work: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    import scanner.evaluate

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    ran: list[bool] = []
    monkeypatch.setattr(scanner.evaluate, "evaluate", lambda *a, **k: ran.append(True))
    result = run_cli("evaluate", "model.safetensors", "--plot", "p.png")
    assert result.code == 2 and "matplotlib" in _one_line_error(result.err)
    assert ran == []


def test_lifecycle_check_takes_sarif_and_fail_on(work: Path, run_cli) -> None:
    assert run_cli("lifecycle", "check", LIFECYCLE).code == 0  # a report unless asked
    result = run_cli("lifecycle", "check", LIFECYCLE, "--format", "sarif", "-o", "lc.sarif")
    assert result.code == 0
    run = json.loads((work / "lc.sarif").read_text())["runs"][0]
    rules = {r["ruleId"] for r in run["results"]}
    assert rules <= {"MS901", "MS902"} and rules
    assert run_cli("lifecycle", "check", LIFECYCLE, "--fail-on", "low").code == 1
    # Every open threat is high: with attestations that would cover them, fewer remain.
    worst = "high" if "MS901" in rules else "low"
    assert run_cli("lifecycle", "check", LIFECYCLE, "--fail-on", worst).code == 1
    assert run_cli("lifecycle", "check", LIFECYCLE, "--fail-on", "critical").code == 0


# -- the gate says what it checked ------------------------------------------------------


def test_gate_with_nothing_to_check_against_is_not_a_pass(work: Path, run_cli) -> None:
    result = run_cli("gate", "model.safetensors", "--no-config")
    assert result.code == 2
    line = _one_line_error(result.err)
    assert "nothing to check model.safetensors against" in line and "--trusted" in line


def test_passing_gate_names_the_signer_and_what_it_did_not_check(work: Path, run_cli) -> None:
    run_cli("sign", "model.safetensors", "--key", "key.pem", "-o", "model.sig")
    result = run_cli(
        "gate",
        "model.safetensors",
        "--signature",
        "model.sig",
        "--public-key",
        "key.pub",
        "--no-config",
    )
    assert result.code == 0, result.err
    out = result.out
    assert "checked      signature model.sig: verified, signed by key " in out
    assert "not checked  attestation chain (no --attestations given)" in out
    assert "not checked  diff against a trusted artifact (no --trusted given)" in out
    gate = run_cli(
        "gate", "model.safetensors", "--signature", "model.sig", "--public-key", "key.pub"
    ).out
    assert gate == out


# -- messages -----------------------------------------------------------------------------


def test_messages_agree_in_number_and_name_the_file(work: Path, run_cli) -> None:
    result = run_cli("sign", "model.safetensors", "--key", "key.pem", "-o", "model.sig")
    assert "signed 1 file 'model.safetensors' (root sha256 " in result.err
    assert "files" not in result.err
    folder = work / "folder"
    folder.mkdir()
    save_file(_weights(1), str(folder / "a.safetensors"))
    (folder / "config.json").write_text("{}")
    result = run_cli("sign", folder, "--key", "key.pem", "-o", "folder.sig")
    assert "signed 2 files of 'folder'" in result.err
    # A modified single-file model is named, not '.'.
    save_file(_weights(2), str(work / "model.safetensors"))
    result = run_cli(
        "verify", "model.safetensors", "--signature", "model.sig", "--public-key", "key.pub"
    )
    assert result.code == 1
    line = _one_line_error(result.err)
    assert "file 'model.safetensors' modified" in line and "'.'" not in line


def test_sign_reports_progress_in_the_models_bytes(work: Path) -> None:
    from scanner.progress import CountingProgress
    from signing.model_signature import sign_model
    from signing.signers import KeySigner

    counter = CountingProgress()
    signer = KeySigner.from_files(work / "key.pem")
    sign_model(work / "model.safetensors", signer, progress=counter)
    size = (work / "model.safetensors").stat().st_size
    assert counter.total == counter.done == size
    assert counter.descriptions == ["hashing"]


def test_a_folder_of_several_models_is_refused_by_name(work: Path, run_cli) -> None:
    folder = work / "models"
    folder.mkdir()
    save_file(_weights(1), str(folder / "first.safetensors"))
    save_file(_weights(2), str(folder / "second.safetensors"))
    result = run_cli("scan", folder)
    assert result.code == 2
    line = _one_line_error(result.err)
    assert "holds several models (first.safetensors, second.safetensors)" in line
