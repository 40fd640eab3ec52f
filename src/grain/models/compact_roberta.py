"""Compact RoBERTa (XLM-R, CamemBERT): the compact layers of `grain.models.compact` behind
RobertaEmbeddings (position ids from padding_idx + 1), no pooler, and RobertaClassificationHead."""

from __future__ import annotations

from transformers import RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead, RobertaEmbeddings

from grain.models.compact import (
    CompactStructure,
    FirstTokenClassification,
    GrainBertForQuestionAnswering,
    GrainBertForTokenClassification,
    GrainBertModel,
    GrainBertPreTrainedModel,
    register_family,
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


_HEADS = {
    "ForSequenceClassification": GrainRobertaForSequenceClassification,
    "ForTokenClassification": GrainRobertaForTokenClassification,
    "ForQuestionAnswering": GrainRobertaForQuestionAnswering,
}
# XLM-R and CamemBERT checkpoints load as their own classes, with RoBERTa's modules
COMPACT_CLASS_BY_HF_HEAD = {
    f"{prefix}{head}": cls for prefix in ("Roberta", "XLMRoberta", "Camembert", "GrainRoberta") for head, cls in _HEADS.items()
}


def register_auto_classes() -> None:
    register_family(
        GrainRobertaConfig, GrainRobertaModel, GrainRobertaForSequenceClassification,
        GrainRobertaForTokenClassification, GrainRobertaForQuestionAnswering,
    )
