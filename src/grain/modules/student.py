"""Student LightningModule: distillation from a frozen teacher while the controller prunes.

One training step (manual optimization, so that importance and weights use different losses):
1. forward teacher (no grad) and student (through the controller's mask variables);
2. importance: `torch.autograd.grad(prediction_loss, masks, retain_graph=True)`; only the
   prediction (KD logits) loss, never the hidden-state loss, reaches the scores (gradient
   separation). A single backward per forward keeps DDP's reducer happy;
3. one backward of the total loss, clip, optimizer and LR-scheduler step;
4. the controller prunes when the schedule says so.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch

from grain.distill.losses import embedding_loss, hidden_mse, kd_loss, margin_mse, score_mse
from grain.distill.projections import HiddenProjections, matched_layers
from grain.models.backbone import restore_output_capture
from grain.models.layer_drop import teacher_hidden_index
from grain.models.slicing import compact_from_masked, slice_optimizer_state
from grain.modules.common import SplitEvaluation, adamw_with_linear_schedule, decay_groups
from grain.pruning.controller import PruningController
from grain.tasks.base import TEACHER_SCORES_KEY, Task, model_inputs

log = logging.getLogger(__name__)


SCORE_LOSSES = {"mse": score_mse, "margin_mse": margin_mse}


def score_loss_of(distill_cfg: dict, model_config) -> str:
    """The logits loss a distillation config asks for (`score_loss`: kd, mse, margin_mse); unset: kd, or
    mse for a one-logit head (`num_labels` 1: KD's softmax over one logit is constant)."""
    chosen = distill_cfg.get("score_loss")
    if chosen:
        return str(chosen)
    return "mse" if getattr(model_config, "num_labels", 2) == 1 else "kd"


class StudentModule(SplitEvaluation, pl.LightningModule):
    """Distils `student` from the frozen `teacher` while `controller` prunes it. `task` (the run's Task,
    its class or its data module) says what distillation compares (`Task.distillation_target`): logits,
    with the KD loss, at the positions it names; or sentence embeddings (`Task.embeddings`, an instance
    method: it pools with the data module's pooling), with `embedding_loss` weighted by the distillation
    config's `embedding_mse_weight` and `embedding_cosine_weight`. On logits, the config's `score_loss`
    (`score_loss_of`) picks KD, or MSE / MarginMSE on a one-logit head's scores. `kept_layers`: the teacher's layers a
    layer-dropping student kept (`grain.models.layer_drop`), whose hidden states its own are matched with."""

    metric_prefix = "student"

    def __init__(
        self,
        student,
        teacher,
        controller: PruningController,
        task: type[Task],
        distill_cfg: dict,
        optim_cfg: dict,
        gradient_separation: bool = True,
        compact_after_end: bool = False,
        seed: int = 0,
        kept_layers: list[int] | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.controller = controller
        self.task = task
        self.kd_weight = float(distill_cfg["kd_weight"])
        self.temperature = float(distill_cfg["temperature"])
        self.hard_label_weight = float(distill_cfg["hard_label_weight"])
        self.hidden_weight = float(distill_cfg["hidden_weight"])
        self.embedding_weights = (float(distill_cfg.get("embedding_mse_weight", 1.0)),
                                  float(distill_cfg.get("embedding_cosine_weight", 1.0)))
        self.score_loss = score_loss_of(distill_cfg, student.config)
        self.optim_cfg = dict(optim_cfg)
        self.gradient_separation = gradient_separation
        self.compact_after_end = compact_after_end
        self.compacted = False
        self.seed = seed
        self.student_layers = matched_layers(student.config.num_hidden_layers, distill_cfg["hidden_layer_stride"])
        if kept_layers is not None:  # layer dropping: each student state stands for the teacher's after the same layer
            self.teacher_layers = [teacher_hidden_index(kept_layers, i) for i in self.student_layers]
        else:
            self.teacher_layers = matched_layers(teacher.config.num_hidden_layers, distill_cfg["hidden_layer_stride"])
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"cannot match hidden states: student layers {self.student_layers} vs teacher {self.teacher_layers}"
            )
        self.projections = HiddenProjections(
            student.config.hidden_size, teacher.config.hidden_size, len(self.student_layers)
        )
        controller.attach(student)

    def eval_model(self):
        return self.student

    def setup(self, stage: str) -> None:
        restore_output_capture(self)  # needed after ddp_spawn unpickled the models

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the frozen teacher never uses dropout
        return self

    # --- losses ---------------------------------------------------------------------------------
    def losses(self, batch) -> dict[str, torch.Tensor]:
        """Forward teacher and student; returns the prediction, hidden and total losses. Score losses
        compare with the batch's own teacher scores where it has them (`TEACHER_SCORES_KEY`), and the
        teacher then runs only for the hidden-state loss."""
        use_hidden = self.hidden_weight > 0
        given_scores = batch.get(TEACHER_SCORES_KEY) if self.score_loss in SCORE_LOSSES else None
        teacher_out = None
        if use_hidden or given_scores is None:
            with torch.no_grad():
                teacher_out = self.teacher(**model_inputs(batch), output_hidden_states=use_hidden)
        student_inputs = model_inputs(batch, with_labels=self.hard_label_weight > 0)
        student_out = self.student(**student_inputs, output_hidden_states=use_hidden)
        prediction = torch.zeros((), device=self.device)
        if self.kd_weight > 0:
            if self.task.distillation_target == "embeddings":
                kd = embedding_loss(self.task.embeddings(student_out, batch), self.task.embeddings(teacher_out, batch),
                                    *self.embedding_weights)
            elif self.score_loss == "kd":
                kd = kd_loss(self.task.prediction_logits(student_out), self.task.prediction_logits(teacher_out),
                             self.temperature, self.task.distillation_positions(batch))
            else:
                [student_scores] = self.task.prediction_logits(student_out)
                [teacher_scores] = [given_scores] if given_scores is not None else self.task.prediction_logits(teacher_out)
                kd = SCORE_LOSSES[self.score_loss](student_scores, teacher_scores)
            prediction = prediction + self.kd_weight * kd
        if self.hard_label_weight > 0:
            prediction = prediction + self.hard_label_weight * student_out.loss
        hidden = prediction.new_zeros(())
        if use_hidden:
            student_states = self.projections([student_out.hidden_states[i] for i in self.student_layers])
            teacher_states = [teacher_out.hidden_states[i] for i in self.teacher_layers]
            hidden = self.hidden_weight * hidden_mse(student_states, teacher_states, batch["attention_mask"])
        return {"prediction": prediction, "hidden": hidden, "total": prediction + hidden}

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        # Dropout draws from a generator seeded by (seed, rank, step): a resumed run replays the
        # same randomness as an uninterrupted one, so it reaches the same masks.
        torch.manual_seed(self.seed * 1_000_003 + self.global_rank * 10_007 + self.controller.current_step)
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        mask_vars = self.controller.begin_step()
        losses = self.losses(batch)
        if mask_vars is not None:
            score_loss = losses["prediction"] if self.gradient_separation else losses["total"]
            kinds = list(mask_vars)
            grads = torch.autograd.grad(score_loss, [mask_vars[k] for k in kinds], retain_graph=True)
            self.controller.update_scores(dict(zip(kinds, grads)))
        optimizer.zero_grad()
        self.manual_backward(losses["total"])
        if self.optim_cfg.get("max_grad_norm"):
            self.clip_gradients(optimizer, gradient_clip_val=self.optim_cfg["max_grad_norm"], gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler.step()
        pruned = self.controller.end_step()
        if self.compact_after_end and not self.compacted and self.controller.active and self.controller.is_frozen():
            self.compact_in_place(optimizer.optimizer)
        self.log_dict(
            {"student/loss": losses["total"], "student/loss_pred": losses["prediction"], "student/loss_hidden": losses["hidden"]},
            prog_bar=True,
        )
        # A device tensor: Lightning reads it back only when it writes the logs.
        self.log("student/skipped_score_updates", self.controller.skipped_score_updates.float(), prog_bar=False)
        if pruned or batch_idx % max(self.trainer.log_every_n_steps, 1) == 0:
            structure = self.controller.structure()
            self.log_dict({
                "student/sparsity": self.controller.sparsity(),
                "student/heads_kept": float(structure["heads_kept"]),
                "student/lr": scheduler.get_last_lr()[0],
            }, prog_bar=False)
        return losses["total"]

    # --- compaction once the masks are frozen ----------------------------------------------------
    def compact_in_place(self, optimizer=None) -> None:
        """Replace the masked student by its compact form; slice the Adam moments with the weights.

        Nothing needs the pruned units once the masks are frozen, so the rest of the run trains the
        small model. Under DDP the wrapped module cannot be swapped: the masked model is kept.
        Without dropout both forms train identically (up to float noise); with dropout they draw
        different random masks, so they match in distribution only.
        """
        if self._trainer is not None and self._trainer.world_size > 1:
            log.warning("pruner.compact_after_end: skipped under DDP (%d processes); training the masked model",
                        self._trainer.world_size)
            self.compact_after_end = False
            return
        old_params = dict(self.student.named_parameters())
        compact, plan = compact_from_masked(self.student, self.controller.masks())
        self.controller.detach()
        self.student = compact
        self.compacted = True
        if optimizer is None:  # restoring a checkpoint: the optimizer is built afterwards
            return
        new_params = dict(compact.named_parameters())
        # the same groups as configure_optimizers (decay / no decay), each with its settings
        new_groups = decay_groups(compact.named_parameters(), self.optim_cfg["weight_decay"], self.projections.parameters())
        new_optimizer = type(optimizer)([
            {**{k: v for k, v in old.items() if k != "params"}, "params": new["params"]}
            for old, new in zip(optimizer.param_groups, new_groups, strict=True)
        ])
        new_optimizer.state.update(slice_optimizer_state(old_params, new_params, plan, optimizer.state))
        for param in self.projections.parameters():
            if param in optimizer.state:
                new_optimizer.state[param] = optimizer.state[param]
        scheduler = self.lr_schedulers()
        scheduler.optimizer = new_optimizer
        self.trainer.strategy.optimizers = [new_optimizer]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["grain_compacted"] = self.compacted

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("grain_compacted") and not self.compacted:
            state = checkpoint["state_dict"]
            for kind, mask in self.controller.masks().items():
                mask.copy_(state[f"controller.mask_{kind}"])
            self.compact_in_place()

    def configure_optimizers(self):
        total_steps = int(self.trainer.estimated_stepping_batches)
        if self.controller.planned_steps == 0:  # a resumed run keeps the saved schedule
            self.controller.set_total_steps(total_steps)
        weight_decay = self.optim_cfg["weight_decay"]
        params = decay_groups(self.student.named_parameters(), weight_decay, self.projections.parameters())
        return adamw_with_linear_schedule(
            params, self.optim_cfg["lr"], weight_decay, self.optim_cfg["warmup_ratio"], total_steps,
            eps=self.optim_cfg.get("adam_eps", 1e-8),
        )
