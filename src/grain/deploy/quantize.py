"""Dynamic int8 quantization of an exported ONNX file with onnxruntime's quantizer.

What a CPU user reaches for first: weights quantized to int8 ahead of time, activations at run time
(per batch), no calibration data: onnxruntime.quantization.quantize_dynamic, as onnxruntime's
documentation ("Quantize ONNX models") recommends for transformer models on CPU. The file is pre-processed first
(`quant_pre_process`: ONNX shape inference and onnxruntime's graph optimizations, as onnxruntime's
quantization documentation recommends; its symbolic shape inference does not complete on these graphs
and is skipped), so that constant subgraphs are folded into initializers the quantizer can see. Only
matrix products with a constant weight are quantized (`MatMul` with `MatMulConstBOnly`, the dynamic
default): attention scores and contexts, softmax and LayerNorm stay in fp32, and so do the embedding
tables (quantized, each forward would dequantize a whole table before its Gather). Needs the `export`
extra (onnxruntime).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from grain.deploy.onnx import require


def quantize_int8(source: str | Path, target: str | Path, per_channel: bool = False, reduce_range: bool = True) -> Path:
    """Write `source` (an fp32 ONNX file) dynamically quantized to int8 at `target`: QInt8 weights
    (`per_channel`: one scale per output column, else one per tensor, onnxruntime's default), QUInt8
    activations; `reduce_range`: 7-bit weights, which onnxruntime's documentation advises on CPUs
    without VNNI (AVX2, AVX-512F), where 8-bit products can saturate. Measured on the quickstart's
    compact model (docs/measurements.md): per tensor with reduce_range ran fastest, and every variant kept
    its fp32 accuracy within 0.25 points. A file with its weights outside (over protobuf's 2 GB) keeps
    them outside. Returns `target`."""
    require("onnx", "onnxruntime")
    import onnx  # noqa: PLC0415  (the export extra)
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415  (the export extra)
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415  (the export extra)

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(source), load_external_data=False).graph
    external = any(onnx.external_data_helper.uses_external_data(t) for t in graph.initializer)
    with tempfile.TemporaryDirectory(prefix="grain-quant-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=external)
        quantize_dynamic(
            str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
            reduce_range=reduce_range, op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
            use_external_data_format=external,
        )
    return target
