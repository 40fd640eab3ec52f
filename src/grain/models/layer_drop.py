"""Layer dropping, the baseline that pruning inside layers is compared with: a student that keeps some
of its teacher's encoder layers (the first k, or every other one) and drops the rest, then is distilled
with the same budget (Sajjad et al. 2023, "On the effect of dropping layers of pre-trained transformer
models"; the smaller sentence-transformers and cross-encoder checkpoints are made so)."""

from __future__ import annotations

from torch import nn

from grain.architectures import architecture_of
from grain.errors import GrainError


def check_kept_layers(keep: list, num_layers: int) -> None:
    """Refuse (GrainError naming the range) a student.keep_layers that is not a list of distinct layer
    indices of a `num_layers`-layer model in increasing order."""
    if not (keep and all(isinstance(i, int) for i in keep) and list(keep) == sorted(set(keep)) and keep[0] >= 0
            and keep[-1] < num_layers):
        raise GrainError(
            f"student.keep_layers={list(keep)}: expected distinct layer indices in increasing order, from 0 to "
            f"{num_layers - 1} (the model has {num_layers} layers), e.g. student.keep_layers=[0,2,4]"
        )


def keep_layers(model: nn.Module, keep: list[int]) -> None:
    """Drop every encoder layer of `model` (an HF model of a family grain prunes) whose index is not in
    `keep`, in place, and set its config's layer count. `keep`: distinct layer indices, increasing.
    Raises GrainError naming the indices where they are not."""
    arch = architecture_of(model)
    layers = arch.layers(model)
    check_kept_layers(keep, len(layers))
    parent_path, _, name = arch.layer_path.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    setattr(parent, name, nn.ModuleList(layers[int(i)] for i in keep))
    setattr(model.config, arch.config_fields.num_layers, len(keep))


def teacher_hidden_index(keep: list[int] | None, student_index: int) -> int:
    """The teacher's hidden state (0: embeddings, i + 1: after layer i) that a student's hidden state
    `student_index` stands for when the student kept the teacher's layers `keep` (None: all)."""
    if keep is None or student_index == 0:
        return student_index
    return int(keep[student_index - 1]) + 1
