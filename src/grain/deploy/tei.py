"""A folder text-embeddings-inference (TEI) serves with its ONNX Runtime backend.

What TEI reads (huggingface/text-embeddings-inference at 0d124dc, `backends/ort/src/lib.rs` and
`router/src/lib.rs`):
- `model.onnx`, else `onnx/model.onnx`: fp32 (the ORT backend refuses other dtypes), run with all graph
  optimizations. Inputs fed by name as int64 [batch, length]: `input_ids` and `attention_mask` always,
  `token_type_ids` only where the graph declares it (it reads the session's inputs). A classifier's
  output is read by name: `logits`, [batch, labels].
- `config.json`: `architectures` (a name ending in "Classification" makes a classifier; one label a
  reranker, more a classifier, then `id2label` and `label2id` are required), `model_type` (no list of
  allowed types; "roberta", "xlm-roberta" and "camembert" shift the longest input by the padding id + 1
  for their position offset), `max_position_embeddings`, `pad_token_id`, and for the ORT backend's own
  config `hidden_size` and `num_hidden_layers` (DistilBERT names them `dim` and `n_layers`: both are
  written here).
- `tokenizer.json` (fast tokenizers only); `tokenizer_config.json` for the padding side.

So the folder holds the compact model's fp32 ONNX file as `onnx/model.onnx`, its tokenizer files and a
config.json with those fields and the compact model's own, `model_type` the family's Hugging Face one
(so that TEI applies its position offset) and no `auto_map` (the folder has no PyTorch code or weights).
TEI serves sequence classifiers (and one-logit rerankers) and embedding models; grain lays out the
classifiers (embedding models come with their task type), and refuses a token classifier or a
question-answering head, which have no TEI model type. TEI builds its own onnxruntime session with
every graph optimization, so the SkipLayerNorm fusion grain's sessions leave out
(`grain.deploy.onnx_model.DISABLED_OPTIMIZERS`) runs there.
"""

from __future__ import annotations

import json
from pathlib import Path

from grain.deploy.onnx import DEFAULT_OPSET, check_onnx, export_onnx
from grain.errors import GrainError, writing

ONNX_FILE = "onnx/model.onnx"


def hf_model_type(config) -> str:
    """The Hugging Face `model_type` a compact config extends ("grain_roberta" -> "roberta"), or its own."""
    own = config.model_type
    for base in type(config).__mro__[1:]:
        model_type = getattr(base, "model_type", "")
        if model_type and model_type != own:
            return model_type
    return own


def tei_config(model) -> dict:
    """config.json for TEI: the model's config plus the fields TEI requires (see the module docstring)."""
    config = model.config
    data = config.to_dict()
    data.pop("auto_map", None)
    data["model_type"] = hf_model_type(config)
    data["architectures"] = [type(model).__name__]
    data["hidden_size"] = config.hidden_size  # DistilBERT: attribute_map from `dim`
    data["num_hidden_layers"] = config.num_hidden_layers
    data["max_position_embeddings"] = config.max_position_embeddings
    if config.pad_token_id is None:
        raise GrainError("the model's config has no pad_token_id, which TEI pads with; set it in config.json")
    data["pad_token_id"] = config.pad_token_id
    data["id2label"] = {str(i): label for i, label in config.id2label.items()}
    data["label2id"] = {label: int(i) for label, i in config.label2id.items()}
    return data


def write_tei_folder(model, tokenizer, out: str | Path, opset: int = DEFAULT_OPSET) -> tuple[Path, float]:
    """Write the TEI folder for `model` (a sequence classifier, compact or HF) and its `tokenizer` at
    `out`: `onnx/model.onnx` (at `opset`), config.json, tokenizer files. Returns the folder and the ONNX file's
    largest absolute difference from `model` on a padded batch (`check_onnx`). Raises GrainError for a
    head TEI does not serve or a tokenizer without a fast (tokenizer.json) form, before writing anything."""
    name = type(model).__name__
    if not name.endswith("ForSequenceClassification"):
        raise GrainError(
            f"grain lays out TEI folders for sequence classifiers and rerankers; {name} is not one: "
            f"export it with --format onnx instead"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise GrainError(
            f"text-embeddings-inference reads tokenizer.json, which {type(tokenizer).__name__} (a slow "
            f"tokenizer) has not; save the model with a fast tokenizer"
        )
    data = tei_config(model)  # refuses a config TEI cannot read, before writing anything
    out = Path(out)
    with writing(out):
        path = export_onnx(model, out / ONNX_FILE, opset=opset)
        tokenizer.save_pretrained(out)
        (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out, check_onnx(model, path)
