"""What grain must know about a model family, in one object (as TextPruner's structure classes).

An `Architecture` names, for layer i of the encoder, the Linear modules of the query, key, value,
attention output and the FFN's two projections, the LayerNorms after each sub-layer, where the
encoder's layer list lives, which config fields hold the encoder's sizes, and which `model_type` its
compact model has. Plain data: it imports nothing of grain but its errors, and the
compact classes of a family (`grain.models.compact.<family>`) are found by `grain.models.registry`.
Masks (`grain.models.masks`), slicing (`grain.models.slicing`) and the measurements read it; no other
module names a family's modules.

Module paths are dotted, relative to one encoder layer (`layer_path`: relative to the base model).
The compact model of every family keeps the layer list at the same path and names its layer
modules as `grain.models.compact.bert.GrainLayer` does (`COMPACT_LAYER`), or as the family's own
compact layer does (`compact_modules`: ModernBERT's pre-norm layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from grain.errors import GrainError


@dataclass(frozen=True)
class LayerModules:
    """Dotted paths, relative to one encoder layer, of the modules pruning reads and slices."""

    query: str = "attention.self.query"
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    attention_output: str = "attention.output.dense"    # W_O: its input columns are VO units
    attention_norm: str = "attention.output.LayerNorm"
    ffn_in: str = "intermediate.dense"                  # W_1: its output rows are FFN units
    ffn_out: str = "output.dense"                       # W_2: its input columns are FFN units
    ffn_norm: str = "output.LayerNorm"


# How the compact layers (`grain.models.compact.bert.GrainLayer`) name these modules, whatever the family;
# a sub-layer with no kept units keeps only its output bias, at `<sub-layer>.bias`.
COMPACT_LAYER = LayerModules()
COMPACT_EMPTY_BIAS = {"attention_output": "attention.output.bias", "ffn_out": "output.bias"}


def setting(config, key: str, default=None):
    """`config[key]` of an HF config dict, or the attribute of a config object; `default` where absent."""
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


@dataclass(frozen=True)
class ConfigFields:
    """Names of the HF config fields that hold the encoder's sizes."""

    num_layers: str = "num_hidden_layers"
    hidden_size: str = "hidden_size"
    num_heads: str = "num_attention_heads"
    intermediate_size: str = "intermediate_size"
    activation: str = "hidden_act"


@dataclass(frozen=True)
class Architecture:
    """One model family.

    family: the name users see ("roberta"); model_types: the HF `config.model_type` values it covers
    (XLM-R and CamemBERT are RoBERTa); compact_model_type: `model_type` of its compact config.
    """

    family: str
    model_types: tuple[str, ...]
    compact_model_type: str
    layer_path: str = "encoder.layer"
    modules: LayerModules = field(default_factory=LayerModules)
    config_fields: ConfigFields = field(default_factory=ConfigFields)
    # positions the embeddings use besides the tokens (RoBERTa's start after padding_idx + 1)
    position_offset: int = 0
    # config -> why grain cannot prune this variant of the family exactly (None: it can)
    unsupported: Callable[[object], str | None] | None = None
    # How the family's layers differ from BERT's (ModernBERT has all four):
    # `fused_qkv`: query, key and value are one Linear whose output is [Q | K | V] (hidden each);
    # `rotary`: RoPE rotates dimension i of a head with i + head_dim/2 (rotate_half), so a QK unit is
    # that pair (`EncoderShape.qk_unit_width` 2); `gated_ffn`: W_1 maps to [input | gate] (GeGLU), so an
    # FFN unit is W_1 rows j and intermediate + j with W_2 column j; `linear_bias`: config -> whether the
    # encoder's Linears have biases (None: they do).
    fused_qkv: bool = False
    rotary: bool = False
    gated_ffn: bool = False
    linear_bias: Callable[[object], bool] | None = None
    # How the family's compact layers name the modules (BERT's `COMPACT_LAYER` unless the family's
    # compact layer is its own, as ModernBERT's pre-norm layer), and the output bias an emptied
    # sub-layer keeps.
    compact_modules: LayerModules = COMPACT_LAYER
    compact_empty_bias: dict = field(default_factory=lambda: dict(COMPACT_EMPTY_BIAS))

    # --- where things are -------------------------------------------------------------------

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The encoder's layer list of `model` (an HF model of this family or its compact model)."""
        return model.base_model.get_submodule(self.layer_path)

    def module(self, model: nn.Module, index: int, role: str) -> nn.Module:
        """The module of layer `index` playing `role` (a `LayerModules` field: "query", "ffn_out", ...),
        in an HF model of this family or in its compact model (named as `COMPACT_LAYER`)."""
        names = self.compact_modules if model.config.model_type == self.compact_model_type else self.modules
        return self.layers(model)[index].get_submodule(getattr(names, role))

    def config_value(self, config, name: str):
        """A `ConfigFields` entry ("hidden_size", ...) read from an HF config object or dict."""
        key = getattr(self.config_fields, name)
        return config[key] if isinstance(config, dict) else getattr(config, key)

    def has_bias(self, config) -> bool:
        """Whether the encoder's Linears of a model with HF config `config` (object or dict) have biases."""
        return True if self.linear_bias is None else bool(self.linear_bias(config))

    def check(self, config) -> None:
        """Refuse a variant of the family that masks or compaction would not handle exactly."""
        reason = self.unsupported(config) if self.unsupported is not None else None
        if reason:
            raise GrainError(f"grain cannot prune this {self.family} model: {reason}")

    def __repr__(self) -> str:
        return f"Architecture({self.family})"
