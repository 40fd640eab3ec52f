"""ONNX export of a compact (or HF) encoder with its task head, and the check of the file against PyTorch.

The file has the inputs the model's family reads (`grain.models.inputs.model_input_names`: input_ids
and attention_mask, plus token_type_ids for families with segments, such as BERT and ELECTRA; int64,
[batch, sequence]) and the task head's outputs (`logits`; `start_logits` and `end_logits` for question
answering), both axes dynamic; `check_onnx` runs it with onnxruntime on a padded batch of another shape than the one it was
exported with and returns the largest absolute difference from the PyTorch model.

Exporter: torch.onnx.export(..., dynamo=True), the torch.export-based exporter (the default since
torch 2.9; it needs `onnxscript`). It exports the forward whole, as `torch.export` sees it; the
compact forward has no host syncs (`grain.models.compact.kernels.KeyMask.of`), so the attention mask
stays in the graph whatever the example batch's padding. The legacy TorchScript exporter
(dynamo=False) is deprecated, and a trace keeps any Python branch on a tensor it meets as a constant;
torch.export fails on such a branch instead of exporting a wrong graph.

Opset: 20 (`DEFAULT_OPSET`, torch 2.13's default for this exporter; onnxruntime runs it from
1.17 on). Another opset below 18 (the exporter's own operator set) is converted down by onnx's
version converter, which may fail or keep 18: `onnx_opset` reads the one in the file. The graph is the
CPU kernel plan of the compact attention (the model is exported on CPU, in fp32); onnxruntime's CUDA
provider runs the same file.

Needs the `export` extra: `pip install -e .[export]` (onnx, onnxscript, onnxruntime), imported where
used (`require`), so that grain runs without it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from grain.errors import GrainError
from grain.models.inputs import model_input_names, random_batch

DEFAULT_OPSET = 20
INSTALL_HINT = "pip install -e .[export]"


def require(*modules: str) -> None:
    """Import `modules` or raise a GrainError naming the extra that installs them."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise GrainError(f"{', '.join(missing)} not installed: ONNX export needs the export extra ({INSTALL_HINT})")


def output_names(model) -> list[str]:
    """The task head's output tensors, by the names its forward returns them under (e.g. `logits`, or
    `start_logits` and `end_logits`), read from one forward of a 1 x 4 batch on the model's device."""
    device = next(model.parameters()).device
    inputs = random_batch(model.config, 1, 4, padded=True, device=device)
    with torch.no_grad():
        outputs = model(**{name: inputs[name] for name in model_input_names(model)})
    return [name for name, value in outputs.items() if torch.is_tensor(value) and name != "loss"]


class TensorOutputs(nn.Module):
    """`model` with tensor inputs (`inputs`: the names it reads) and a tuple of the head's output tensors
    (`outputs`), what ONNX names."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.inputs = model_input_names(model)
        self.outputs = output_names(model)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **types)
        return tuple(out[name] for name in self.outputs)

    def feeds(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of `inputs` the model reads."""
        return {name: inputs[name] for name in self.inputs}


@contextlib.contextmanager
def quieted():
    """Without the exporter's progress lines (stdout), its log below errors, and warnings about what it
    handles itself (e.g. index tensors the compact attention caches on first use)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model, path: str | Path, opset: int = DEFAULT_OPSET, example: dict[str, torch.Tensor] | None = None,
    quiet: bool = True,
) -> Path:
    """Export `model` (a grain compact or HF BERT-family head) to ONNX at `path`, batch and sequence
    length dynamic, traced on `example` (default: a padded 2 x 16 batch), on CPU in fp32 (`model` is
    moved there in place); `quiet`: see `quieted`. Returns the path."""
    require("onnx", "onnxscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", torch.float32).eval()
    wrapper = TensorOutputs(model).eval()
    example = wrapper.feeds(example if example is not None else random_batch(model.config, 2, 16, padded=True))
    max_len = model.config.max_position_embeddings
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence", max=max_len)}
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30  # protobuf's 2 GB limit
    with (quieted() if quiet else contextlib.nullcontext()), torch.no_grad():
        torch.onnx.export(
            wrapper, (), str(path), kwargs=example, input_names=wrapper.inputs, output_names=wrapper.outputs,
            opset_version=opset, dynamo=True, dynamic_shapes={name: dims for name in wrapper.inputs},
            external_data=large,
        )
    return path


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset the file declares."""
    import onnx  # noqa: PLC0415  (the export extra, optional: see the module docstring)

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_input_names(path: str | Path) -> list[str]:
    """The graph inputs the file declares, in order."""
    import onnx  # noqa: PLC0415  (the export extra, optional: see the module docstring)

    return [tensor.name for tensor in onnx.load(str(path), load_external_data=False).graph.input]


def onnx_outputs(path: str | Path, inputs: dict[str, torch.Tensor], providers: list[str] | None = None) -> list:
    """The file's outputs (numpy arrays) on `inputs` (those of them the file declares) with onnxruntime."""
    require("onnxruntime")
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: see the module docstring)

    session = onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    return session.run(None, {i.name: inputs[i.name].numpy() for i in session.get_inputs()})


CHECK_SHAPE = (3, 24)


def check_onnx(model, path: str | Path, batch: int = CHECK_SHAPE[0], seq_len: int = CHECK_SHAPE[1]) -> float:
    """Largest absolute difference between the ONNX file (onnxruntime, CPU) and `model` (PyTorch) on a
    padded [batch, seq_len] batch, over all outputs and positions (padded positions included)."""
    inputs = random_batch(model.config, batch, min(seq_len, model.config.max_position_embeddings), padded=True, seed=1)
    got = onnx_outputs(path, inputs)
    wrapper = TensorOutputs(model).eval()
    with torch.no_grad():
        expected = wrapper(**wrapper.feeds(inputs))
    return max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
