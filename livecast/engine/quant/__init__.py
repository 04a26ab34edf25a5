"""Weight-only quantization: int4 (AWQ, RTN, GGUF Q4_0/Q4_1) and int8 (GGUF Q8_0) linears.

`int4`/`int8` hold the formats and their linears, `awq` the algorithm, `awq_format` the AutoAWQ
GEMM checkpoint layout, `gguf` the native GGUF blocks, `apply` swaps a model's linears.
"""
from livecast.engine.quant.int4 import Int4Linear, QuantizedWeight, quantize_rtn
from livecast.engine.quant.int8 import Int8Linear

QUANTIZATION_MODES = ("auto", "none", "awq", "gguf")

__all__ = ["Int4Linear", "Int8Linear", "QuantizedWeight", "quantize_rtn", "QUANTIZATION_MODES"]
