"""A pruning controller on a model, seeded importance scores, and how close below its target the
pruner lands."""

from __future__ import annotations

import torch

from grain.models.masks import EncoderShape
from grain.pruning.controller import PruningController


def controller_for(model, **kwargs) -> PruningController:
    """A controller attached to `model`, 10 steps planned: target 0.5, no EMA (beta 0), no structure
    regularization, pruning over the whole run, unless `kwargs` say otherwise."""
    defaults = dict(target_sparsity=0.5, beta=0.0, structure_reg=False, start=0.0, end=1.0)
    defaults.update(kwargs)
    controller = PruningController(EncoderShape.of(model), **defaults)
    controller.attach(model)
    controller.set_total_steps(10)
    return controller


def seeded_scores(shape: EncoderShape, seed: int = 0, vo_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Scores uniform in [0, 1) ([0, vo_scale) for VO units) per unit of `shape`, drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    scores = {k: torch.rand(shape.num_layers, n, generator=generator) for k, n in shape.units_per_layer.items()}
    scores["vo"] *= vo_scale
    return scores


def sparsity_bound(target: float, shape: EncoderShape, units: str = "intra") -> float:
    """The least sparsity the pruner may reach for `target`, in the target's measure (the fraction of the
    prunable units' parameters removed): its budget is target x those parameters and it stops less than
    one unit below it, as airaria/GRAIN (issue 15). The dearest unit is a QK unit (Q row + K row + their
    biases: 2h + 2), in head mode a whole head (head_dim x (2h + 2 + 2h + 1)). By hand, not from grain's
    own unit costs: QK 2h + 2, VO and FFN 2h + 1 parameters (W_O and W_2 output biases in no unit)."""
    h, i = shape.hidden_size, shape.intermediate_size
    prunable = shape.num_layers * (h * (2 * h + 2) + h * (2 * h + 1) + i * (2 * h + 1))
    largest = shape.head_dim * (4 * h + 3) if units == "head" else 2 * h + 2
    return target - largest / prunable
