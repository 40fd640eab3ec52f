"""RoBERTa, and the checkpoints that share its modeling code: XLM-R and CamemBERT.

The encoder layers are BERT's (same module names); what differs lives outside them: position ids
count from padding_idx + 1 (RobertaEmbeddings), checkpoints have one token type, and sequence
classification reads <s> through RobertaClassificationHead (dense, tanh, out_proj) with no pooler.
"""

from grain.architectures.base import Architecture


def _compact_classes() -> dict[str, type]:
    from grain.models import compact_roberta

    return compact_roberta.COMPACT_CLASS_BY_HF_HEAD


def _compact_config() -> type:
    from grain.models.compact_roberta import GrainRobertaConfig

    return GrainRobertaConfig


ROBERTA = Architecture(
    family="roberta",
    model_types=("roberta", "xlm-roberta", "camembert"),
    compact_model_type="grain_roberta",
    compact_classes=_compact_classes,
    compact_config_class=_compact_config,
    position_offset=2,
)
