"""RoBERTa, and the checkpoints that share its modeling code: XLM-R and CamemBERT.

The encoder layers are BERT's (same module names); what differs lives outside them: position ids
count from padding_idx + 1 (RobertaEmbeddings), checkpoints have one token type, and sequence
classification reads <s> through RobertaClassificationHead (dense, tanh, out_proj) with no pooler.
"""

from grain.architectures.base import Architecture

ROBERTA = Architecture(
    family="roberta",
    model_types=("roberta", "xlm-roberta", "camembert"),
    compact_model_type="grain_roberta",
    position_offset=2,
)
