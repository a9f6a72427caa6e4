"""Regenerate the pinned mergekit outputs in this folder (run by hand, never by the tests).

    python -m venv --system-site-packages /tmp/mkvenv      # CPU torch 2.13.0 from the host
    /tmp/mkvenv/bin/pip install mergekit==0.1.5
    PYTHONPATH=. python tests/claims/data/merge/make_data.py /tmp/mkvenv/bin/mergekit-yaml

The input models are a two-layer Llama-architecture model whose matrices are cut from
all-MiniLM-L6-v2's trained weights (the ``minilm`` fixture) and three fine-tune twins of
it; ``mergekit-yaml`` (CPU, ``--random-seed`` for DARE) merges them with each ``*.yml``
config into ``out_<config>/model.safetensors``. ORIGIN.md records the versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fixtures import real_model

HERE = Path(__file__).resolve().parent
HIDDEN, INTER, KV, LAYERS, VOCAB = 32, 64, 16, 2, 64
SEEDS = {"dare_ties": 42, "dare_linear": 7}


def llama_config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


def base_weights() -> dict[str, np.ndarray]:
    m = load_file(str(real_model("minilm")))
    out = {
        "model.embed_tokens.weight": m["embeddings.word_embeddings.weight"][1000:1064, :HIDDEN],
        "lm_head.weight": m["embeddings.word_embeddings.weight"][2000:2064, :HIDDEN],
        "model.norm.weight": m["embeddings.LayerNorm.weight"][:HIDDEN],
    }
    for i in range(LAYERS):
        src, dst = f"encoder.layer.{i}.", f"model.layers.{i}."
        inter = m[src + "intermediate.dense.weight"]
        out |= {
            dst + "self_attn.q_proj.weight": m[src + "attention.self.query.weight"][
                :HIDDEN, :HIDDEN
            ],
            dst + "self_attn.k_proj.weight": m[src + "attention.self.key.weight"][:KV, :HIDDEN],
            dst + "self_attn.v_proj.weight": m[src + "attention.self.value.weight"][:KV, :HIDDEN],
            dst + "self_attn.o_proj.weight": m[src + "attention.output.dense.weight"][
                :HIDDEN, :HIDDEN
            ],
            dst + "mlp.gate_proj.weight": inter[:INTER, :HIDDEN],
            dst + "mlp.up_proj.weight": inter[INTER : 2 * INTER, :HIDDEN],
            dst + "mlp.down_proj.weight": m[src + "output.dense.weight"][:HIDDEN, :INTER],
            dst + "input_layernorm.weight": m[src + "attention.output.LayerNorm.weight"][:HIDDEN],
            dst + "post_attention_layernorm.weight": m[src + "output.LayerNorm.weight"][:HIDDEN],
        }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def twin(base: dict[str, np.ndarray], seed: int, scale: float, rank: int) -> dict[str, np.ndarray]:
    """A fine-tune twin: diffuse noise at ``scale`` x each tensor's std, plus a rank-``rank``
    update of each matrix (what a training run leaves)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in base.items():
        sd = float(v.std()) or 1.0
        d = rng.standard_normal(v.shape) * sd * scale
        if v.ndim == 2 and rank:
            d += (
                (rng.standard_normal((v.shape[0], rank)) @ rng.standard_normal((rank, v.shape[1])))
                * sd
                * scale
                / rank
            )
        out[k] = (v + d).astype(np.float32)
    return out


def write(name: str, tensors: dict[str, np.ndarray]) -> None:
    d = HERE / name
    d.mkdir(exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(llama_config(), indent=1) + "\n")


def main(mergekit_yaml: str) -> None:
    base = base_weights()
    write("base", base)
    write("tune1", twin(base, 1, 0.02, 2))
    write("tune2", twin(base, 2, 0.03, 4))
    write("tune3", twin(base, 3, 0.4, 0))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for cfg in sorted(HERE.glob("*.yml")):
        out = HERE / f"out_{cfg.stem}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            mergekit_yaml,
            cfg.name,
            str(out),
            "--no-write-model-card",
            "--no-copy-tokenizer",
            "--quiet",
        ]
        method = cfg.stem.split("-")[0]
        if method in SEEDS:
            cmd += ["--random-seed", str(SEEDS[method])]
        subprocess.run(cmd, cwd=HERE, check=True, env=env)
        for extra in out.iterdir():
            if extra.name != "model.safetensors":
                extra.unlink()


if __name__ == "__main__":
    main(sys.argv[1])
