"""Turn a masked encoder into a compact one: slice every weight to the kept units.

Which parameters are sliced is read from the model family's `grain.architectures.Architecture`;
`compaction_plan` says, for each parameter of the compact model, which parameter of the masked model
it comes from and which rows/columns it keeps; the same plan slices the weights and the optimizer
state (Adam moments), so training can go on on the small model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grain.architectures import COMPACT_EMPTY_BIAS, COMPACT_LAYER, Architecture, find_architecture, supported_families
from grain.errors import GrainError
from grain.models.masks import EncoderShape


@dataclass(frozen=True)
class Slice:
    source: str                          # parameter name in the masked model
    rows: torch.Tensor | None = None     # kept indices along dim 0 (None: all)
    cols: torch.Tensor | None = None     # kept indices along dim 1 (None: all)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            tensor = tensor.index_select(0, self.rows.to(tensor.device))
        if self.cols is not None:
            tensor = tensor.index_select(1, self.cols.to(tensor.device))
        return tensor


def kept_structure(masks: dict[str, torch.Tensor], shape: EncoderShape) -> dict:
    """Per layer: kept heads' QK/VO widths and the kept unit indices (in the full layout).

    masks: {"qk"|"vo": [layers, hidden], "ffn": [layers, intermediate]} on any device. The plan is
    made on the host (widths become Python ints of the compact config), so the masks are read
    back once; the index tensors are CPU tensors, moved to the weights' device where they are used.
    """
    d = shape.head_dim
    host = {kind: mask.detach().bool().cpu() for kind, mask in masks.items()}
    offsets = torch.arange(shape.num_heads, device="cpu")[:, None] * d + torch.arange(d, device="cpu")
    no_units = torch.zeros(0, dtype=torch.long, device="cpu")
    layers = []
    for layer in range(shape.num_layers):
        qk_mask = host["qk"][layer].view(shape.num_heads, d)
        vo_mask = host["vo"][layer].view(shape.num_heads, d)
        heads = [h for h in range(shape.num_heads) if vo_mask[h].any()]
        layers.append({
            "qk_dims": [int(qk_mask[h].sum()) for h in heads],
            "vo_dims": [int(vo_mask[h].sum()) for h in heads],
            "qk_index": torch.cat([offsets[h][qk_mask[h]] for h in heads] or [no_units]),
            "vo_index": torch.cat([offsets[h][vo_mask[h]] for h in heads] or [no_units]),
            "ffn_index": host["ffn"][layer].nonzero().flatten(),
        })
    return {"layers": layers}


def compact_config(model: nn.Module, structure: dict, embedding_rank: int | None = None):
    """The family's compact config (e.g. GrainBertConfig): `model`'s config plus the kept structure."""
    arch = find_architecture(model)
    config = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    layers = structure["layers"]
    return arch.compact_config_class()(
        **config,
        qk_dims=[layer["qk_dims"] for layer in layers],
        vo_dims=[layer["vo_dims"] for layer in layers],
        ffn_dims=[len(layer["ffn_index"]) for layer in layers],
        original_head_dim=model.config.hidden_size // model.config.num_attention_heads,
        embedding_rank=embedding_rank,
    )


def compaction_plan(structure: dict, arch: Architecture, prefix: str) -> dict[str, Slice]:
    """Compact parameter name -> Slice of the masked model's parameter, for every parameter of the
    encoder layers (the others, embeddings and heads, keep their names and are copied whole).

    arch: the masked model's family (its module names); prefix: the models' `base_model_prefix`
    (the compact model of a family keeps it, and the family's layer path).
    """
    source_modules, compact_modules = arch.modules, COMPACT_LAYER
    plan = {}
    for i, layer in enumerate(structure["layers"]):
        base = f"{prefix}.{arch.layer_path}.{i}"

        def add(role: str, param: str, rows=None, cols=None, target: str | None = None):
            target = target or f"{base}.{getattr(compact_modules, role)}.{param}"
            plan[target] = Slice(f"{base}.{getattr(source_modules, role)}.{param}", rows=rows, cols=cols)

        if layer["vo_dims"]:
            for role in ("query", "key"):
                add(role, "weight", rows=layer["qk_index"])
                add(role, "bias", rows=layer["qk_index"])
            add("value", "weight", rows=layer["vo_index"])
            add("value", "bias", rows=layer["vo_index"])
            add("attention_output", "weight", cols=layer["vo_index"])
            add("attention_output", "bias")
        else:
            add("attention_output", "bias", target=f"{base}.{COMPACT_EMPTY_BIAS['attention_output']}")
        if len(layer["ffn_index"]):
            add("ffn_in", "weight", rows=layer["ffn_index"])
            add("ffn_in", "bias", rows=layer["ffn_index"])
            add("ffn_out", "weight", cols=layer["ffn_index"])
            add("ffn_out", "bias")
        else:
            add("ffn_out", "bias", target=f"{base}.{COMPACT_EMPTY_BIAS['ffn_out']}")
        for role in ("attention_norm", "ffn_norm"):
            add(role, "weight")
            add(role, "bias")
    return plan


def check_supported(model: nn.Module) -> None:
    """Refuse a model whose family or head class has no compact classes, naming what is supported."""
    arch = find_architecture(model)
    head = type(model).__name__
    if arch is None or arch.compact_class(model) is None:
        heads = f"; {arch.family} heads: {', '.join(arch.head_names())}" if arch is not None else ""
        raise GrainError(
            f"compaction supports the families {', '.join(supported_families())} with a classification, QA or "
            f"token-classification head{heads}; got {head} ({model.config.model_type}). Run with "
            f"stages=[teacher,prune] to keep the masked model"
        )
    arch.check(model.config)


@torch.no_grad()
def compact_from_masked(model: nn.Module, masks: dict[str, torch.Tensor], embedding_rank: int | None = None):
    """Build the compact model from a masked one. Returns (compact model, plan for optimizer state)."""
    check_supported(model)
    arch = find_architecture(model)
    shape = EncoderShape.of(model)
    structure = kept_structure(masks, shape)
    trained_rank = factorized_rank(model)
    if trained_rank is not None:
        # factorized before distillation (student.embedding_rank): the two factors are copied by name
        if embedding_rank:
            raise GrainError(
                f"the word embeddings are already factorized (rank {trained_rank}); a second factorization "
                f"(embedding_rank={embedding_rank}) is not supported"
            )
        config = compact_config(model, structure, trained_rank)
    else:
        config = compact_config(model, structure, embedding_rank)
    with torch.device(next(model.parameters()).device):  # built where the weights are: no round trip to the host
        compact = arch.compact_class(model)(config)
    plan = compaction_plan(structure, arch, model.base_model_prefix)
    source = dict(model.named_parameters())
    word_key = f"{model.base_model_prefix}.embeddings.word_embeddings"
    for name, target in compact.named_parameters():  # buffers (position ids) are built alike
        if embedding_rank and name.startswith(word_key):
            continue
        rule = plan.get(name, Slice(name))
        if rule.source not in source:
            raise GrainError(f"cannot compact: parameter {rule.source} not found in the masked model")
        target.copy_(rule.apply(source[rule.source]))
    if embedding_rank:
        factorize_embeddings(source[f"{word_key}.weight"], compact.base_model.embeddings.word_embeddings, embedding_rank)
    compact.train(model.training)
    return compact, plan


@torch.no_grad()
def factorize_embeddings(weight: torch.Tensor, factorized, rank: int) -> None:
    """Truncated SVD: weight [vocab, hidden] ~ (U_r S_r) [vocab, rank] @ Vh_r [rank, hidden]."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    factorized.embedding.weight.copy_(u[:, :rank] * s[:rank])
    factorized.projection.weight.copy_(vh[:rank].t())


def factorized_rank(model: nn.Module) -> int | None:
    """The rank of `model`'s word embeddings when they are a FactorizedEmbedding, else None."""
    from grain.models.compact import FactorizedEmbedding

    try:
        words = model.get_input_embeddings()
    except NotImplementedError:
        return None
    return words.embedding.embedding_dim if isinstance(words, FactorizedEmbedding) else None


@torch.no_grad()
def factorize_input_embeddings(model: nn.Module, rank: int) -> nn.Module:
    """Replace `model`'s word embeddings (any family, found through HF's get/set_input_embeddings) by
    a FactorizedEmbedding of rank `rank` from their truncated SVD; in place, returns `model`.

    The official GRAIN recipe (airaria/GRAIN) does this to the student before distillation and trains
    the two factors. The module keeps its name (e.g. `bert.embeddings.word_embeddings`), so the
    factors are `<name>.embedding.weight` [vocab, rank] and `<name>.projection.weight` [hidden, rank].
    """
    from grain.models.compact import FactorizedEmbedding

    words = model.get_input_embeddings()
    if not isinstance(words, nn.Embedding):
        raise GrainError(f"cannot factorize the word embeddings: {type(words).__name__} is not an nn.Embedding")
    vocab, dim = words.weight.shape
    if not 1 <= rank <= min(vocab, dim):
        raise GrainError(f"embedding rank {rank} is not between 1 and the embedding size {min(vocab, dim)}")
    weight = words.weight
    factorized = FactorizedEmbedding(vocab, rank, dim, words.padding_idx).to(device=weight.device)
    factorize_embeddings(weight, factorized, rank)
    factorized.to(dtype=weight.dtype).requires_grad_(weight.requires_grad)
    model.set_input_embeddings(factorized)
    return model


@torch.no_grad()
def slice_optimizer_state(old_params: dict[str, nn.Parameter], new_params: dict[str, nn.Parameter], plan, old_state: dict) -> dict:
    """Optimizer state (e.g. Adam exp_avg/exp_avg_sq) of the compact params, sliced like the weights.

    old_state: {old param tensor: {key: tensor}}; returns {new param tensor: {key: tensor}}.
    """
    new_state = {}
    for name, param in new_params.items():
        rule = plan.get(name, Slice(name))
        state = old_state.get(old_params[rule.source])
        if not state:
            continue
        new_state[param] = {
            key: rule.apply(value) if torch.is_tensor(value) and value.shape == old_params[rule.source].shape else value
            for key, value in state.items()
        }
    return new_state


@torch.no_grad()
def expand_to_masked(compact: nn.Module, skeleton: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """The inverse of compaction: write the compact weights into `skeleton` (a model of the original
    architecture, modified in place) with zeros for the pruned units, so that, masked, it computes
    what the compact model computes. Used to check a student that was compacted during training."""
    rank = getattr(compact.config, "embedding_rank", None)
    if rank and factorized_rank(skeleton) is None:  # factorized in training: the skeleton takes the factors' shape
        factorize_input_embeddings(skeleton, int(rank))
    structure = kept_structure(masks, EncoderShape.of(skeleton))
    plan = compaction_plan(structure, find_architecture(skeleton), skeleton.base_model_prefix)
    targets = dict(skeleton.named_parameters())
    for name, param in compact.named_parameters():
        rule = plan.get(name, Slice(name))
        target = targets[rule.source]
        if rule.rows is None and rule.cols is None:
            target.copy_(param)
            continue
        target.zero_()
        if rule.rows is not None:
            target.index_copy_(0, rule.rows.to(target.device), param)
        else:
            target.index_copy_(1, rule.cols.to(target.device), param)
    return skeleton
