"""The compact model families: which compact classes stand for which HF classes, and their registration
with the HF Auto classes.

Each file of `grain.models.compact` that declares a `COMPACT_FAMILY` (`CompactFamily`) is one family;
`compact_families()` imports every module of that package once and collects them. Adding a family is
its `Architecture` (`grain.architectures`) and its compact file; nothing else lists it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from grain.architectures import ARCHITECTURES, Architecture, find_architecture
from grain.errors import GrainError
from grain.models import compact
from grain.models.compact.bert import CompactFamily

# The Auto class of each head suffix a compact family declares.
AUTO_HEADS = {
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForTokenClassification": AutoModelForTokenClassification,
    "ForQuestionAnswering": AutoModelForQuestionAnswering,
}


@functools.cache
def compact_families() -> dict[str, CompactFamily]:
    """{Architecture.family: CompactFamily} of every compact file in `grain.models.compact`.

    Raises GrainError where a file declares a family no Architecture has, or a config `model_type`
    other than its Architecture's `compact_model_type` (the two must agree for masks and slicing).
    """
    architectures = {arch.family: arch for arch in ARCHITECTURES}
    families = {}
    for info in pkgutil.iter_modules(compact.__path__):
        module = importlib.import_module(f"{compact.__name__}.{info.name}")
        family = getattr(module, "COMPACT_FAMILY", None)
        if family is None:
            continue
        arch = architectures.get(family.family)
        if arch is None or arch.compact_model_type != family.config.model_type:
            raise GrainError(
                f"{module.__name__} declares the compact family {family.family!r} (model_type "
                f"{family.config.model_type!r}), which no grain.architectures Architecture matches"
            )
        families[family.family] = family
    return families


def compact_family(arch: Architecture) -> CompactFamily:
    """The compact classes of `arch`'s family; GrainError where it has none."""
    family = compact_families().get(arch.family)
    if family is None:
        raise GrainError(f"the {arch.family} family has no compact classes (a file of grain.models.compact)")
    return family


def compact_class(model: nn.Module) -> type | None:
    """The compact class that replaces `model`'s head class (None: an unsupported family or head)."""
    arch = find_architecture(model)
    if arch is None:
        return None
    return compact_family(arch).head_classes().get(type(model).__name__)


def head_names(arch: Architecture) -> list[str]:
    """The HF head classes of `arch`'s family that compact, e.g. ["BertForQuestionAnswering", ...]."""
    return sorted(name for name in compact_family(arch).head_classes() if not name.startswith("Grain"))


def is_compact(model: nn.Module) -> bool:
    """Whether `model` is a compact model of any family (by its config's model_type) rather than an HF one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return any(family.config.model_type == model_type for family in compact_families().values())


def register_auto_classes() -> None:
    """Register every family's compact config and model classes with the HF Auto classes (`import grain`)."""
    for family in compact_families().values():
        AutoConfig.register(family.config.model_type, family.config, exist_ok=True)
        AutoModel.register(family.config, family.model, exist_ok=True)
        for suffix, cls in family.head_suffixes().items():
            AUTO_HEADS[suffix].register(family.config, cls, exist_ok=True)


def class_named(name: str) -> type | None:
    """A compact class (any family) or a transformers class by its name (a config's `architectures`)."""
    for family in compact_families().values():
        for cls in (family.model, *family.heads):
            if cls.__name__ == name:
                return cls
    return getattr(transformers, name, None)


def load_saved_model(path: str | Path) -> PreTrainedModel:
    """A saved model (HF or grain compact) with the class its config names, in eval mode; never remote
    code. Raises GrainError for a class neither transformers nor grain has, OSError for missing files."""
    config = AutoConfig.from_pretrained(str(path))
    name = (config.architectures or ["AutoModel"])[0]
    cls = class_named(name)
    if cls is None:
        raise GrainError(f"{path}: unknown architecture {name}; expected an HF encoder or a grain compact model")
    return cls.from_pretrained(str(path)).eval()
