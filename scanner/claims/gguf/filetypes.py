"""llama.cpp's file types: which ggml type ``llama-quantize`` gives each tensor.

A file type (``Q4_K_M``, ``Q3_K_S``, ``IQ3_XS`` ...) is a mixture: a default type, raised
for sensitive tensors (attention V, FFN down in some layers, the output and tied token
embeddings) and lowered to a compatible type when a tensor's rows do not fill the type's
blocks (Q4_K -> Q5_0, Q6_K -> Q8_0 ...). This module follows llama.cpp's own rules
(``llama_tensor_get_type`` in ``src/llama-quant.cpp``), walking the tensors in file order
as llama.cpp does, so a claimed file type can be checked tensor by tensor.

Versions of llama.cpp and users' overrides (``--output-tensor-type``,
``--token-embedding-type``, ``--tensor-type``, ``--leave-output-tensor``) raise some
tensors further; a stored type at least as precise as the rule's is accepted and noted, a
less precise one violates the claim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FTYPE_DEFAULT = {
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
    "Q2_K": "Q2_K",
    "Q2_K_S": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
    "IQ2_XXS": "IQ2_XXS",
    "IQ2_XS": "IQ2_XS",
    "IQ2_S": "IQ2_XS",
    "IQ2_M": "IQ2_S",
    "IQ3_XXS": "IQ3_XXS",
    "IQ3_XS": "IQ3_S",
    "IQ3_S": "IQ3_S",
    "IQ3_M": "IQ3_S",
    "IQ1_S": "IQ1_S",
    "IQ1_M": "IQ1_M",
    "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS",
}
FTYPE_IDS = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ2_XXS": 19,
    "IQ2_XS": 20,
    "Q2_K_S": 21,
    "IQ3_XS": 22,
    "IQ3_XXS": 23,
    "IQ1_S": 24,
    "IQ4_NL": 25,
    "IQ3_S": 26,
    "IQ3_M": 27,
    "IQ2_S": 28,
    "IQ4_XS": 29,
    "IQ1_M": 31,
    "IQ2_M": 29 + 100,  # not written by every version; never matched by id
}
FTYPE_BY_ID = {v: k for k, v in FTYPE_IDS.items() if v < 100}

FALLBACK = {
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "IQ2_XXS": "IQ4_NL",
    "IQ2_XS": "IQ4_NL",
    "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL",
    "IQ3_S": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
"""llama.cpp's replacement when a tensor's rows do not fill 256-element super-blocks."""

_LOW_IQ = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")


def bits_per_weight(type_name: str) -> float:
    from scanner.dtypes import DTYPES

    dt = DTYPES[type_name]
    if dt.block_elements:
        return dt.block_bytes * 8 / dt.block_elements
    return float((dt.itemsize or 4) * 8)


def block_elements(type_name: str) -> int:
    from scanner.dtypes import DTYPES

    return DTYPES[type_name].block_elements or 1


@dataclass(frozen=True)
class Hparams:
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 1

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


def hparams(meta: Mapping[str, Any]) -> Hparams:
    arch = str(meta.get("general.architecture", ""))

    def first(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):
            value = value[0] if value else default
        if isinstance(value, dict):  # long arrays are summarized by the reader
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            return default

    n_head = first("attention.head_count", 1)
    return Hparams(
        arch,
        first("block_count", 1),
        n_head,
        first("attention.head_count_kv", n_head),
        first("expert_count", 0),
    )


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return cat
    return "other"


_NOT_QUANTIZED = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "time_mix_",
    "attn_rel_b.weight",
    ".position_embd",
    ".rel_pos",
    ".patch_embd",
)


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp quantizes 2-D and 3-D weights except norms, routers and a few small
    tables (``tensor_allows_quantization``)."""
    if len(shape) < 2 or not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(key in name for key in _NOT_QUANTIZED)


class Mixture:
    """llama.cpp's per-tensor type choice for one file type, fed tensors in file order."""

    def __init__(self, ftype: str, hp: Hparams, names: Iterable[str], *, has_imatrix: bool) -> None:
        self.ftype = ftype
        self.hp = hp
        self.has_imatrix = has_imatrix
        names = list(names)
        self.n_attention_wv = sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
        self.tied = "output.weight" not in names
        self.n_ffn = hp.n_layer
        self.i_attention_wv = 0
        self.i_ffn_down = 0
        self.i_ffn_gate = 0
        self.i_ffn_up = 0

    def type_for(self, name: str, shape: tuple[int, ...]) -> str | None:
        """The ggml type llama.cpp stores ``name`` in (None: left as it was)."""
        if not allows_quantization(name, shape):
            return None
        new = self._choose(FTYPE_DEFAULT[self.ftype], name, shape, category(name))
        cols = shape[-1]
        if cols % block_elements(new):
            new = FALLBACK.get(new, new)
            if cols % block_elements(new):
                new = "F16"
        return new

    def _layer(self, counter: int, name: str) -> int:
        if self.hp.n_expert > 1:
            try:
                return int(name.split(".")[1])
            except (IndexError, ValueError):
                return counter
        return counter

    def _choose(self, new: str, name: str, shape: tuple[int, ...], cat: str) -> str:
        ft, hp = self.ftype, self.hp

        def more_bits(i: int, n: int) -> bool:
            return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

        if cat == "output" or (self.tied and cat == "token_embd"):
            if hp.arch == "falcon" or shape[-1] % block_elements(new):
                return "Q8_0"
            if ft in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                return "Q5_K"
            return "Q6_K" if new != "Q8_0" else new
        if cat == "token_embd":
            if ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
                return "Q2_K"
            if ft in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
                return "IQ3_S"
            return new
        attn_v = cat in ("attn_v", "attn_qkv", "attn_kv_b")
        if ft in _LOW_IQ:
            if attn_v:
                self.i_attention_wv += 1
                if hp.n_gqa >= 4 or hp.n_expert >= 4:
                    return "Q4_K"
                return "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
            if hp.n_expert == 8 and cat == "attn_k":
                return "Q4_K"
            if cat == "ffn_down":
                low = self.i_ffn_down < self.n_ffn // 8
                self.i_ffn_down += 1
                if low:
                    return "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
                return new
            if cat == "attn_output":
                if hp.n_expert == 8:
                    return "Q5_K"
                if ft in ("IQ1_S", "IQ1_M"):
                    return "IQ2_XXS"
                if ft in ("IQ2_S", "IQ2_M"):
                    return "IQ3_S"
            return new
        if attn_v:
            i, n = self.i_attention_wv, self.n_attention_wv
            if ft == "Q2_K":
                new = "Q4_K" if hp.n_gqa >= 4 else "Q3_K"
            elif ft == "Q2_K_S" and hp.n_gqa >= 4:
                new = "Q4_K"
            elif ft == "IQ3_XXS":
                new = "Q4_K" if hp.n_gqa >= 4 else ("IQ3_S" if not self.has_imatrix else "IQ3_XXS")
            elif (ft in ("IQ3_XS", "IQ3_S") and hp.n_gqa >= 4) or ft == "IQ3_M":
                new = "Q4_K"
            elif ft == "Q3_K_M":
                new = "Q5_K" if i < 2 else "Q4_K"
            elif ft == "Q3_K_L" or (ft in ("IQ4_NL", "IQ4_XS") and hp.n_gqa >= 4):
                new = "Q5_K"
            elif ft in ("Q4_K_M", "Q5_K_M") and more_bits(i, n):
                new = "Q6_K"
            elif ft == "Q4_K_S" and i < 4:
                new = "Q5_K"
            if hp.is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            if hp.n_expert == 8:
                new = "Q8_0"
            self.i_attention_wv += 1
            return new
        if cat == "attn_k":
            if hp.n_expert == 8:
                return "Q8_0"
            if ft == "IQ3_XS":
                return "IQ3_XXS"
            if ft == "IQ3_XXS":
                return "IQ2_S"
            return new
        if cat == "attn_q":
            if ft == "IQ3_XS":
                return "IQ3_XXS"
            if ft == "IQ3_XXS":
                return "IQ2_S"
            return new
        if cat == "ffn_down":
            i, n = self._layer(self.i_ffn_down, name), self.n_ffn
            self.i_ffn_down += 1
            falcon = hp.arch == "falcon"
            if ft == "Q2_K":
                return "Q3_K"
            if ft == "Q2_K_S":
                return "Q4_K" if i < n // 8 else new
            if ft == "IQ3_XXS" and not self.has_imatrix:
                return "Q4_K" if i < n // 8 else "Q3_K"
            if ft == "Q3_K_M":
                if i < n // 16:
                    return "Q5_K"
                return "Q4_K" if not falcon or more_bits(i, n) else "Q3_K"
            if ft == "IQ3_M" and (i < n // 8 or (hp.n_expert == 8 and more_bits(i, n))):
                return "Q4_K"
            if ft == "Q3_K_L":
                return "Q4_K" if falcon else "Q5_K"
            if ft == "Q4_K_M":
                if falcon:
                    return "Q6_K" if i < n // 16 else ("Q5_K" if more_bits(i, n) else "Q4_K")
                return "Q6_K" if more_bits(i, n) else new
            if i < n // 8 and ft in ("IQ4_NL", "IQ4_XS") and not self.has_imatrix:
                return "Q5_K"
            if ft == "Q5_K_M" and more_bits(i, n):
                return "Q6_K"
            if ft == "Q4_K_S" and not falcon and i < n // 8:
                return "Q5_K"
            if ft in ("Q4_0", "Q5_0") and self.has_imatrix and i < n // 8:
                return "Q4_1" if ft == "Q4_0" else "Q5_1"
            return new
        if cat == "attn_output":
            if hp.arch != "falcon":
                if hp.n_expert == 8:
                    if ft in (
                        "Q2_K",
                        "IQ3_XS",
                        "IQ3_XXS",
                        "Q3_K_S",
                        "Q3_K_M",
                        "IQ4_NL",
                        "Q4_K_S",
                        "Q4_K_M",
                        "IQ3_S",
                        "IQ3_M",
                        "IQ4_XS",
                    ):
                        return "Q5_K"
                    return new
                return {
                    "Q2_K": "Q3_K",
                    "IQ3_XXS": "IQ3_S",
                    "Q3_K_M": "Q4_K",
                    "Q3_K_L": "Q5_K",
                    "IQ3_M": "Q4_K",
                }.get(ft, new)
            return "Q4_K" if ft == "Q3_K_L" else new
        if cat == "attn_qkv":
            if ft in ("Q3_K_M", "Q3_K_L", "IQ3_M"):
                return "Q4_K"
            return {"Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(ft, new)
        if cat in ("ffn_gate", "ffn_up"):
            counter = self.i_ffn_gate if cat == "ffn_gate" else self.i_ffn_up
            i, n = self._layer(counter, name), self.n_ffn
            if cat == "ffn_gate":
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
            if ft == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
                return "IQ3_XXS"
            return new
        return new


def ftype_of_claim(type_param: str) -> str:
    """The llama.cpp file type a claim's ``type`` names (``q4_k_m`` -> ``Q4_K_M``)."""
    return type_param.upper()


def declared_ftype(meta: Mapping[str, Any]) -> str | None:
    value = meta.get("general.file_type")
    try:
        return FTYPE_BY_ID.get(int(value)) if value is not None else None
    except (TypeError, ValueError):
        return None
