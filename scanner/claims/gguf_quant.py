"""``gguf`` and ``requantize`` claims (kept for callers of the former single module; the
implementation is the :mod:`scanner.claims.gguf` package)."""

from scanner.claims.gguf import REFERENCE_TYPES, check_gguf, dequantize_blocks, quantize_rows
from scanner.claims.gguf.encoders import (
    quantize_q2_k,
    quantize_q3_k,
    quantize_q6_k,
    quantize_q45_k,
)

__all__ = [
    "REFERENCE_TYPES",
    "check_gguf",
    "dequantize_blocks",
    "quantize_q2_k",
    "quantize_q3_k",
    "quantize_q6_k",
    "quantize_q45_k",
    "quantize_rows",
]
