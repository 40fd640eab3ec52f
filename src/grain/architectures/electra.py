"""ELECTRA discriminators (google/electra-*-discriminator).

The encoder layers are BERT's; the embeddings have their own width (`embedding_size`) and, when it
differs from `hidden_size`, a Linear `embeddings_project` maps them into the encoder; sequence
classification reads [CLS] through ElectraClassificationHead (dense, GELU, out_proj), no pooler.
"""

from grain.architectures.base import Architecture


def _compact_classes() -> dict[str, type]:
    from grain.models import compact_electra

    return compact_electra.COMPACT_CLASS_BY_HF_HEAD


def _compact_config() -> type:
    from grain.models.compact_electra import GrainElectraConfig

    return GrainElectraConfig


ELECTRA = Architecture(
    family="electra",
    model_types=("electra",),
    compact_model_type="grain_electra",
    compact_classes=_compact_classes,
    compact_config_class=_compact_config,
)
