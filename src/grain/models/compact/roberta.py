"""Compact RoBERTa (XLM-R, CamemBERT): the compact layers of `.bert` behind
RobertaEmbeddings (position ids from padding_idx + 1), no pooler, and RobertaClassificationHead."""

from __future__ import annotations

from transformers import RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead, RobertaEmbeddings

from .bert import (
    CompactFamily,
    CompactStructure,
    FirstTokenClassification,
    GrainBertForQuestionAnswering,
    GrainBertForTokenClassification,
    GrainBertModel,
    GrainBertPreTrainedModel,
)


class GrainRobertaConfig(CompactStructure, RobertaConfig):
    """RobertaConfig plus the kept structure (`CompactStructure`)."""

    model_type = "grain_roberta"
    __init__ = CompactStructure.__init__  # see GrainBertConfig


class GrainRobertaPreTrainedModel(GrainBertPreTrainedModel):
    config_class = GrainRobertaConfig
    base_model_prefix = "roberta"


class GrainRobertaModel(GrainRobertaPreTrainedModel, GrainBertModel):
    embeddings_class = RobertaEmbeddings
    has_pooler = False  # RoBERTa's heads read <s> themselves


class GrainRobertaForSequenceClassification(GrainRobertaPreTrainedModel, FirstTokenClassification):
    base_model_class = GrainRobertaModel
    head_class = RobertaClassificationHead


class GrainRobertaForTokenClassification(GrainRobertaPreTrainedModel, GrainBertForTokenClassification):
    base_model_class = GrainRobertaModel


class GrainRobertaForQuestionAnswering(GrainRobertaPreTrainedModel, GrainBertForQuestionAnswering):
    base_model_class = GrainRobertaModel


# XLM-R and CamemBERT checkpoints load as their own HF classes, with RoBERTa's modules
COMPACT_FAMILY = CompactFamily(
    "roberta", ("Roberta", "XLMRoberta", "Camembert"), GrainRobertaConfig, GrainRobertaModel,
    (GrainRobertaForSequenceClassification, GrainRobertaForTokenClassification, GrainRobertaForQuestionAnswering),
)
