"""BERT (bert-base, MiniLM and other BERT-architecture checkpoints): the layout the others follow."""

from grain.architectures.base import Architecture


def _compact_classes() -> dict[str, type]:
    from grain.models import compact

    return compact.COMPACT_CLASS_BY_HF_HEAD


def _compact_config() -> type:
    from grain.models.compact import GrainBertConfig

    return GrainBertConfig


BERT = Architecture(
    family="bert",
    model_types=("bert",),
    compact_model_type="grain_bert",
    compact_classes=_compact_classes,
    compact_config_class=_compact_config,
)
