"""Unit importance: first-order Taylor scores |dL/dm| folded into an EMA, or baseline scores."""

from __future__ import annotations

import torch
from torch import nn

from grain.models.masks import unit_weights

UNIT_KINDS = ("qk", "vo", "ffn")


def taylor_updates(mask_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|dL/dm| per unit; dL/dm equals sum(grad * weight) over the unit's weights.

    mask_grads: {kind: [layers, units]}, already averaged over ranks (|mean g|, not mean |g|).
    """
    return {kind: grad.detach().abs() for kind, grad in mask_grads.items()}


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """0-dim bool on the tensors' device: every element of every tensor is finite.

    Stays on the device (no host sync), so a training step can branch on it with `torch.where`.
    """
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def ema_(
    scores: dict[str, torch.Tensor],
    updates: dict[str, torch.Tensor],
    beta: float,
    apply: torch.Tensor | None = None,
) -> None:
    """In place: I = beta * I + (1 - beta) * u (no bias correction, as in the reference).

    apply: optional 0-dim bool on the scores' device; where False the scores stay as they are
    (a skipped step), decided on the device rather than by reading the flag on the host.
    """
    for kind, update in updates.items():
        new = scores[kind].mul(beta).add_(update, alpha=1.0 - beta)
        scores[kind].copy_(new if apply is None else torch.where(apply, new, scores[kind]))


@torch.no_grad()
def magnitude_scores(model: nn.Module, num_layers: int) -> dict[str, torch.Tensor]:
    """Baseline: sum of |w| over each unit's weights, per layer -> [layers, units]."""
    per_kind = {kind: [] for kind in UNIT_KINDS}
    for index in range(num_layers):
        for kind, weights in unit_weights(model, index).items():
            per_kind[kind].append(sum(w.abs().sum(dim=1) for w in weights))
    return {kind: torch.stack(rows).float() for kind, rows in per_kind.items()}


def random_scores(shapes: dict[str, torch.Size], seed: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Baseline: fixed random scores [layers, units] on `device`.

    Drawn on the CPU from a seeded generator, then moved: every rank and every device type (a CUDA
    generator draws other numbers) ranks the units alike.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return {kind: torch.rand(shape, generator=generator, device="cpu").to(device) for kind, shape in shapes.items()}


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average tensors over DDP ranks in place, so every rank ranks and prunes alike.

    The flat buffer is built from the tensors themselves (`torch.cat`), so it lives on their device,
    which is the one the process group's backend expects (NCCL: the rank's GPU).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
