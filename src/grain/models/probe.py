"""What a model setting names, found out without loading the model: a local model directory (checked to
hold a config and readable weights), a hub name (its config.json when the local HF cache has it), or a
random model; and the model family its config says."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from grain.architectures import DEFAULT_MODEL_TYPE, family_from_name
from grain.errors import GrainError
from grain.models.backbone import resolve_pretrained

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
# What a directory needs to be a tokenizer (one of them: fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "spm.model")


def check_tokenizer_dir(setting: str, directory: Path) -> None:
    """A local directory used as the tokenizer must hold tokenizer files: without them transformers builds
    a tokenizer of its special tokens only, and every word becomes [UNK]."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise GrainError(
            f"{setting}={directory} holds no tokenizer files (one of {', '.join(TOKENIZER_FILES)}): its words would "
            f"all be [UNK]; save the tokenizer there (tokenizer.save_pretrained) or give model.tokenizer=<a tokenizer "
            f"directory or hub name>"
        )


def local_model_dir(setting: str, value: str, fix: str) -> Path | None:
    """The local model directory a setting names (None for a hub name). A path that is not a saved model
    (missing, no config.json, no or damaged weights) raises GrainError naming the setting and `fix`,
    instead of a traceback from transformers."""
    if value.startswith("package:"):
        return Path(resolve_pretrained(value))
    path = Path(value).expanduser()
    looks_local = value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1
    if not path.exists():
        if looks_local:
            raise GrainError(f"{setting}={value} does not exist; {fix}")
        return None  # a hub name, checked when it loads (before anything trains)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise GrainError(f"{setting}={value} is not a saved model directory (no config.json in it); {fix}")
    weights = [f for pattern in WEIGHT_FILES for f in sorted(path.glob(pattern))]
    if setting != "model.tokenizer" and not weights:
        raise GrainError(f"{setting}={value} holds no weights (model.safetensors or pytorch_model.bin); {fix}")
    for weight_file in weights:
        if weight_file.suffix == ".safetensors":
            try:
                with safe_open(str(weight_file), "pt"):
                    pass
            except Exception as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise GrainError(
                    f"{setting}={value}: {weight_file.name} is damaged or not a safetensors file ({reason}); {fix}"
                ) from None
        else:
            check_pickled_weights(setting, value, weight_file)
    return path


def check_pickled_weights(setting: str, value: str, weight_file: Path) -> None:
    """A PyTorch pickle of weights (pytorch_model.bin) must load with `weights_only=True`, as transformers
    loads it: a file that holds other objects (code to run, a malicious pickle) is refused in one line.
    torch's own message advises `weights_only=False`, which would run that code: it is not repeated."""
    try:
        try:
            torch.load(weight_file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # a legacy (not zip) file cannot be memory-mapped: read it whole
            if "mmap" not in str(err):
                raise
            torch.load(weight_file, map_location="cpu", weights_only=True)
    except Exception as err:
        kind = "holds objects other than tensors" if isinstance(err, pickle.UnpicklingError) else "cannot be read"
        raise GrainError(
            f"{setting}={value}: {weight_file.name} {kind} ({type(err).__name__}), and grain loads weights only; "
            f"give a model saved as safetensors (save_pretrained's default) or from a source you trust"
        ) from None


def read_model_config(setting: str, directory: Path) -> dict:
    """config.json of a model directory; GrainError naming the setting where it cannot be read."""
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise GrainError(f"{setting}={directory}: config.json cannot be read ({type(err).__name__}: {err})") from None


def hub_model_config(name: str) -> dict | None:
    """A hub model's config.json when it is in the local HF cache (no network at validation)."""
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id: transformers reports it when the model loads
        return None
    if isinstance(cached, str):
        try:
            return json.loads(Path(cached).read_text())
        except (OSError, ValueError):
            return None
    return None


def model_config(cfg: DictConfig) -> dict | None:
    """config.json of the backbone (`model.pretrained`), or None where it is only on the hub."""
    pretrained = str(cfg.model.pretrained)
    if pretrained == "random":
        return {"model_type": DEFAULT_MODEL_TYPE, **OmegaConf.to_container(cfg.model.random_config, resolve=True)}
    fix = "give a local model directory (with config.json), a hub name such as bert-base-uncased, or model=minilm (offline)"
    directory = local_model_dir("model.pretrained", pretrained, fix)
    if directory is None:
        return hub_model_config(pretrained)
    return read_model_config("model.pretrained", directory)


def model_family(cfg: DictConfig, config: dict | None) -> str | None:
    """The HF model_type of the backbone: its config's, else what its name suggests (None: unknown)."""
    if config is not None and config.get("model_type"):
        return str(config["model_type"])
    return family_from_name(f"{cfg.model.name} {cfg.model.pretrained}")
