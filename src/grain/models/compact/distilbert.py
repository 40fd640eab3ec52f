"""Compact DistilBERT: the compact layers of `.bert` (kept at `transformer.layer`, as in
DistilBertModel) behind DistilBERT's embeddings (no token types), and its heads.

DistilBERT computes what BERT does with other names; its compact config maps BERT's field names onto
DistilBERT's (`intermediate_size` is `hidden_dim`, ...) so the compact layers read them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DistilBertConfig
from transformers.models.distilbert.modeling_distilbert import Embeddings

from .bert import (
    Classifier,
    CompactFamily,
    CompactStructure,
    GrainBertForQuestionAnswering,
    GrainBertForTokenClassification,
    GrainBertModel,
    GrainBertPreTrainedModel,
)


class GrainDistilBertConfig(CompactStructure, DistilBertConfig):
    """DistilBertConfig plus the kept structure (`CompactStructure`), readable under BERT's field names."""

    model_type = "grain_distilbert"
    attribute_map = {
        **DistilBertConfig.attribute_map,
        "intermediate_size": "hidden_dim",
        "hidden_act": "activation",
        "hidden_dropout_prob": "dropout",
        "attention_probs_dropout_prob": "attention_dropout",
    }
    layer_norm_eps = 1e-12  # DistilBERT's LayerNorms have it built in
    classifier_dropout = None
    __init__ = CompactStructure.__init__  # see GrainBertConfig


class GrainDistilBertPreTrainedModel(GrainBertPreTrainedModel):
    config_class = GrainDistilBertConfig
    base_model_prefix = "distilbert"


class GrainDistilBertModel(GrainDistilBertPreTrainedModel, GrainBertModel):
    embeddings_class = Embeddings
    has_pooler = False
    encoder_name = "transformer"

    def __init__(self, config: GrainDistilBertConfig, add_pooling_layer: bool = False):
        super().__init__(config, add_pooling_layer=False)
        for layer in self.transformer.layer:
            layer.attention.output.dropout.p = 0.0  # DistilBERT drops nothing after out_lin

    def embed(self, input_ids, token_type_ids, position_ids) -> torch.Tensor:
        return self.embeddings(input_ids=input_ids, position_ids=position_ids)  # no token types


class GrainDistilBertForSequenceClassification(Classifier, GrainDistilBertPreTrainedModel):
    """pre_classifier, ReLU, dropout and classifier on [CLS], as DistilBertForSequenceClassification."""

    def __init__(self, config: GrainDistilBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = GrainDistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def logits(self, outputs) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.pre_classifier(outputs.last_hidden_state[:, 0]))))


class GrainDistilBertForTokenClassification(GrainDistilBertPreTrainedModel, GrainBertForTokenClassification):
    base_model_class = GrainDistilBertModel


class GrainDistilBertForQuestionAnswering(GrainDistilBertPreTrainedModel, GrainBertForQuestionAnswering):
    base_model_class = GrainDistilBertModel

    def __init__(self, config: GrainDistilBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.qa_dropout)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, output_hidden_states=False, **kwargs):
        outputs = self.distilbert(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        return self.answer(self.dropout(outputs.last_hidden_state), start_positions, end_positions, outputs.hidden_states)


COMPACT_FAMILY = CompactFamily(
    "distilbert", ("DistilBert",), GrainDistilBertConfig, GrainDistilBertModel,
    (GrainDistilBertForSequenceClassification, GrainDistilBertForTokenClassification, GrainDistilBertForQuestionAnswering),
)
