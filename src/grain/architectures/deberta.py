"""DeBERTa-v2 and v3 (microsoft/deberta-v3-base, ...): disentangled attention.

The layers are BERT's but for the projections' names (`attention.self.{query,key,value}_proj`); the
attention adds content-to-position and position-to-content scores that read the relative position
embeddings through the same W_Q and W_K (`share_att_key`, as in every v3 checkpoint). A QK unit j is
then row j of W_Q and W_K wherever they are applied: the mask on the query projection's output also
zeroes it in the projected relative embeddings (the hook runs on every call), and compaction slices
the rows once for both uses. Checkpoints with separate position projections (`share_att_key`
false) are refused: their units would also live in pos_key_proj / pos_query_proj.
"""

from grain.architectures.base import Architecture, LayerModules, setting


def _unsupported(config) -> str | None:
    relative = setting(config, "relative_attention", False) and setting(config, "pos_att_type")
    if relative and not setting(config, "share_att_key", False):
        return "its relative-position projections are separate from W_Q/W_K (share_att_key=false)"
    head_size = setting(config, "attention_head_size")
    if head_size is not None and head_size * setting(config, "num_attention_heads") != setting(config, "hidden_size"):
        return "its heads are not hidden_size / num_attention_heads wide (attention_head_size)"
    return None


DEBERTA_V2 = Architecture(
    family="deberta-v2",
    model_types=("deberta-v2",),
    compact_model_type="grain_deberta_v2",
    modules=LayerModules(
        query="attention.self.query_proj", key="attention.self.key_proj", value="attention.self.value_proj",
    ),
    unsupported=_unsupported,
)
