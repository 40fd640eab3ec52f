"""Shared parts of the task DataModules: source resolution, tokenized-dataset cache, loaders."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import datasets
import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from grain.data.sampler import EpochSeededRandomSampler, ResumableDataLoader  # noqa: F401 (re-exported)
from grain.errors import GrainError

# Keys a HF model's forward accepts; everything else in a batch is bookkeeping for evaluation.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = ("labels", "start_positions", "end_positions")


def model_inputs(batch: dict[str, Any], with_labels: bool = False) -> dict[str, torch.Tensor]:
    keys = MODEL_INPUT_KEYS + (LABEL_KEYS if with_labels else ())
    return {k: batch[k] for k in keys if k in batch}


def fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_signature(path: Path) -> list:
    """Name and content hash of a data file: a copy of the same data (new path, new mtime) keeps its
    cached teachers and tokenized splits; any edit to the content invalidates them."""
    path = Path(path)
    stat = path.stat()
    return [path.name, _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)]


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash of a file, computed once per process for a given size and mtime (the cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_dataset(cache_dir: Path | None, key: str, build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """Load a tokenized dataset from `cache_dir/tokenized/key`, building and saving it when absent.

    The dataset is written to a temporary dir and renamed, so an interrupted run leaves no half cache.
    """
    if cache_dir is None:
        return build()
    target = Path(cache_dir) / "tokenized" / key
    if target.exists():
        return datasets.load_from_disk(str(target))
    dataset = build()
    tmp = target.with_name(f"{key}.tmp{os.getpid()}")
    dataset.save_to_disk(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def seeded_subset(dataset: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(int(max_samples)))


class TaskDataModule(pl.LightningDataModule):
    """Base of the task DataModules.

    Subclasses implement `load_split(split) -> datasets.Dataset` (raw rows) and
    `tokenize_split(split, raw) -> datasets.Dataset` (model features plus bookkeeping columns), and
    `make_evaluator(split)`. Eval splits are `validation` plus any extra ones the task has.
    """

    task_type = "classification"

    def __init__(
        self,
        tokenizer,
        data_dir: str | None,
        cache_dir: str | None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_length: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 42,
        num_workers: int = 0,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.max_length = max_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.seed = seed
        self.num_workers = num_workers
        self.collator = DataCollatorWithPadding(tokenizer)
        self._datasets: dict[str, datasets.Dataset] = {}
        self.raw: dict[str, datasets.Dataset] = {}

    # --- implemented by subclasses -------------------------------------------------------------
    def load_split(self, split: str) -> datasets.Dataset:
        raise NotImplementedError

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        raise NotImplementedError

    def make_evaluator(self, split: str):
        raise NotImplementedError

    def source_signature(self, split: str) -> list:
        """What identifies the raw data of a split (file path/size/mtime or hub name), for the cache."""
        raise NotImplementedError

    @property
    def eval_splits(self) -> list[str]:
        return ["validation"]

    # --- shared ---------------------------------------------------------------------------------
    def _max_samples(self, split: str) -> int | None:
        return self.max_train_samples if split == "train" else self.max_eval_samples

    def raw_split(self, split: str) -> datasets.Dataset:
        if split not in self.raw:
            self.raw[split] = seeded_subset(self.load_split(split), self._max_samples(split), self.seed)
        return self.raw[split]

    def dataset(self, split: str) -> datasets.Dataset:
        if split not in self._datasets:
            key = fingerprint(
                type(self).__name__, self.cache_signature(), split, self.source_signature(split),
                getattr(self.tokenizer, "name_or_path", ""), len(self.tokenizer), self.max_length,
                self._max_samples(split), self.seed,
            )
            self._datasets[split] = cached_dataset(
                self.cache_dir, key, lambda: self.tokenize_split(split, self.raw_split(split))
            )
        return self._datasets[split]

    def cache_signature(self) -> Any:
        """Task settings that change the tokenized features (subclasses add theirs)."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.dataset("train")
        for split in self.eval_splits:
            self.dataset(split)

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.collator(features)

    def _loader(self, dataset, batch_size: int, sampler=None, loader_class=DataLoader, **extra) -> DataLoader:
        return loader_class(
            dataset.with_format("python"),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        # resumable: its position in the epoch is saved in checkpoints and restored on resume (issue 16)
        sampler = EpochSeededRandomSampler(len(dataset), self.seed)
        pending, self._train_loader_state = getattr(self, "_train_loader_state", None), None
        loader = self._loader(dataset, self.batch_size, sampler, loader_class=ResumableDataLoader, resume=pending)
        self._train_loader = loader
        return loader

    # The training loader's position, also through the DataModule's own checkpoint entry: Lightning loads
    # the fit loop's copy (`combined_loader`) only into a loader it creates after restoring the loops, but
    # a module whose configure_optimizers reads trainer.estimated_stepping_batches (the student does)
    # makes Lightning create the loader before that, so the fit loop's copy is never loaded. The
    # DataModule is restored before configure_optimizers: its copy reaches the loader that is used.
    def state_dict(self) -> dict[str, Any]:
        loader = getattr(self, "_train_loader", None)
        trainer = getattr(self, "trainer", None)
        in_use = trainer.train_dataloader if trainer is not None else None  # Lightning's copy under DDP
        if isinstance(in_use, ResumableDataLoader):
            loader = in_use
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("train_loader") is not None:
            self._train_loader_state = state_dict["train_loader"]

    def eval_dataloader(self, split: str, sampler=None) -> DataLoader:
        """The whole split in order (one process), or the part `sampler` picks."""
        return self._loader(self.dataset(split), self.eval_batch_size, sampler)

    def val_dataloader(self):
        """One loader per eval split. Under DDP each process reads a disjoint part and no row twice
        (Lightning's default DistributedSampler pads with repeats, which would count rows twice);
        `SplitEvaluation` gathers the parts before computing the metrics over the whole split."""
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        loaders = []
        for split in self.eval_splits:
            sampler = None
            if world > 1:
                sampler = UnrepeatedDistributedSampler(
                    self.dataset(split), num_replicas=world, rank=trainer.global_rank, shuffle=False
                )
            loaders.append(self.eval_dataloader(split, sampler))
        return loaders

    def local_path(self, relative: str) -> Path:
        path = self.data_dir / relative
        if not path.exists():
            raise GrainError(
                f"missing data file {path} (GRAIN_DATA_DIR / paths.data_dir = {self.data_dir}); put the "
                f"file there, point GRAIN_DATA_DIR at a directory that has it, or unset GRAIN_DATA_DIR "
                f"to load the task from the hub"
            )
        return path
