"""The model families grain prunes and compacts, one `Architecture` each, and the registry that
finds a model's: `architecture_of(model_or_config)`."""

from __future__ import annotations

from grain.architectures.base import COMPACT_EMPTY_BIAS, COMPACT_LAYER, Architecture, ConfigFields, LayerModules
from grain.architectures.bert import BERT
from grain.architectures.deberta import DEBERTA_V2
from grain.architectures.distilbert import DISTILBERT
from grain.architectures.electra import ELECTRA
from grain.architectures.modernbert import MODERNBERT
from grain.architectures.roberta import ROBERTA
from grain.errors import GrainError

ARCHITECTURES: tuple[Architecture, ...] = (BERT, ROBERTA, ELECTRA, DISTILBERT, DEBERTA_V2, MODERNBERT)

# The family of a random model (`model.random_config`) that names no `model_type`.
DEFAULT_MODEL_TYPE = "bert"

# Families recognised by name when a hub model's config is not on this machine: (part of the name, HF
# model_type), the more specific first (DeBERTa-v3 checkpoints are model_type deberta-v2). Families grain
# does not support are listed too, so that they are refused before anything trains.
NAMED_FAMILIES = (
    ("xlm-roberta", "xlm-roberta"), ("roberta", "roberta"), ("deberta-v3", "deberta-v2"), ("deberta-v2", "deberta-v2"),
    ("deberta", "deberta"), ("distilbert", "distilbert"), ("electra", "electra"), ("albert", "albert"),
    ("camembert", "camembert"), ("mpnet", "mpnet"), ("modernbert", "modernbert"), ("ettin-encoder", "modernbert"),
    ("mmbert", "modernbert"),
)

__all__ = [
    "ARCHITECTURES", "Architecture", "COMPACT_EMPTY_BIAS", "COMPACT_LAYER", "ConfigFields", "DEFAULT_MODEL_TYPE",
    "LayerModules", "NAMED_FAMILIES", "architecture_of", "family_from_name", "find_architecture", "supported_families",
]


def family_from_name(name: str) -> str | None:
    """The HF model_type a model name suggests (`"FacebookAI/roberta-base"` -> "roberta"), case-insensitive;
    None when it names none of NAMED_FAMILIES (a BERT-like name, or an unknown one)."""
    name = name.lower()
    return next((model_type for part, model_type in NAMED_FAMILIES if part in name), None)


def supported_families() -> list[str]:
    """The model_type values grain supports, e.g. ["bert", "camembert", "electra", "roberta", "xlm-roberta"]."""
    return sorted(model_type for arch in ARCHITECTURES for model_type in arch.model_types)


def _model_type(model_or_config) -> str | None:
    if isinstance(model_or_config, str):
        return model_or_config
    if isinstance(model_or_config, dict):
        return model_or_config.get("model_type")
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None)


def find_architecture(model_or_config) -> Architecture | None:
    """The Architecture of a model, an HF config (object or dict) or a model_type; None if unsupported."""
    model_type = _model_type(model_or_config)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types or model_type == arch.compact_model_type:
            return arch
    return None


def architecture_of(model_or_config) -> Architecture:
    """As `find_architecture`, refusing a family grain does not support, naming those it does."""
    arch = find_architecture(model_or_config)
    if arch is None:
        raise GrainError(
            f"grain does not support {_model_type(model_or_config) or 'this'} models; it prunes encoders of the "
            f"families {', '.join(supported_families())}"
        )
    return arch
