"""DistilBERT (distilbert-base-uncased and its fine-tuned checkpoints).

BERT's computation under other names: the layers are `transformer.layer`, each with
`attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin1`/`ffn.lin2` and `output_layer_norm`; the
config says `n_layers`, `dim`, `n_heads`, `hidden_dim`, `activation`. No token types, no pooler:
sequence classification is pre_classifier, ReLU and classifier on [CLS].
"""

from grain.architectures.base import Architecture, ConfigFields, LayerModules

DISTILBERT = Architecture(
    family="distilbert",
    model_types=("distilbert",),
    compact_model_type="grain_distilbert",
    layer_path="transformer.layer",
    modules=LayerModules(
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attention_output="attention.out_lin",
        attention_norm="sa_layer_norm",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        ffn_norm="output_layer_norm",
    ),
    config_fields=ConfigFields(
        num_layers="n_layers", hidden_size="dim", num_heads="n_heads", intermediate_size="hidden_dim",
        activation="activation",
    ),
)
