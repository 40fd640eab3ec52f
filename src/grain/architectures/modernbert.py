"""ModernBERT and its descendants (answerdotai/ModernBERT-base/large, jhu-clsp/ettin-encoder-*,
jhu-clsp/mmBERT-*, Alibaba-NLP/gte-modernbert-base): a pre-norm encoder with rotary positions.

What differs from BERT (transformers' `modeling_modernbert.py`), and what grain makes of it:
- `attn.Wqkv` is one Linear to [Q | K | V] (heads x head_dim each), with no bias by default
  (`attention_bias`): the query, key and value roles are that module, sliced at 0, hidden, 2 hidden.
- RoPE rotates dimension i of a head with i + head_dim/2 under one frequency (rotate_half): a QK unit
  is that pair, removed from Q and K together (`EncoderShape.qk_unit_width` 2). The compact model keeps,
  per head, the frequencies of its kept pairs (`rotary_pairs`), so its rotated scores are the masked
  model's.
- VO units as in BERT: V rows of Wqkv and `attn.Wo` columns.
- `mlp.Wi` maps to [input | gate] (GeGLU: act(input) * gate): an FFN unit is Wi rows j and
  intermediate + j and `mlp.Wo` column j.
- Pre-norm: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)); layer 0's attn_norm is an identity, and
  a final norm follows the layers. An emptied sub-layer adds only its output bias (none by default).
- Layers alternate between sliding-window attention (keys within `local_attention` / 2 positions) and
  global attention, each type with its own rope theta (`layer_types`, `rope_parameters`).
"""

from grain.architectures.base import Architecture, ConfigFields, LayerModules, setting


def _linear_bias(config) -> bool:
    return bool(setting(config, "attention_bias", False))


def _unsupported(config) -> str | None:
    if _linear_bias(config) != bool(setting(config, "mlp_bias", False)):
        return "its attention_bias and mlp_bias differ (grain prunes encoders whose Linears all have biases or none)"
    hidden, heads = setting(config, "hidden_size"), setting(config, "num_attention_heads")
    if hidden % heads or (hidden // heads) % 2:
        return "its head dimension is not an even divisor of hidden_size (rotary pairs need one)"
    return None


MODERNBERT = Architecture(
    family="modernbert",
    model_types=("modernbert",),
    compact_model_type="grain_modernbert",
    layer_path="layers",
    modules=LayerModules(
        query="attn.Wqkv", key="attn.Wqkv", value="attn.Wqkv", attention_output="attn.Wo", attention_norm="attn_norm",
        ffn_in="mlp.Wi", ffn_out="mlp.Wo", ffn_norm="mlp_norm",
    ),
    config_fields=ConfigFields(activation="hidden_activation"),
    unsupported=_unsupported,
    fused_qkv=True,
    rotary=True,
    gated_ffn=True,
    linear_bias=_linear_bias,
    compact_modules=LayerModules(
        query="attn.query", key="attn.key", value="attn.value", attention_output="attn.Wo", attention_norm="attn_norm",
        ffn_in="mlp.Wi", ffn_out="mlp.Wo", ffn_norm="mlp_norm",
    ),
    compact_empty_bias={"attention_output": "attn.bias", "ffn_out": "mlp.bias"},
)
