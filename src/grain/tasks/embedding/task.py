"""The sentence-embedding task type: the teacher is the given sentence-transformers model itself (nothing
is fine-tuned), the student a copy of its transformer, distilled on unlabelled text in embedding space.

Pooling (mean / cls / max / last token, ...) and any module after it (a Dense projection) are the model's
own sentence-transformers modules, loaded by the sentence-transformers library from the model's folder
(`modules.json`, `1_Pooling/config.json`): grain pools as the library does. A model without those files
(a plain transformers folder, `model=tiny`) pools by the mean over tokens, as sentence-transformers
itself does for such a folder, and normalizes. A Normalize module is left out of distillation and scoring
(cosine similarity and the cosine loss do not depend on the norm) and kept in the saved folder.

Needs the `embeddings` extra (sentence-transformers, pytrec-eval-terrier, scipy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from transformers import AutoConfig, AutoModel

from grain.errors import GrainError
from grain.models.backbone import resolve_pretrained
from grain.tasks.base import Task
from grain.tasks.gather import GatheredRows

log = logging.getLogger(__name__)


def require_sentence_transformers():
    """The sentence_transformers module; GrainError naming the extra where it is not installed."""
    try:
        import sentence_transformers  # noqa: PLC0415  (the embeddings extra, optional)
    except ImportError:
        raise GrainError(
            "the sentence-embedding tasks need sentence-transformers: pip install 'grain[embeddings]' "
            "(sentence-transformers and pytrec-eval-terrier)"
        ) from None
    return sentence_transformers


def sentence_modules(model: str | None, hidden_size: int) -> tuple[list[nn.Module], int | None]:
    """The sentence-transformers modules after the transformer of `model` (a model name or folder, as
    `model.pretrained` gives it; "random" or None: mean pooling over `hidden_size` and Normalize), loaded
    by sentence-transformers on the CPU, and the length it truncates texts to (None: not set)."""
    st = require_sentence_transformers()
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling  # noqa: PLC0415  (the extra)

    if model in (None, "random"):
        return [Pooling(hidden_size, "mean"), Normalize()], None
    encoder = st.SentenceTransformer(resolve_pretrained(str(model)), device="cpu")
    return list(encoder)[1:], encoder.max_seq_length


class EmbeddedRows(GatheredRows):
    """Base of the embedding tasks' evaluators: collects each eval row's unit-norm sentence embedding
    (`embed(outputs, batch)`: the task's `embeddings`) under the row's `kind` and position (`row`), as
    the data modules lay out their eval splits; `compute` is the task's."""

    gathered = ("rows",)

    def __init__(self, embed):
        self.embed = embed
        self.rows: list[tuple[int, int, torch.Tensor]] = []  # (kind, row, unit-norm embedding on the CPU)

    def update(self, batch: dict, outputs) -> None:
        vectors = F.normalize(self.embed(outputs, batch).float(), dim=-1).cpu()
        self.rows.extend(zip(batch["kind"].tolist(), batch["row"].tolist(), vectors))

    def by_kind(self, kind: int, count: int) -> torch.Tensor:
        """[count, dim]: the embeddings of rows 0..count-1 of `kind`; ValueError where one is missing."""
        found = {row: vector for k, row, vector in self.rows if k == kind}
        if len(found) != count or any(row not in found for row in range(count)):
            raise ValueError(f"{type(self).__name__}: embedded {len(found)} of {count} rows of kind {kind}")
        return torch.stack([found[row] for row in range(count)])


class EmbeddingTask(Task):
    """Sentence embeddings. Training rows {text} (unlabelled); eval rows {text, kind, row} (a data module's
    own: queries and documents for retrieval). The model is the base model (AutoModel); distillation
    compares sentence embeddings (`embeddings`, `grain.distill.losses.embedding_loss`).

    pooling_model: the sentence-transformers model whose pooling (and modules after it) the task uses,
    `model.pretrained` in the task configs.
    """

    auto_model_class = AutoModel
    distillation_target = "embeddings"
    teacher_is_backbone = True

    def __init__(self, pooling_model: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pooling_model = pooling_model
        self._modules: list[nn.Module] | None = None

    def sentence_modules(self, hidden_size: int) -> list[nn.Module]:
        """The model's modules after its transformer (`sentence_modules`), loaded once."""
        if self._modules is None:
            self._modules, length = sentence_modules(self.pooling_model, hidden_size)
            if length is not None and length != self.max_length:
                log.warning("task.datamodule.max_length=%d, but %s truncates at %d tokens (its max_seq_length): "
                            "grain's scores differ from sentence-transformers' where texts are longer; set "
                            "task.datamodule.max_length=%d to score as it does", self.max_length, self.pooling_model,
                            length, length)
            for module in self._modules:
                module.requires_grad_(False)  # the teacher's (a Dense projection): shared, frozen
        return self._modules

    def embeddings(self, outputs, batch: dict[str, Any]) -> torch.Tensor:
        """[batch, dim] sentence embeddings of a base model's `outputs` (its last_hidden_state [batch, seq,
        hidden]) on `batch` (its attention_mask [batch, seq]), as the model's sentence-transformers modules
        compute them, before any Normalize."""
        hidden = outputs.last_hidden_state
        features = {"token_embeddings": hidden, "attention_mask": batch["attention_mask"]}
        for module in self.sentence_modules(hidden.shape[-1]):
            if type(module).__name__ == "Normalize":
                continue
            features = module.to(hidden.device)(features)
        return features["sentence_embedding"]

    def save_model_files(self, directory: Path) -> None:
        """Make `directory` (a saved base model with its tokenizer) a sentence-transformers folder: its
        modules after the transformer, saved by sentence-transformers (`SentenceTransformer(directory)`
        then loads the model, with `trust_remote_code=True` where grain is not installed)."""
        st = require_sentence_transformers()
        from sentence_transformers.sentence_transformer.modules import Transformer  # noqa: PLC0415  (the extra)

        hidden = AutoConfig.from_pretrained(directory).hidden_size  # the pooling width where the model has no modules
        encoder = st.SentenceTransformer(modules=[Transformer(str(directory), max_seq_length=self.max_length),
                                                  *self.sentence_modules(hidden)], device="cpu")
        # the transformer's files are saved again as they were loaded (config with its auto_map, weights,
        # tokenizer; grain's modeling files stay), its modules beside them, and modules.json
        encoder.save(str(directory), create_model_card=False)

    @classmethod
    def validate_settings(cls, cfg: DictConfig) -> None:
        """The teacher is model.pretrained itself, and there are no labels: teacher.path and hard labels
        are refused, naming the fix."""
        if cfg.teacher.get("path"):
            raise GrainError(
                f"teacher.path={cfg.teacher.path}: task={cfg.task.name} distils the sentence-transformers model "
                f"model.pretrained names (nothing is fine-tuned); give model.pretrained={cfg.teacher.path} instead"
            )
        if float(cfg.distillation.hard_label_weight) > 0 or float(cfg.distillation.kd_weight) <= 0:
            raise GrainError(
                f"task={cfg.task.name} has no labels: it distils embeddings (distillation.kd_weight > 0, "
                f"hard_label_weight=0; got {cfg.distillation.kd_weight} and {cfg.distillation.hard_label_weight}); "
                f"use distillation=grain or kd"
            )

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        """Token ids of each row's text (truncated to max_length); eval rows keep `kind` and `row`."""
        keep = [c for c in ("kind", "row") if c in raw.column_names]

        def tokenize(rows):
            return self.tokenizer(rows["text"], truncation=True, max_length=self.max_length)

        return raw.map(tokenize, batched=True, remove_columns=[c for c in raw.column_names if c not in keep])
