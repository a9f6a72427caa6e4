"""``merge:CONFIG`` against merges made by mergekit itself, and tampered twins of them.

The merges in tests/claims/data/merge are mergekit 0.1.5's own outputs (ORIGIN.md there),
of models cut from MiniLM's trained weights; every tamper below is made here, with
shapes and sizes chosen here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.claims import check_claim, parse_claim
from scanner.claims.merge.config import MAX_CONFIG_BYTES
from scanner.claims.merge.dare import DareSolver
from scanner.claims.merge.methods import Rounding
from scanner.errors import UsageError

DATA = Path(__file__).parent / "data" / "merge"
CONFIGS = sorted(p.stem for p in DATA.glob("*.yml"))
MATRIX = "model.layers.1.mlp.down_proj.weight"
BASE = DATA / "base"


def claim(cfg: str, deployed: Path, **extra: str):
    return check_claim("merge", {"config": str(DATA / f"{cfg}.yml"), **extra}, BASE, deployed)


def output(cfg: str) -> Path:
    return DATA / f"out_{cfg}" / "model.safetensors"


def tampered(tmp_path: Path, cfg: str, edit) -> Path:
    tensors = load_file(str(output(cfg)))
    edit(tensors)
    path = tmp_path / f"{cfg}.safetensors"
    save_file(tensors, str(path))
    return path


def failing(result) -> dict[str, object]:
    return {v.tensor: v for v in result.tensors if not v.ok}


def test_the_pinned_data_covers_every_method() -> None:
    methods = {
        __import__("yaml").safe_load((DATA / f"{c}.yml").read_text())["merge_method"]
        for c in CONFIGS
    }
    assert methods == {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"}


@pytest.mark.parametrize("cfg", CONFIGS)
def test_mergekit_output_is_re_derived(cfg: str) -> None:
    result = claim(cfg, output(cfg))
    assert result.holds, result.message
    assert len(result.tensors) == 21 and all(v.ok for v in result.tensors)
    assert any(f.rule_id == "MS401" for f in result.findings)
    assert result.evidence["method"] in cfg.replace("-", "_") or cfg.startswith("ties")


@pytest.mark.parametrize("cfg", CONFIGS)
def test_one_row_overwritten_fails_on_that_row(tmp_path: Path, cfg: str) -> None:
    rng = np.random.default_rng(11)

    def edit(t: dict[str, np.ndarray]) -> None:
        w = t[MATRIX]
        scale = 3 * float(np.abs(w.astype(np.float32)).max())
        w[7] = (rng.uniform(-scale, scale, w.shape[1])).astype(w.dtype)

    result = claim(cfg, tampered(tmp_path, cfg, edit))
    assert not result.holds
    bad = failing(result)
    assert list(bad) == [MATRIX]
    assert bad[MATRIX].rows == (7,)
    finding = next(f for f in result.findings if f.rule_id == "MS420")
    assert finding.locations[0].tensor == MATRIX
    assert finding.locations[0].region.indices == (7,)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_one_element_nudged_fails_on_that_element(tmp_path: Path, cfg: str) -> None:
    """A relative nudge far below the weights' scale, but above the merge's own rounding
    in the stored dtype (bfloat16 rounds at 2^-8, float32 at 2^-24)."""
    nudge = 0.1 if "bf16" in cfg else 1e-4

    def edit(t: dict[str, np.ndarray]) -> None:
        w = t["model.layers.0.self_attn.q_proj.weight"]
        w[3, 17] = (w[3, 17].astype(np.float32) * (1 + nudge) + nudge * 1e-2).astype(w.dtype)

    result = claim(cfg, tampered(tmp_path, cfg, edit))
    bad = failing(result)
    assert list(bad) == ["model.layers.0.self_attn.q_proj.weight"]
    v = bad["model.layers.0.self_attn.q_proj.weight"]
    assert [x.index for x in v.violations] == [(3, 17)]


def test_block_scaled_in_a_ties_merge(tmp_path: Path) -> None:
    def edit(t: dict[str, np.ndarray]) -> None:
        t["model.layers.0.mlp.up_proj.weight"][20:24, 8:12] *= 1.5

    bad = failing(claim("ties", tampered(tmp_path, "ties", edit)))
    assert list(bad) == ["model.layers.0.mlp.up_proj.weight"]
    assert bad["model.layers.0.mlp.up_proj.weight"].rows == (20, 21, 22, 23)


def test_a_tensor_left_as_the_base_fails(tmp_path: Path) -> None:
    """Reverting a merged tensor to the trusted base is a change the config does not make."""
    base = load_file(str(BASE / "model.safetensors"))

    def edit(t: dict[str, np.ndarray]) -> None:
        t["model.layers.1.self_attn.v_proj.weight"] = base["model.layers.1.self_attn.v_proj.weight"]

    bad = failing(claim("task_arithmetic", tampered(tmp_path, "task_arithmetic", edit)))
    assert list(bad) == ["model.layers.1.self_attn.v_proj.weight"]


def test_other_parameters_or_another_method_do_not_explain_the_output(tmp_path: Path) -> None:
    text = (DATA / "linear.yml").read_text().replace("weight: 0.3", "weight: 0.35")
    (tmp_path / "linear.yml").write_text(text)
    # models=DIR names the folder the inputs are read from, explicitly.
    wrong = check_claim(
        "merge",
        {"config": str(tmp_path / "linear.yml"), "models": str(DATA)},
        BASE,
        output("linear"),
    )
    assert not wrong.holds and len(failing(wrong)) > 15
    assert not claim("task_arithmetic", output("ties")).holds
    assert not claim("slerp", output("linear")).holds


def test_a_missing_output_tensor_fails(tmp_path: Path) -> None:
    def edit(t: dict[str, np.ndarray]) -> None:
        del t["lm_head.weight"]

    result = claim("linear", tampered(tmp_path, "linear", edit))
    assert not result.holds
    assert "lm_head.weight" in failing(result)


def test_cli_exit_codes(tmp_path: Path, run_cli) -> None:
    cfg = DATA / "dare_ties.yml"
    # File against file: the YAML's base model is the trusted file.
    base = BASE / "model.safetensors"
    assert run_cli("diff", base, output("dare_ties"), "--claim", f"merge:{cfg}").code == 0

    def edit(t: dict[str, np.ndarray]) -> None:
        t[MATRIX][2, 5] += 0.5

    bad = tampered(tmp_path, "dare_ties", edit)
    out = tmp_path / "r.json"
    res = run_cli("diff", base, bad, "--claim", f"merge:{cfg}", "--format", "json", "-o", out)
    assert res.code == 1
    report = json.loads(out.read_text())
    hit = [f for f in report["findings"] if f["rule_id"] == "MS420"]
    assert hit and hit[0]["locations"][0]["tensor"] == MATRIX
    res = run_cli("diff", base, bad, "--claim", "merge:config=" + str(tmp_path / "none.yml"))
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1


LINEAR_TWO = "models:\n  - model: base\n  - model: {}\nmerge_method: linear\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (LINEAR_TWO.format("../merge/base"), "outside"),
        (LINEAR_TWO.format("/etc"), "outside"),
        (LINEAR_TWO.format("org/model-on-a-hub"), "not found"),
        (LINEAR_TWO.format("tune1+adapter"), "LoRA"),
        ("a: &x [1]\nb: *x\nmodels: [{model: base}]\nmerge_method: linear\n", "aliases"),
        ("models: [{model: base}]\nmerge_method: breadcrumbs\nbase_model: base\n", "re-derived"),
        ("models: [{model: base}]\nmerge_method: slerp\n", "needs a base_model"),
        ("- just a list\n", "mapping"),
        ("models: [{model: base}]\nmerge_method: linear\nx: !!python/object:os.system 1\n", "YAML"),
    ],
)
def test_hostile_configs_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    folder = tmp_path / "cfg"
    shutil.copytree(DATA / "base", folder / "base")
    (folder / "merge.yml").write_text(text)
    with pytest.raises(UsageError, match=problem):
        check_claim("merge", {"config": str(folder / "merge.yml")}, BASE, output("linear"))


def test_oversized_config_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(UsageError, match="more than a merge config"):
        check_claim("merge", {"config": str(big)}, BASE, output("linear"))


def test_grammar() -> None:
    c = parse_claim("merge:Configs/Merge.yml:seed=42")
    assert c.kind == "merge" and c.params == {"config": "Configs/Merge.yml", "seed": "42"}
    assert parse_claim("merge:config=a.yml:models=/m").params["models"] == "/m"
    for bad in ("merge", "merge:a.yml:b.yml", "merge:a.yml:seed=x", "merge:a.yml:color=1"):
        with pytest.raises(UsageError):
            parse_claim(bad)


# --- DARE's mask statistics, on a real-sized tensor -----------------------------------


def _dare(base, deltas, weights, masks):
    """DARE-TIES as its paper and mergekit define it, written here independently."""
    wd = []
    for d, w, m in zip(deltas, weights, masks, strict=True):
        kept = d * m
        s = np.abs(d).sum() / np.abs(kept).sum()
        wd.append(w * kept * s)
    wd = np.stack(wd)
    maj = np.where(wd.sum(axis=0) >= 0, 1.0, -1.0)
    return (base + np.where(np.sign(wd) == maj, wd, 0).sum(axis=0)).astype(np.float32)


def _check(base, deltas, found, weights, densities) -> tuple[bool, list[str], int]:
    solver = DareSolver(
        weights,
        densities,
        consensus=True,
        normalize=False,
        lam=1.0,
        rescale=True,
        rounding=Rounding("F32", "F32"),
        n_rows=found.shape[0],
        salient=[float(np.quantile(np.abs(d), 0.99)) for d in deltas],
    )
    b, ds, f = base.reshape(-1).astype(np.float64), [d.reshape(-1) for d in deltas], found
    f = f.reshape(-1).astype(np.float64)
    for _ in range(4):
        solver.fit(b, ds, f)
        solver.settle()
    rows = np.arange(f.size) // found.shape[1]
    ok, _ = solver.final(b, ds, f, rows)
    problems = solver.scale_problems()
    bad_rows: set[int] = set()
    for i, st in enumerate(solver.stats):
        msgs, r = st.problems(f"input {i + 1}")
        problems += msgs
        bad_rows.update(r)
    return bool(ok.all()), problems, len(bad_rows)


@pytest.fixture(scope="module")
def dare_case(minilm):
    w = minilm["encoder.layer.2.intermediate.dense.weight"]
    rng = np.random.default_rng(5)
    sd = float(w.std())
    deltas = [
        (w + rng.standard_normal(w.shape).astype(np.float32) * sd * s) - w for s in (0.02, 0.03)
    ]
    deltas = [d.astype(np.float64) for d in deltas]
    return w.astype(np.float64), deltas, rng


def test_dare_random_masks_pass_and_chosen_masks_fail(dare_case) -> None:
    base, deltas, rng = dare_case
    weights, densities = [0.6, 0.4], [0.5, 0.7]
    honest = [rng.random(base.shape) < p for p in densities]
    ok, problems, _ = _check(base, deltas, _dare(base, deltas, weights, honest), weights, densities)
    assert ok and not problems

    # Drop exactly the largest deltas of input 1 (the mask follows size, not chance).
    big = np.abs(deltas[0]) >= np.quantile(np.abs(deltas[0]), 0.97)
    chosen = [honest[0] & ~big, honest[1]]
    ok, problems, _ = _check(base, deltas, _dare(base, deltas, weights, chosen), weights, densities)
    assert ok  # every element is still some keep/drop combination ...
    assert any("largest" in p for p in problems)  # ... but not a random one

    # Keep nothing of input 2 in rows 100-102.
    chosen = [honest[0], honest[1].copy()]
    chosen[1][100:103] = False
    _, problems, n_rows = _check(
        base, deltas, _dare(base, deltas, weights, chosen), weights, densities
    )
    assert n_rows == 3 and any("rows" in p for p in problems)

    # A keep rate of 0.6 claimed as density 0.5.
    off = [rng.random(base.shape) < 0.6, honest[1]]
    _, problems, _ = _check(base, deltas, _dare(base, deltas, weights, off), weights, densities)
    assert any("keep rate" in p for p in problems)


def test_attest_merge_rechecks_the_claim(tmp_path: Path, run_cli) -> None:
    from signing.keys import KeyType, generate_private_key, write_key_pair

    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    write_key_pair(generate_private_key(KeyType.ECDSA_P256), priv, pub)
    args = ["--input", BASE, "--input", DATA / "tune1", "--input", DATA / "tune2"]
    cfg = f"config={DATA / 'ties.yml'}"
    out = tmp_path / "ok.att.json"
    res = run_cli(
        "attest",
        "merge",
        *args,
        "--produced",
        output("ties").parent,
        "--param",
        cfg,
        "--key",
        priv,
        "-o",
        out,
    )
    assert res.code == 0, res.err
    assert "attested merge (pass)" in res.err

    def edit(t: dict[str, np.ndarray]) -> None:
        t[MATRIX][0, 0] += 0.25

    bad = tampered(tmp_path, "ties", edit)
    res = run_cli(
        "attest",
        "merge",
        *args,
        "--produced",
        bad,
        "--param",
        cfg,
        "--key",
        priv,
        "-o",
        tmp_path / "bad.att.json",
    )
    assert res.code == 1 and "refusing to attest 'merge'" in res.err
    assert not (tmp_path / "bad.att.json").exists()
    # Without its config the merge cannot be re-derived: not signed unless declared.
    res = run_cli("attest", "merge", *args, "--produced", bad, "--key", priv, "-o", out)
    assert res.code == 1 and "could-not-recheck" in res.err


@pytest.mark.parametrize(("cfg", "seed"), [("dare_ties", 42), ("dare_linear", 7)])
def test_dare_masks_replayed_from_the_seed(cfg: str, seed: int) -> None:
    result = claim(cfg, output(cfg), seed=str(seed))
    assert result.holds, result.message
    assert any("re-derived from seed" in n for n in result.evidence["notes"])
    wrong = claim(cfg, output(cfg), seed=str(seed + 1))
    assert not wrong.holds
    assert failing(wrong)["dare-masks"].problem == "mask"


def test_dare_deltas_dropped_by_choice_fail_the_seeded_claim(tmp_path: Path) -> None:
    """Reverting kept deltas to the base is a valid keep/drop combination for every
    element, and too small on this model for the statistics; the seed's stream is not."""
    base = load_file(str(BASE / "model.safetensors"))
    name = "model.layers.0.mlp.gate_proj.weight"

    def edit(t: dict[str, np.ndarray]) -> None:
        kept = np.flatnonzero(t[name][9] != base[name][9])[:5]
        t[name][9, kept] = base[name][9, kept]

    path = tampered(tmp_path, "dare_ties", edit)
    assert claim("dare_ties", path).holds  # every value is some combination, by chance
    result = claim("dare_ties", path, seed="42")
    assert not result.holds
    (mask,) = [v for v in failing(result).values() if v.problem == "mask"]
    assert mask.deployed == (name,) and "differ from torch's draws" in mask.message


def test_seeded_dare_without_torch_is_not_a_pass(monkeypatch) -> None:
    monkeypatch.setattr("scanner.claims.merge.check.torch_available", lambda: False)
    result = claim("dare_ties", output("dare_ties"), seed="42")
    assert not result.holds
    v = failing(result)["dare-masks"]
    assert v.problem == "could-not-check" and "without torch" in v.message
