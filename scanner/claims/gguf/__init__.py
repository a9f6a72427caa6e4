"""GGUF claims: ggml block types and llama.cpp file types re-derived from trusted weights.

* :mod:`layouts` decodes blocks into codes and scales (vectorized per type);
* :mod:`judge` judges blocks against trusted rows (exact, nearest, feasible, codebook);
* :mod:`filetypes` follows llama.cpp's per-tensor type choice for a file type;
* :mod:`check` runs a claim over a pair of artifacts, tensor by tensor, then compares
  rows across the file;
* :mod:`encoders` writes round-to-nearest blocks (tests and red-team fixtures).
"""

from scanner.claims.gguf.check import REFERENCE_TYPES, check_gguf
from scanner.claims.gguf.encoders import quantize_rows
from scanner.claims.gguf.layouts import dequantize

dequantize_blocks = dequantize

__all__ = ["REFERENCE_TYPES", "check_gguf", "dequantize_blocks", "quantize_rows"]
