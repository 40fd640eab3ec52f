"""The base of every task: a LightningDataModule that also says how models of the task are built, scored
and distilled.

A task type (`grain.tasks.classification`, `.question_answering`, `.token_classification`) subclasses
`Task` with what every data set of that type shares: the row layout its data modules load, how rows
become model features, the evaluator, the transformers Auto class of the model head, which logits the
distillation compares and at which positions. A data module (GLUE, SQuAD, CoNLL, the user's own files)
subclasses its task type with where the rows come from. Callers ask the task (`datamodule.
auto_model_class`, `datamodule.prediction_logits(outputs)`, ...) and never branch on what task it is.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import datasets
import lightning.pytorch as pl
import torch
from huggingface_hub import constants
from hydra.utils import get_class
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from grain.errors import GrainError
from grain.tasks.cache import cached_dataset, fingerprint
from grain.tasks.sampler import EpochSeededRandomSampler, ResumableDataLoader

# Keys a HF model's forward accepts; everything else in a batch is bookkeeping for evaluation.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = ("labels", "start_positions", "end_positions")
# a batch's teacher scores read from the training data ([rows, 1], raw logits of a one-logit head): where
# present, score distillation compares the student's scores with them instead of the teacher's forward
TEACHER_SCORES_KEY = "teacher_scores"


def model_inputs(batch: dict[str, Any], with_labels: bool = False) -> dict[str, torch.Tensor]:
    """The entries of `batch` a model's forward takes: its inputs, and with `with_labels` its labels."""
    keys = MODEL_INPUT_KEYS + (LABEL_KEYS if with_labels else ())
    return {k: batch[k] for k in keys if k in batch}


def hub_offline() -> bool:
    """Whether the hub libraries are told to stay offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) answers a TCP connection within `timeout` seconds."""
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def seeded_subset(dataset: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    """`max_samples` rows of `dataset` drawn with `seed` (all of it when None or not fewer)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(int(max_samples)))


class Task(pl.LightningDataModule):
    """Base of the tasks: a task's data (splits, tokenized features, loaders) and how its models are
    built, scored and distilled.

    A task type sets `auto_model_class` and implements `tokenize_split(split, raw) -> datasets.Dataset`
    (model features plus bookkeeping columns) and `make_evaluator(split)`; where it differs from the
    defaults, `prediction_logits`, `distillation_positions` and `validate_settings`. A data module
    implements `load_split(split) -> datasets.Dataset` (raw rows in its task type's layout) and
    `source_signature(split)`, and sets `labels`/`num_labels` where the head has a label count. Eval
    splits are `validation` plus any extra ones the data has.
    """

    # The transformers Auto class that builds the task's model head (e.g. AutoModelForSequenceClassification).
    auto_model_class: ClassVar[type]
    # The label names in the order of the head's outputs, and their count; None: the head has no labels
    # to name (its outputs are fixed by the task type) or, for num_labels, the head's default count.
    labels: list[str] | None = None
    num_labels: int | None = None
    # What distillation compares: "logits" (`prediction_logits`, with KD) or "embeddings" (`embeddings`,
    # sentence embeddings in embedding space: grain.tasks.embedding).
    distillation_target: ClassVar[str] = "logits"
    # Whether the teacher is the given model itself (a sentence-transformers model: nothing to fine-tune)
    # rather than one fine-tuned on the task's labels.
    teacher_is_backbone: ClassVar[bool] = False
    # Whether training batches hold (positive, negative) pairs of rows of one query each, rows 0 and 1, 2 and
    # 3, ... (what distillation.score_loss=margin_mse reads: a reranking task's triples).
    paired_training_rows: ClassVar[bool] = False
    # Config values of the task's head, set on the model's config where it is built or loaded (e.g. a
    # problem_type that picks transformers' loss for one logit).
    head_settings: ClassVar[dict] = {}

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

    # --- implemented by the data modules -----------------------------------------------------------
    def load_split(self, split: str) -> datasets.Dataset:
        """The raw rows of a split, in the layout of the task type (see its class)."""
        raise NotImplementedError

    def source_signature(self, split: str) -> list:
        """What identifies the raw data of a split (file name and content hash, or hub name), for the cache."""
        raise NotImplementedError

    # --- implemented by the task types ------------------------------------------------------------
    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        """The model features of a split's raw rows (plus what its evaluator needs)."""
        raise NotImplementedError

    def make_evaluator(self, split: str):
        """A fresh evaluator of one eval split: `update(batch, outputs)` per batch, `gather()` under
        DDP, `compute() -> {metric name: value}`."""
        raise NotImplementedError

    @classmethod
    def prediction_logits(cls, outputs) -> list[torch.Tensor]:
        """The logits a model's `outputs` predict the task with, which distillation compares between
        teacher and student: here the one tensor `outputs.logits` ([batch, num_labels] or
        [batch, seq, num_labels])."""
        return [outputs.logits]

    @classmethod
    def distillation_positions(cls, batch: dict[str, Any]) -> torch.Tensor | None:
        """Bool [batch, seq] marking the positions whose logits distillation compares, or None where
        every row of `prediction_logits` counts (here)."""
        return None

    def embeddings(self, outputs, batch: dict[str, Any]) -> torch.Tensor:
        """[batch, dim] sentence embeddings of a base model's `outputs` on `batch` (tasks whose
        `distillation_target` is "embeddings")."""
        raise NotImplementedError(f"{type(self).__name__} distils logits, not embeddings")

    def save_model_files(self, directory: Path) -> None:
        """Write what the task's users load a saved model with, beside its weights in `directory` (a
        sentence-transformers model's modules); nothing here."""

    @classmethod
    def validate_settings(cls, cfg: DictConfig) -> None:
        """Check the task's own settings in a composed config (sizes, counts) before any data is read;
        raises GrainError naming the setting. Nothing to check here."""

    @classmethod
    def unloaded(cls, cfg: DictConfig) -> "Task":
        """The data module of `cfg`'s task without a tokenizer, which reads nothing until asked (for checks)."""
        params = OmegaConf.to_container(cfg.task.datamodule, resolve=True)
        params.pop("_target_", None)
        return cls(**params, tokenizer=None, data_dir=cfg.paths.data_dir, cache_dir=cfg.paths.cache_dir, seed=cfg.seed)

    @staticmethod
    def trains(cfg: DictConfig) -> bool:
        """Whether the run `cfg` reads a training split (it prunes, or fine-tunes its teacher)."""
        return "prune" in cfg.stages or ("teacher" in cfg.stages and not cfg.teacher.path)

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        """Check the data the run `cfg` would use before anything trains; raises GrainError naming the
        file or source and the fix. Here: without a data directory, that the hub dataset the data module
        reads (`hub_source`) can be reached; the data modules of the user's own files check theirs."""
        source = cls.hub_source(cfg)
        if source is None or cfg.paths.get("data_dir"):
            return
        name, config = source
        try:
            if not (hub_offline() or hub_reachable()):  # else datasets retries for half a minute, logging each try
                raise ConnectionError(f"no connection to {urlparse(constants.ENDPOINT).hostname}")
            datasets.load_dataset_builder(name, config)  # offline: from the local cache, if there
        except Exception as err:  # no network, no such dataset: datasets raises many kinds
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            where = f"{name}/{config}" if config else name
            raise GrainError(
                f"task={cfg.task.name} reads {where} from the Hugging Face hub, which cannot be reached from here "
                f"({type(err).__name__}: {reason}); set GRAIN_DATA_DIR or paths.data_dir to a directory with its "
                f"files ({cls.local_files_hint(cfg)}), or run where the hub is reachable"
            ) from None

    @classmethod
    def label_names(cls, cfg: DictConfig) -> list[str] | None:
        """The task's label names in the head's output order, read from the config (or the user's data)
        before anything trains; None: the head has no labels to name (QA), or they are not known yet."""
        return None

    @classmethod
    def hub_source(cls, cfg: DictConfig) -> tuple[str, str | None] | None:
        """(hub dataset, config) the data module reads when no data directory is set; None: none."""
        return None

    @classmethod
    def local_files_hint(cls, cfg: DictConfig) -> str:
        """The files, under the data directory, the data module reads from there (for error messages)."""
        return "see the data module's files"

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


def task_class(cfg: DictConfig) -> type[Task]:
    """The Task class `task.datamodule._target_` names, imported but not built.

    Raises GrainError when the target cannot be imported or is not a `Task`.
    """
    target = OmegaConf.select(cfg, "task.datamodule._target_")
    example = "e.g. grain.tasks.classification.glue.GlueDataModule (conf/task/*.yaml)"
    if not isinstance(target, str) or not target:
        raise GrainError(f"task={cfg.task.get('name')} has no task.datamodule._target_; name its Task class, {example}")
    try:
        found = get_class(target)
    except Exception as err:  # a missing module or class: Hydra wraps the ImportError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GrainError(f"task.datamodule._target_={target} cannot be imported ({reason}); {example}") from None
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise GrainError(f"task.datamodule._target_={target} is not a grain.tasks.base.Task; {example}")
    return found
