"""An ONNX file run by onnxruntime, called like the PyTorch model it was exported from.

`OnnxModel(path)(input_ids=..., attention_mask=..., token_type_ids=...)` feeds the inputs the file
declares (others are ignored) and returns the head's outputs as transformers' output classes
(`SequenceClassifierOutput`, `TokenClassifierOutput`, `QuestionAnsweringModelOutput`), torch tensors on
the CPU. So grain's evaluation (`grain.tasks.evaluate.evaluate`) scores an ONNX file with the task's own
evaluator, exactly as it scores the PyTorch model. Needs the `export` extra (onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from grain.deploy.onnx import require
from grain.errors import GrainError

# onnxruntime graph optimizations grain's sessions leave out. SkipLayerNormFusion fuses each residual Add
# with the LayerNorm after it; on this project's CPU (2 cores, AVX2) the fused kernel took ~5 ms per
# [32, 128, 384] LayerNorm where the unfused pair takes ~1 ms: 40-60 ms of the quickstart's compact
# model's 150-200 ms, fp32 and int8 alike (docs/measurements.md). A user's own session passes the same
# list as `disabled_optimizers` to get the same speed; TEI builds its session itself and cannot.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def ort_session(path: str | Path, threads: int | None = None, providers: list | None = None):
    """An onnxruntime InferenceSession on `path` with `threads` intra-op threads (default: as many as
    torch uses) and all graph optimizations (onnxruntime's default level) but `DISABLED_OPTIMIZERS`."""
    require("onnxruntime")
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: grain runs without it)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(
        str(path), options, providers=providers or ["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


class OnnxModel(nn.Module):
    """The ONNX file at `path` as a module whose forward takes a model's keyword inputs (int64 tensors
    [batch, sequence]) and returns its outputs (see the module docstring); always on the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        # evaluate() reads the device from the first parameter: an empty one on the CPU
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, **inputs: torch.Tensor):
        if "token_type_ids" in self.inputs and "token_type_ids" not in inputs:  # as PyTorch: segment 0
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        missing = [name for name in self.inputs if name not in inputs]
        if missing:
            raise GrainError(f"{self.path} needs the inputs {', '.join(missing)}, which the batch has not")
        feeds = {name: inputs[name].detach().cpu().numpy() for name in self.inputs}
        values = dict(zip(self.outputs, (torch.from_numpy(v) for v in self.session.run(None, feeds))))
        if "start_logits" in values:
            return QuestionAnsweringModelOutput(start_logits=values["start_logits"], end_logits=values["end_logits"])
        logits = values["logits"]
        return (TokenClassifierOutput if logits.dim() == 3 else SequenceClassifierOutput)(logits=logits)
