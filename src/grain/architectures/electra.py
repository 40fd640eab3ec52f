"""ELECTRA discriminators (google/electra-*-discriminator).

The encoder layers are BERT's; the embeddings have their own width (`embedding_size`) and, when it
differs from `hidden_size`, a Linear `embeddings_project` maps them into the encoder; sequence
classification reads [CLS] through ElectraClassificationHead (dense, GELU, out_proj), no pooler.
"""

from grain.architectures.base import Architecture

ELECTRA = Architecture(
    family="electra",
    model_types=("electra",),
    compact_model_type="grain_electra",
)
