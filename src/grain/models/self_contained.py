"""Saving a compact model as a self-contained Hugging Face folder: weights, config and its own modeling code.

transformers has no encoder class with per-layer or per-head widths, so a compact model needs its own
classes wherever it loads. `save_compact` follows HF's custom-model convention (the way hub models with
their own architectures ship): beside the weights it copies the family's compact file and the files it
imports relatively (`grain.models.compact`: they import only torch and transformers), the very files grain
runs, and writes `auto_map` into config.json for the config, the base model and every head class. So

    AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)

loads the model where grain is not installed; where it is, `import grain` registers the same classes and
`from_pretrained(dir)` loads them without `trust_remote_code` (transformers prefers registered classes to
remote code unless trust_remote_code=True is given). Without either, transformers refuses to run the
folder's code (at a terminal it first asks [y/N]) and its error says to pass `trust_remote_code=True`.
The files need transformers 5 (grain's own requirement), as grain does.

Source of the convention: transformers' `dynamic_module_utils` (`custom_object_save`,
`get_relative_import_files`) and "Building custom models" in its documentation.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_relative_import_files

from grain.errors import GrainError
from grain.models.compact.bert import CompactFamily
from grain.models.registry import AUTO_HEADS, compact_families


def family_of(model: PreTrainedModel) -> CompactFamily:
    """The compact family whose config class `model`'s config is (by `model_type`); GrainError otherwise."""
    model_type = getattr(model.config, "model_type", None)
    for family in compact_families().values():
        if family.config.model_type == model_type:
            return family
    raise GrainError(f"{type(model).__name__} (model_type {model_type!r}) is not a grain compact model")


def modeling_files(family: CompactFamily) -> list[Path]:
    """The family's compact file and every file it imports relatively, recursively (e.g. roberta.py,
    bert.py, kernels.py)."""
    source = Path(inspect.getfile(family.config))
    return [source, *(Path(path) for path in get_relative_import_files(str(source)))]


def auto_map(family: CompactFamily) -> dict[str, str]:
    """config.json's `auto_map`: Auto class name -> "<file stem>.<class>", for AutoConfig, AutoModel and
    the Auto class of every head the family has."""
    classes = {"AutoConfig": family.config, "AutoModel": family.model}
    classes.update({AUTO_HEADS[suffix].__name__: cls for suffix, cls in family.head_suffixes().items()})
    return {auto: f"{Path(inspect.getfile(cls)).stem}.{cls.__name__}" for auto, cls in classes.items()}


def auto_class_name(model: PreTrainedModel) -> str:
    """The Auto class that loads `model`'s head ("AutoModelForSequenceClassification"; "AutoModel" for a
    model without a head)."""
    name = type(model).__name__
    suffix = name[name.index("For"):] if "For" in name else None
    return AUTO_HEADS[suffix].__name__ if suffix in AUTO_HEADS else "AutoModel"


def save_compact(model: PreTrainedModel, directory: str | Path) -> Path:
    """`model.save_pretrained(directory)` with `auto_map` in its config.json and the family's modeling
    files beside it (see the module docstring). Returns the directory. Raises GrainError where `model`
    is not a compact model (an HF model needs no code of its own)."""
    family = family_of(model)
    directory = Path(directory)
    before = getattr(model.config, "auto_map", None)
    model.config.auto_map = auto_map(family)
    try:
        model.save_pretrained(directory)
    finally:  # the model in memory stays as it was: a later plain save_pretrained writes no dangling auto_map
        model.config.auto_map = before
        if before is None:
            del model.config.auto_map
    for file in modeling_files(family):
        shutil.copyfile(file, directory / file.name)
    return directory
