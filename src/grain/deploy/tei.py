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
TEI serves sequence classifiers (and one-logit rerankers) and embedding models, and grain lays out both.
An embedding model (a base model saved as a sentence-transformers folder by grain's embedding tasks)
is one whose `architectures` does not end in "Classification": the ORT backend reads its
`last_hidden_state` output and pools it as `1_Pooling/config.json` says (the router's
`get_backend_model_type` parses its boolean `pooling_mode_*` fields: CLS or mean; other modes are
refused there), truncating at `sentence_bert_config.json`'s `max_seq_length` (a required field where the
file exists); TEI normalizes on request (`normalize`, default true). grain writes both files in that form.
TEI applies no module after pooling, so a folder with one (a Dense projection) is refused here, as are a
token classifier and a question-answering head, which have no TEI model type. TEI builds its own onnxruntime session with
every graph optimization, so the SkipLayerNorm fusion grain's sessions leave out
(`grain.deploy.onnx_model.DISABLED_OPTIMIZERS`) runs there.
"""

from __future__ import annotations

import json
from pathlib import Path

from grain.deploy.onnx import DEFAULT_OPSET, check_onnx, export_onnx
from grain.errors import GrainError, writing

ONNX_FILE = "onnx/model.onnx"
POOLING_FILE = "1_Pooling/config.json"
ST_CONFIG_FILE = "sentence_bert_config.json"


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


def embedding_layout(source: Path | None, name: str, max_seq_length: int) -> dict[str, dict]:
    """The sentence-transformers files of an embedding model as TEI's router parses them, {relative path:
    JSON}: `POOLING_FILE` with the boolean `pooling_mode_*` fields (sentence-transformers 6 writes one
    `pooling_mode` name instead, which that parser refuses) and `ST_CONFIG_FILE` with `max_seq_length`
    (sentence-transformers 6 keeps it as the tokenizer's model_max_length, given here). GrainError where
    `source` is no sentence-transformers folder, pools in a way TEI does not, or has a module after pooling."""
    if source is None or not (source / "modules.json").is_file() or not (source / POOLING_FILE).is_file():
        raise GrainError(
            f"grain lays out TEI folders for sequence classifiers, rerankers and sentence-transformers embedding "
            f"models; {name} is none of them: export it with --format onnx instead"
        )
    modules = [m.get("type", "") for m in json.loads((source / "modules.json").read_text())]
    extra = [m for m in modules[1:] if not m.endswith(("Pooling", "Normalize"))]
    if extra:
        raise GrainError(f"{source}: TEI applies no module after pooling, and this model has {extra}; serve it with "
                         f"sentence-transformers, or export it with --format onnx")
    pooling = json.loads((source / POOLING_FILE).read_text())
    mode = pooling.get("pooling_mode")  # sentence-transformers >= 6: a name (or a list of names)
    modes = ([mode] if isinstance(mode, str) else list(mode)) if mode is not None else [
        key.removeprefix("pooling_mode_") for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
    kind = {"cls": "cls", "cls_token": "cls", "mean": "mean", "mean_tokens": "mean"}.get(modes[0]) if len(modes) == 1 else None
    if kind is None:
        raise GrainError(f"{source / POOLING_FILE}: TEI pools by the CLS token or the mean only, not {modes}")
    dimension = pooling.get("embedding_dimension", pooling.get("word_embedding_dimension"))
    return {
        POOLING_FILE: {"word_embedding_dimension": dimension, "pooling_mode_cls_token": kind == "cls",
                       "pooling_mode_mean_tokens": kind == "mean", "pooling_mode_max_tokens": False,
                       "pooling_mode_mean_sqrt_len_tokens": False},
        ST_CONFIG_FILE: {"max_seq_length": max_seq_length, "do_lower_case": False},
    }


def write_tei_folder(model, tokenizer, out: str | Path, opset: int = DEFAULT_OPSET,
                     source: str | Path | None = None) -> tuple[Path, float]:
    """Write the TEI folder for `model` (a sequence classifier, or an embedding model saved as a
    sentence-transformers folder at `source`, compact or HF) and its `tokenizer` at `out`:
    `onnx/model.onnx` (at `opset`), config.json, tokenizer files, and an embedding model's pooling files.
    Returns the folder and the ONNX file's largest absolute difference from `model` on a padded batch
    (`check_onnx`). Raises GrainError for a model TEI does not serve or a tokenizer without a fast
    (tokenizer.json) form, before writing anything."""
    name = type(model).__name__
    source = Path(source) if source is not None else None
    longest = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    extra = {} if name.endswith("ForSequenceClassification") else embedding_layout(source, name, longest)
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
        for relative, content in extra.items():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_text(json.dumps(content, indent=2) + "\n")
    return out, check_onnx(model, path)
