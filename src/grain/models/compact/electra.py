"""Compact ELECTRA (discriminator): the compact layers of `.bert` behind
ElectraEmbeddings (width `embedding_size`) and, when that differs from `hidden_size`, the
`embeddings_project` Linear; no pooler; ElectraClassificationHead (dense, GELU, out_proj) on [CLS]."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ElectraConfig
from transformers.models.electra.modeling_electra import ElectraClassificationHead, ElectraEmbeddings

from .bert import (
    CompactFamily,
    CompactStructure,
    FirstTokenClassification,
    GrainBertForQuestionAnswering,
    GrainBertForTokenClassification,
    GrainBertModel,
    GrainBertPreTrainedModel,
)


class GrainElectraConfig(CompactStructure, ElectraConfig):
    """ElectraConfig plus the kept structure (`CompactStructure`)."""

    model_type = "grain_electra"
    __init__ = CompactStructure.__init__  # see GrainBertConfig


class GrainElectraPreTrainedModel(GrainBertPreTrainedModel):
    config_class = GrainElectraConfig
    base_model_prefix = "electra"


class GrainElectraModel(GrainElectraPreTrainedModel, GrainBertModel):
    embeddings_class = ElectraEmbeddings
    has_pooler = False

    def build_embeddings(self, config) -> None:
        super().build_embeddings(config)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)

    def embed(self, input_ids, token_type_ids, position_ids) -> torch.Tensor:
        hidden = super().embed(input_ids, token_type_ids, position_ids)
        return self.embeddings_project(hidden) if hasattr(self, "embeddings_project") else hidden


class GrainElectraForSequenceClassification(GrainElectraPreTrainedModel, FirstTokenClassification):
    base_model_class = GrainElectraModel
    head_class = ElectraClassificationHead


class GrainElectraForTokenClassification(GrainElectraPreTrainedModel, GrainBertForTokenClassification):
    base_model_class = GrainElectraModel


class GrainElectraForQuestionAnswering(GrainElectraPreTrainedModel, GrainBertForQuestionAnswering):
    base_model_class = GrainElectraModel


COMPACT_FAMILY = CompactFamily(
    "electra", ("Electra",), GrainElectraConfig, GrainElectraModel,
    (GrainElectraForSequenceClassification, GrainElectraForTokenClassification, GrainElectraForQuestionAnswering),
)
