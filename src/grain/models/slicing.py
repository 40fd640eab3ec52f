"""Turn a masked encoder into a compact one: slice every weight to the kept units, and check the result.

Which parameters are sliced is read from the model family's `grain.architectures.Architecture`;
`compaction_plan` says, for each parameter of the compact model, which parameter of the masked model
it comes from and which rows/columns it keeps; the same plan slices the weights and the optimizer
state (Adam moments), so training can go on on the small model. Every compaction is checked where it
happens (`compaction_diff`): the compact model must compute what the masked one does.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from grain.architectures import Architecture, find_architecture, supported_families
from grain.errors import GrainError
from grain.models.backbone import eval_mode
from grain.models.compact.bert import FactorizedEmbedding
from grain.models.inputs import random_batch
from grain.models.masks import EncoderShape, KeptStructure, attach_mask_hooks, qk_dimensions
from grain.models.registry import compact_class, compact_family, head_names

# The padded random batch [batch, length] every compaction is checked on.
CHECK_SHAPE = (3, 16)
# Outputs that are not the head's predictions, left out of the check.
NOT_CHECKED = ("loss", "hidden_states", "attentions")


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


def kept_units(masks: dict[str, torch.Tensor], shape: EncoderShape) -> dict[str, torch.Tensor]:
    """The masks read back to the host (once) as booleans: {"qk": [layers, heads, QK units per head], only
    of heads that keep VO units; "heads": [layers, heads], which heads keep VO units; "vo": [layers,
    hidden]; "ffn": [layers, intermediate]}."""
    host = {kind: mask.detach().bool().cpu() for kind, mask in masks.items()}
    layers, heads = shape.num_layers, shape.num_heads
    with_vo = host["vo"].view(layers, heads, shape.head_dim).any(-1)
    return {"qk": host["qk"].view(layers, heads, -1) & with_vo[..., None], "heads": with_vo,
            "vo": host["vo"], "ffn": host["ffn"]}


def kept_indices(masks: dict[str, torch.Tensor], shape: EncoderShape) -> list[dict[str, torch.Tensor]]:
    """Per layer, the indices (in the full layout, long, CPU) of what compaction keeps: {"qk": Q rows,
    "vo": [..], "ffn": [..]}; QK and VO units only of heads that keep VO units, in head order. A rotary
    QK unit (a pair) is two Q rows, laid out per head as `qk_dimensions` says.

    masks: {"qk": [layers, qk units], "vo": [layers, hidden], "ffn": [layers, intermediate]} on any
    device, read back to the host once; the indices are moved to the weights' device where they are used.
    """
    kept = kept_units(masks, shape)
    return [
        {"qk": qk_dimensions(kept["qk"][layer].flatten().nonzero().flatten(), shape),
         "vo": kept["vo"][layer].nonzero().flatten(), "ffn": kept["ffn"][layer].nonzero().flatten()}
        for layer in range(shape.num_layers)
    ]


def rotary_pairs(masks: dict[str, torch.Tensor], shape: EncoderShape) -> list[list[list[int]]]:
    """Per layer, per head that keeps VO units, the kept rotary pairs (their index within the head, i.e.
    the RoPE frequency each keeps): what a rotary compact config holds (`rotary_pairs`)."""
    kept = kept_units(masks, shape)
    return [[kept["qk"][i, h].nonzero().flatten().tolist() for h in range(shape.num_heads) if kept["heads"][i, h]]
            for i in range(shape.num_layers)]


def compact_config(model_or_config, kept: KeptStructure, embedding_rank: int | None = None, **settings):
    """The family's compact config (e.g. GrainBertConfig) of a model (or its HF config object): the HF
    config plus the kept structure's per-layer widths (`KeptStructure.compact_dims`), the word embeddings'
    rank (None: full) and `settings` over the rest (a rotary family's `rotary_pairs`; a timing model's
    sizes)."""
    hf_config = getattr(model_or_config, "config", model_or_config)
    arch = find_architecture(hf_config)
    config = hf_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    qk_dims, vo_dims, ffn_dims = kept.compact_dims()
    config.update(
        qk_dims=qk_dims, vo_dims=vo_dims, ffn_dims=ffn_dims, embedding_rank=embedding_rank,
        original_head_dim=hf_config.hidden_size // hf_config.num_attention_heads,
    )
    return compact_family(arch).config(**{**config, **settings})


def compaction_plan(indices: list[dict[str, torch.Tensor]], arch: Architecture, prefix: str,
                    shape: EncoderShape | None = None) -> dict[str, Slice]:
    """Compact parameter name -> Slice of the masked model's parameter, for every parameter of the
    encoder layers (the others, embeddings and heads, keep their names and are copied whole).

    indices: `kept_indices` of the masks; arch: the masked model's family (its module names, and whether
    its Q, K, V are one fused Linear and its FFN is gated); prefix: the models' `base_model_prefix` (the
    compact model of a family keeps it, and the family's layer path; "" for a base model without a head,
    whose parameters have no prefix); shape: the encoder's sizes, needed for fused or gated weights.
    """
    if (arch.fused_qkv or arch.gated_ffn) and shape is None:
        raise ValueError(f"the {arch.family} plan needs the EncoderShape (fused QKV or gated FFN)")
    # row offsets of Q, K and V within the query / key / value modules' weights (one fused [Q | K | V])
    offset = dict.fromkeys(("query", "key", "value"), 0)
    if arch.fused_qkv:
        offset = {"query": 0, "key": shape.hidden_size, "value": 2 * shape.hidden_size}
    plan = {}
    for i, kept in enumerate(indices):
        base = f"{prefix}.{arch.layer_path}.{i}" if prefix else f"{arch.layer_path}.{i}"

        def add(role: str, rows=None, cols=None, target: str | None = None) -> None:
            """The weight (and bias) of `role`, sliced by rows (the bias too) or columns."""
            source = f"{base}.{getattr(arch.modules, role)}"
            params = {"weight": Slice(f"{source}.weight", rows=rows, cols=cols), "bias": Slice(f"{source}.bias", rows=rows)}
            for param, rule in params.items():
                if target is None:
                    plan[f"{base}.{getattr(arch.compact_modules, role)}.{param}"] = rule
                elif param == "bias":  # an emptied sub-layer keeps only its output bias
                    plan[f"{base}.{target}"] = rule

        if len(kept["vo"]):
            for role in ("query", "key"):
                add(role, rows=kept["qk"] + offset[role])
            add("value", rows=kept["vo"] + offset["value"])
            add("attention_output", cols=kept["vo"])
        else:
            add("attention_output", target=arch.compact_empty_bias["attention_output"])
        if len(kept["ffn"]):
            rows = kept["ffn"]
            if arch.gated_ffn:  # input rows, then their gate rows
                rows = torch.cat([rows, rows + shape.intermediate_size])
            add("ffn_in", rows=rows)
            add("ffn_out", cols=kept["ffn"])
        else:
            add("ffn_out", target=arch.compact_empty_bias["ffn_out"])
        for role in ("attention_norm", "ffn_norm"):
            add(role)
    return plan


def check_supported(model: nn.Module) -> None:
    """Refuse a model whose family or head class has no compact classes, naming what is supported."""
    arch = find_architecture(model)
    head = type(model).__name__
    if arch is None or compact_class(model) is None:
        heads = f"; {arch.family} heads: {', '.join(head_names(arch))}" if arch is not None else ""
        raise GrainError(
            f"compaction supports the families {', '.join(supported_families())} with a classification, QA or "
            f"token-classification head, or none (a sentence encoder){heads}; got {head} ({model.config.model_type}). Run with "
            f"stages=[teacher,prune] to keep the masked model"
        )
    arch.check(model.config)


@torch.no_grad()
def compact_from_masked(model: nn.Module, masks: dict[str, torch.Tensor]):
    """Build the compact model of `model` (an HF model of a supported family and head) without the units
    `masks` removes ({"qk"|"vo": [layers, hidden], "ffn": [layers, intermediate]}, 1 kept, 0 removed;
    the weights need not be zero, and mask hooks may or may not be attached), on `model`'s device, in its
    train/eval mode. Returns (compact model, plan for optimizer state).

    The compact model is checked against the masked one here (`compaction_diff`, raising RuntimeError
    beyond its tolerance); the measured difference is kept on it as `compaction_max_abs_diff`.
    Word embeddings factorized in training (student.embedding_rank) are copied as their two factors.
    """
    check_supported(model)
    shape = EncoderShape.of(model)
    arch = find_architecture(model)
    settings = {"rotary_pairs": rotary_pairs(masks, shape)} if arch.rotary else {}
    config = compact_config(model, KeptStructure.of(masks, shape), factorized_rank(model), **settings)
    with torch.device(next(model.parameters()).device):  # built where the weights are: no round trip to the host
        compact = compact_class(model)(config)
    prefix = model.base_model_prefix if model.base_model is not model else ""  # a base model: no prefix
    plan = compaction_plan(kept_indices(masks, shape), arch, prefix, shape)
    source = dict(model.named_parameters())
    for name, target in compact.named_parameters():  # buffers (position ids) are built alike
        rule = plan.get(name, Slice(name))
        if rule.source not in source:
            raise GrainError(f"cannot compact: parameter {rule.source} not found in the masked model")
        target.copy_(rule.apply(source[rule.source]))
    compact.train(model.training)
    compact.compaction_max_abs_diff = compaction_diff(model, compact, masks)
    return compact, plan


@torch.no_grad()
def compaction_diff(masked: nn.Module, compact: nn.Module, masks: dict[str, torch.Tensor]) -> float:
    """Largest |difference| between the head outputs (logits, or start and end logits) of `masked`, with
    `masks` applied, and `compact` on a padded random batch (`CHECK_SHAPE`), both in eval mode without
    autocast. Raises RuntimeError where it exceeds 1000 dtype epsilons times the outputs' scale
    (fp32: about 1e-4 for logits of order 1): a compaction bug, not a user error."""
    device = next(compact.parameters()).device
    inputs = random_batch(masked.config, *CHECK_SHAPE, padded=True, device=device)
    on_device = {kind: mask.to(device) for kind, mask in masks.items()}
    handles = attach_mask_hooks(masked, lambda layer, kind: on_device[kind][layer])
    no_autocast = torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else contextlib.nullcontext()
    try:
        with eval_mode(masked), eval_mode(compact), no_autocast:
            expected, got = masked(**inputs), compact(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, value in expected.items() if torch.is_tensor(value) and name not in NOT_CHECKED]
    diff = max(float((got[name].float() - expected[name].float()).abs().max()) for name in names)
    scale = max(1.0, max(float(expected[name].float().abs().max()) for name in names))
    tolerance = 1000 * torch.finfo(next(compact.parameters()).dtype).eps * scale
    if not diff <= tolerance:
        raise RuntimeError(
            f"the compact {type(compact).__name__} differs from the masked model by {diff:.3g} (tolerance "
            f"{tolerance:.3g}) on a padded {CHECK_SHAPE[0]} x {CHECK_SHAPE[1]} batch: a compaction bug"
        )
    return diff


@torch.no_grad()
def factorize_embeddings(weight: torch.Tensor, factorized, rank: int) -> None:
    """Truncated SVD: weight [vocab, hidden] ~ (U_r S_r) [vocab, rank] @ Vh_r [rank, hidden]."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    factorized.embedding.weight.copy_(u[:, :rank] * s[:rank])
    factorized.projection.weight.copy_(vh[:rank].t())


def factorized_rank(model: nn.Module) -> int | None:
    """The rank of `model`'s word embeddings when they are a FactorizedEmbedding, else None."""
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
def factorized_copy(compact: nn.Module, rank: int) -> nn.Module:
    """A copy of the compact model `compact` with its word embeddings factorized to `rank` (truncated
    SVD, `factorize_input_embeddings`), its config saying so (`embedding_rank`) so that it saves and
    loads as such; GrainError where they are factorized already."""
    if factorized_rank(compact) is not None:
        raise GrainError(
            f"the word embeddings are already factorized (rank {factorized_rank(compact)}); a second factorization "
            f"(embedding_rank={rank}) is not supported"
        )
    factorized = copy.deepcopy(compact)
    factorize_input_embeddings(factorized, rank)
    factorized.config.embedding_rank = rank
    return factorized


@torch.no_grad()
def slice_optimizer_state(old_params: dict[str, nn.Parameter], new_params: dict[str, nn.Parameter], plan,
                          old_state: dict) -> dict:
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
