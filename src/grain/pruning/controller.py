"""The pruning controller: masks, importance EMA, schedule and global ranking in one nn.Module.

Its state (masks, scores, step) lives in registered buffers, so it moves with the model and is
saved in Lightning checkpoints. It does not import Lightning: a notebook can drive it on a plain
model with `attach`, `begin_step`, `update_scores` and `end_step`.

A training step, pruning included, does not sync with the host (on a GPU each sync stalls the
step until the device catches up): the step counters are mirrored in Python ints, and tensors are
created on the device of the tensors they meet. Only the reporting methods (`sparsity`,
`structure`) and a checkpoint load read values back.
"""

from __future__ import annotations

import torch
from torch import nn

from grain.models.masks import EncoderShape, KeptStructure, attach_mask_hooks
from grain.pruning.importance import (
    UNIT_KINDS,
    all_finite,
    all_reduce_mean_,
    ema_,
    magnitude_scores,
    random_scores,
    taylor_updates,
)
from grain.pruning.latency_ranking import prune_to_latency
from grain.pruning.ranking import (
    BUDGET_MODES,
    encoder_linear_params,
    kept_linear_params,
    prunable_params,
    removed_unit_params,
    select_lowest,
    select_units,
    unit_costs,
)
from grain.pruning.regularization import regularize_updates
from grain.pruning.schedule import CubicSchedule

UNIT_MODES = ("intra", "head", "none")
SCORE_KINDS = ("grad", "magnitude", "random")
COST_KINDS = ("params", "latency")


class PruningController(nn.Module):
    def __init__(
        self,
        shape: EncoderShape,
        target_sparsity: float | None,
        units: str = "intra",
        score: str = "grad",
        beta: float = 0.998,
        alpha_head: float = 0.3,
        alpha_layer: float = 1e-4,
        structure_reg: bool = True,
        start: float = 0.2,
        end: float = 0.4,
        frequency: int = 1,
        seed: int = 0,
        budget: str = "grain",
        cost: str = "params",
        target_speedup: float | None = None,
        latency_model=None,
    ):
        """target_sparsity: fraction of the prunable-unit parameters to remove (`grain.target`); or, with
        `target_speedup` (dense / predicted compact latency under `latency_model`, a
        grain.measure.latency_model.LatencyModel; dense: its `dense_ms()`, the dense model measured as
        the compact stage measures it, so the target reads as the compact stage's `compact.speedup`),
        the schedule runs over the fraction of the dense latency removed, 1 - 1 / target_speedup.
        cost: what a unit is charged in the ranking, its parameters (GRAIN as published) or the
        latency its removal saves (needs a speedup target)."""
        super().__init__()
        if cost not in COST_KINDS:
            raise ValueError(f"pruner.cost={cost!r}; expected one of {COST_KINDS}")
        if cost == "latency" and target_speedup is None:
            raise ValueError("pruner.cost=latency prunes to a speed: give a speedup target (speedup=8)")
        if target_speedup is not None and latency_model is None:
            raise ValueError("a speedup target needs a latency model (grain.measure.latency_model)")
        self.cost = cost
        self.target_speedup = None if target_speedup is None else float(target_speedup)
        self.latency_model = latency_model
        if units not in UNIT_MODES:
            raise ValueError(f"pruner.units={units!r}; expected one of {UNIT_MODES}")
        if score not in SCORE_KINDS:
            raise ValueError(f"pruner.score={score!r}; expected one of {SCORE_KINDS}")
        if budget not in BUDGET_MODES:
            raise ValueError(f"pruner.budget={budget!r}; expected one of {BUDGET_MODES}")
        self.shape = shape
        self.target_sparsity = None if target_sparsity is None else float(target_sparsity)
        self.units = units
        self.score_kind = score
        self.beta = beta
        self.alpha_head = alpha_head
        self.alpha_layer = alpha_layer
        self.structure_reg = structure_reg
        self.start, self.end, self.frequency = start, end, frequency
        self.seed = seed
        self.budget_mode = budget
        for kind, size in shape.units_per_layer.items():
            self.register_buffer(f"mask_{kind}", torch.ones(shape.num_layers, size))
            self.register_buffer(f"score_{kind}", torch.zeros(shape.num_layers, size))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        # Importance updates left out of the EMA because they held inf/NaN (as the reference skips them).
        self.register_buffer("skipped_score_updates", torch.zeros((), dtype=torch.long))
        # Python mirrors of `step` and `total_steps`: reading a buffer on the GPU is a host sync, and
        # the schedule is consulted every step. Kept equal to the buffers by every method that writes
        # them, and re-read from them after a checkpoint is loaded (`_load_from_state_dict`).
        self._step = 0
        self._total_steps = 0
        self._live_masks: dict[str, torch.Tensor] | None = None
        self._hooks: list = []
        self._model: list[nn.Module] = []  # a list, so the model is not registered as a submodule

    # --- state ------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.units != "none" and (self.target_speedup is not None or (self.target_sparsity or 0.0) > 0)

    @property
    def schedule_target(self) -> float:
        """What the schedule reaches at its end: the target sparsity, or with a speedup target the
        fraction of the predicted latency removed."""
        if self.target_speedup is not None:
            return 1.0 - 1.0 / self.target_speedup
        return self.target_sparsity

    def masks(self) -> dict[str, torch.Tensor]:
        return {kind: getattr(self, f"mask_{kind}") for kind in UNIT_KINDS}

    def scores(self) -> dict[str, torch.Tensor]:
        return {kind: getattr(self, f"score_{kind}") for kind in UNIT_KINDS}

    @property
    def current_step(self) -> int:
        """Training steps completed so far (the `step` buffer, read without a host sync)."""
        return self._step

    @property
    def planned_steps(self) -> int:
        """Training steps of the whole run, 0 until set (the `total_steps` buffer, without a host sync)."""
        return self._total_steps

    def set_total_steps(self, total_steps: int) -> None:
        self._total_steps = int(total_steps)
        self.total_steps.fill_(self._total_steps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the skipped-update counter existed: none were counted.
        state_dict.setdefault(prefix + "skipped_score_updates", torch.zeros_like(self.skipped_score_updates))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Once per load (Lightning restores buffers through load_state_dict): the mirrors follow.
        self._step, self._total_steps = int(self.step), int(self.total_steps)

    @property
    def schedule(self) -> CubicSchedule:
        return CubicSchedule.from_fractions(
            self.schedule_target, self._total_steps, self.start, self.end, self.frequency
        )

    # --- hooks ------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Apply the masks to `model` (forward hooks) and remember it for magnitude scores."""
        self.detach()
        self._model = [model]
        if self.active:
            self._hooks = attach_mask_hooks(model, self._mask_for)

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._model = [], []

    def _mask_for(self, layer: int, kind: str) -> torch.Tensor:
        masks = self._live_masks if self._live_masks is not None else self.masks()
        return masks[kind][layer]

    # --- one training step --------------------------------------------------------------------
    def needs_scores(self) -> bool:
        """Whether this step's forward must track mask gradients (only grad scores, until pruning ends)."""
        return self.active and self.score_kind == "grad" and self._step <= self.schedule.end_step

    def begin_step(self) -> dict[str, torch.Tensor] | None:
        """Before the forward: returns leaf mask variables to differentiate, or None when not scoring."""
        if not self.needs_scores():
            self._live_masks = None
            return None
        self._live_masks = {k: m.detach().clone().requires_grad_(True) for k, m in self.masks().items()}
        return self._live_masks

    @torch.no_grad()
    def update_scores(self, mask_grads: dict[str, torch.Tensor]) -> None:
        """Fold |dL/dm| of this step (averaged over ranks, structure-regularized) into the EMA.

        mask_grads: {"qk"|"vo": [layers, hidden], "ffn": [layers, intermediate]}. Under several
        processes the raw gradients are averaged first and the absolute value taken after, |mean g|
        (as airaria/GRAIN: DDP averages the weight gradients, then FineISPruner.gather_IS takes
        `(grad * weight).sum().abs()`), in fp32 whatever the autocast dtype. A step whose update
        holds inf or NaN (an fp16 overflow, a diverging batch) leaves the scores as they are and
        counts in `skipped_score_updates`. The check runs after the all-reduce, so every rank skips
        alike, and on the device, so it costs no host sync.
        """
        grads = {kind: grad.detach().to(torch.float32, copy=True) for kind, grad in mask_grads.items()}
        all_reduce_mean_([grads[kind] for kind in UNIT_KINDS])
        updates = taylor_updates(grads)
        finite = all_finite(list(updates.values()))
        if self.structure_reg:
            updates = regularize_updates(
                updates, self.masks(), self.shape.num_heads, self.alpha_head, self.alpha_layer
            )
        ema_(self.scores(), updates, self.beta, apply=finite)
        self.skipped_score_updates.add_((~finite).long())

    @torch.no_grad()
    def end_step(self) -> bool:
        """After the optimizer step: prune if the schedule says so, advance the step. True if pruned."""
        self._live_masks = None
        step = self._step
        pruned = False
        if self.active and self.schedule.prunes_at(step):
            self.prune_to(self.schedule.sparsity_at(step))
            pruned = True
        self.step.add_(1)
        self._step += 1
        return pruned

    def is_frozen(self) -> bool:
        """True once the schedule's last pruning step has run (masks will not change again)."""
        return (not self.active) or self._step > self.schedule.end_step

    # --- ranking ------------------------------------------------------------------------------
    def _ranking_scores(self) -> dict[str, torch.Tensor]:
        """Scores [layers, units] per kind, on the masks' device."""
        device = self.mask_qk.device
        if self.score_kind == "magnitude":
            return {k: v.to(device) for k, v in magnitude_scores(self._model[0], self.shape.num_layers).items()}
        if self.score_kind == "random":
            return random_scores({k: m.shape for k, m in self.masks().items()}, self.seed, device)
        return self.scores()

    @torch.no_grad()
    def prune_to(self, fraction: float) -> None:
        """Prune to the schedule's `fraction`: of the prunable-unit parameters (a sparsity), or with a
        speedup target of the predicted latency (`prune_to_latency`)."""
        if self.target_speedup is not None:
            self.prune_to_latency(self.latency_model.dense_ms() * (1.0 - fraction))
        else:
            self._select_by_params(fraction, self.masks())

    def _select_by_params(self, sparsity: float, masks: dict[str, torch.Tensor],
                          scores: dict[str, torch.Tensor] | None = None) -> None:
        """Remove the least important units of `masks` (in place) until `sparsity` of the prunable-unit
        parameters is gone.

        The budget is `sparsity * prunable_params` (W_O/W_2 output biases, never pruned, left out),
        as airaria/GRAIN FineISPruner; see `ranking.select_units` for the `budget` modes.
        Runs on the masks' device without reading values back to the host. `scores`: the step's
        `_ranking_scores()` where the caller has them already.
        """
        budget = sparsity * prunable_params(self.shape)
        scores = self._ranking_scores() if scores is None else scores
        if self.units == "head":
            self._prune_heads(budget, masks, scores)
        else:
            remove = select_units(scores, masks, self.shape, budget, self.budget_mode, select_lowest)
            for kind, gone in remove.items():
                masks[kind].masked_fill_(gone, 0.0)
        self._remove_qk_of_empty_heads(masks)

    @torch.no_grad()
    def prune_to_latency(self, target_ms: float) -> None:
        """Prune until the latency model predicts at most `target_ms` for the compact model.

        cost=latency: runs of units go by increasing importance per ms saved, priced exactly over the
        kernel plan's head groups (`latency_ranking`). cost=params:
        GRAIN's own selection, at the least sparsity whose masks meet the target (bisection). Both
        read masks back to the host, once per pruning step (rare), never per training step.
        """
        masks, model, scores = self.masks(), self.latency_model, self._ranking_scores()
        if self.cost == "latency":
            prune_to_latency(scores, masks, self.shape, model, target_ms)
            self._keep_one_head_and_neuron(masks, scores)
            return
        lo, hi, best = 0.0, 1.0 - 1e-6, None
        for _ in range(20):
            mid = (lo + hi) / 2
            trial = {kind: mask.clone() for kind, mask in masks.items()}
            self._select_by_params(mid, trial, scores)
            if model.predict_masks(trial, self.shape) <= target_ms:
                hi, best = mid, trial
            else:
                lo = mid
        if best is None:  # even (almost) everything removed misses the target: take the most
            best = {kind: mask.clone() for kind, mask in masks.items()}
            self._select_by_params(hi, best, scores)
        for kind, mask in masks.items():
            mask.copy_(best[kind])
        self._keep_one_head_and_neuron(masks, scores)

    def _keep_one_head_and_neuron(self, masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]) -> None:
        """A speed target never prunes the model to nothing: where no VO unit (no head) or no FFN neuron is
        left in the whole model, its most important one comes back (a target that asks for less than one
        head and one FFN neuron per layer is refused before training: `LatencyModel.max_speedup`).
        Reads the masks on the host: a pruning step, rare."""
        for kind in ("vo", "ffn"):
            if not bool(masks[kind].any()):
                masks[kind].view(-1)[scores[kind].flatten().argmax()] = 1.0

    def predicted_speedup(self) -> float | None:
        """Measured dense latency (`dense_ms()`) / predicted compact latency of the current masks: what
        the compact stage's `compact.speedup` should read (None without a latency model)."""
        if self.latency_model is None:
            return None
        return self.latency_model.dense_ms() / self.latency_model.predict_masks(self.masks(), self.shape)

    def _prune_heads(self, budget: float, masks, scores) -> None:
        """Baseline: rank whole heads (QK + VO units together) and single FFN neurons."""
        layers, heads, d = self.shape.num_layers, self.shape.num_heads, self.shape.head_dim
        costs = unit_costs(self.shape)
        head_alive = masks["vo"].view(layers, heads, d).amax(-1) > 0
        head_scores = scores["qk"].float().view(layers, heads, -1).sum(-1) + scores["vo"].float().view(layers, heads, d).sum(-1)
        head_scores = head_scores.masked_fill(~head_alive, float("-inf")).flatten()
        ffn_scores = scores["ffn"].float().masked_fill(masks["ffn"] == 0, float("-inf")).flatten()
        flat_scores = torch.cat([head_scores, ffn_scores])
        head_cost = self.shape.qk_units_per_head * costs["qk"] + d * costs["vo"]  # BERT: d (4h + 3), ISPruner's head_unit_size
        flat_costs = torch.cat([
            torch.full((head_scores.numel(),), head_cost, device=flat_scores.device),
            torch.full((ffn_scores.numel(),), costs["ffn"], device=flat_scores.device),
        ])
        remove = select_lowest(flat_scores, flat_costs, budget)
        head_removed = remove[: head_scores.numel()].view(layers, heads, 1).expand(layers, heads, d)
        masks["vo"].masked_fill_(head_removed.reshape(layers, -1), 0.0)
        masks["ffn"].masked_fill_(remove[head_scores.numel():].view_as(masks["ffn"]), 0.0)

    def _remove_qk_of_empty_heads(self, masks: dict[str, torch.Tensor]) -> None:
        layers, heads = self.shape.num_layers, self.shape.num_heads
        empty = masks["vo"].view(layers, heads, -1).amax(-1, keepdim=True) == 0
        masks["qk"].view(layers, heads, -1).masked_fill_(empty, 0.0)

    # --- reporting ----------------------------------------------------------------------------
    def sparsity(self) -> float:
        """Achieved sparsity in the target's measure (`grain.target`): the fraction of the prunable units'
        parameters removed (QK units of emptied heads included). Reads the masks on the host."""
        return removed_unit_params(self.masks(), self.shape) / prunable_params(self.shape)

    def encoder_linear_sparsity(self) -> float:
        """Achieved fraction of all encoder linear weights removed (W_O and W_2 output biases, never
        pruned, count as kept): the measure of the paper's tables. Reads the masks on the host."""
        return 1.0 - kept_linear_params(self.masks(), self.shape) / encoder_linear_params(self.shape)

    def structure(self) -> dict:
        """Kept units per layer and head (`KeptStructure.as_layers`), for summary.json and the structure
        picture, with the parameter and head counts. Reads the masks on the host."""
        kept = KeptStructure.of(self.masks(), self.shape)
        return {
            "encoder_params_dense": encoder_linear_params(self.shape),
            "encoder_params_kept": kept_linear_params(self.masks(), self.shape),
            "heads_kept": kept.heads_kept,
            "heads_total": self.shape.num_layers * self.shape.num_heads,
            "ffn_neurons_kept": sum(kept.ffn),
            "layers": kept.as_layers(),
        }
