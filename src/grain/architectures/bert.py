"""BERT (bert-base, MiniLM and other BERT-architecture checkpoints): the layout the others follow."""

from grain.architectures.base import Architecture

BERT = Architecture(
    family="bert",
    model_types=("bert",),
    compact_model_type="grain_bert",
)
