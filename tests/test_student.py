"""The student module on a tiny model: gradient separation, resume, two-process DDP."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from grain.stages.prune import build_student_module
from grain.stages.trainer import StepProgressBar, build_trainer
from tests.helpers.pruning import sparsity_bound
from tests.helpers.training import make_trainer, setup_parts


def scores_after_one_step(tmp_path, overrides):
    cfg, datamodule, teacher = setup_parts(tmp_path, overrides)
    module = build_student_module(cfg, teacher, 2)
    make_trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule)
    return {k: v.clone() for k, v in module.controller.scores().items()}


def test_gradient_separation_keeps_hidden_loss_out_of_scores(tmp_path):
    base = scores_after_one_step(tmp_path, ["distillation.hidden_weight=1.0"])
    heavier_hidden = scores_after_one_step(tmp_path, ["distillation.hidden_weight=50.0"])
    assert base["ffn"].abs().sum() > 0
    for kind in base:
        torch.testing.assert_close(base[kind], heavier_hidden[kind], rtol=0, atol=0)
    # the switch works: without separation the hidden loss reaches the scores
    mixed = scores_after_one_step(tmp_path, ["distillation.hidden_weight=50.0", "pruner.gradient_separation=false"])
    assert not torch.allclose(mixed["ffn"], base["ffn"])


def test_training_prunes_to_target_and_logs(tmp_path):
    cfg, datamodule, teacher = setup_parts(tmp_path)
    module = build_student_module(cfg, teacher, 2)
    trainer = make_trainer(tmp_path)
    trainer.fit(module, datamodule=datamodule)
    controller = module.controller
    assert int(controller.step) == 24  # 64 examples / 8 per batch * 3 epochs
    assert sparsity_bound(0.6, controller.shape, controller.units) <= controller.sparsity() <= 0.6
    assert controller.is_frozen()
    logged = trainer.callback_metrics
    assert logged["student/skipped_score_updates"] == 0
    assert float(logged["student/sparsity"]) == pytest.approx(controller.sparsity())


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resume_mid_pruning_reproduces_masks(tmp_path):
    cfg, datamodule, teacher = setup_parts(tmp_path)
    uninterrupted = build_student_module(cfg, teacher, 2)
    make_trainer(tmp_path).fit(uninterrupted, datamodule=datamodule)

    first = build_student_module(cfg, teacher, 2)
    trainer = make_trainer(tmp_path, callbacks=[StopAfterFirstEpoch()])
    trainer.fit(first, datamodule=datamodule)
    assert int(first.controller.step) == 8  # stopped inside the pruning window (steps 5..14)
    assert 0 < first.controller.sparsity() < 0.6
    checkpoint = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(checkpoint)

    resumed = build_student_module(cfg, teacher, 2)
    make_trainer(tmp_path).fit(resumed, datamodule=datamodule, ckpt_path=str(checkpoint))
    assert int(resumed.controller.step) == 24
    for kind, mask in uninterrupted.controller.masks().items():
        assert torch.equal(mask, resumed.controller.masks()[kind]), kind
        torch.testing.assert_close(uninterrupted.controller.scores()[kind], resumed.controller.scores()[kind])


class SaveMasksPerRank(pl.Callback):
    def __init__(self, out_dir):
        self.out_dir = str(out_dir)

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {k: v.cpu() for k, v in pl_module.controller.masks().items()},
            Path(self.out_dir) / f"masks_rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow  # two spawned processes
def test_two_process_ddp_gives_identical_masks(tmp_path):
    cfg, datamodule, teacher = setup_parts(tmp_path)
    module = build_student_module(cfg, teacher, 2)
    trainer = make_trainer(
        tmp_path, max_epochs=2, callbacks=[SaveMasksPerRank(tmp_path)], strategy="ddp_spawn", devices=2,
    )
    trainer.fit(module, datamodule=datamodule)
    rank0 = torch.load(tmp_path / "masks_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "masks_rank1.pt", weights_only=True)
    assert any((m == 0).any() for m in rank0.values())
    for kind in rank0:
        assert torch.equal(rank0[kind], rank1[kind]), kind


def test_compacting_during_training_changes_nothing_but_size(tmp_path):
    """Training after the masks freeze gives the same model whether or not it was compacted.
    (Without dropout: with it, the two forms draw different random masks.)"""
    outputs = {}
    no_dropout = ["+model.random_config.hidden_dropout_prob=0.0", "+model.random_config.attention_probs_dropout_prob=0.0"]
    for compact in (False, True):
        cfg, datamodule, teacher = setup_parts(tmp_path, [f"pruner.compact_after_end={str(compact).lower()}", *no_dropout])
        module = build_student_module(cfg, teacher, 2)
        make_trainer(tmp_path).fit(module, datamodule=datamodule)
        assert module.compacted is compact
        batch = next(iter(datamodule.eval_dataloader("validation")))
        with torch.no_grad():
            outputs[compact] = module.student.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if compact:
            dense = sum(p.numel() for p in teacher.parameters())
            assert sum(p.numel() for p in module.student.parameters()) < dense
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-4, rtol=1e-4)


def test_resume_after_compaction(tmp_path):
    cfg, datamodule, teacher = setup_parts(tmp_path, ["pruner.end=0.3"])
    first = build_student_module(cfg, teacher, 2)
    trainer = make_trainer(tmp_path, callbacks=[StopAfterFirstEpoch()], max_epochs=3)
    trainer.fit(first, datamodule=datamodule)
    assert first.compacted  # pruning ended at step 7, inside the first epoch
    trainer.save_checkpoint(tmp_path / "compacted.ckpt")
    resumed = build_student_module(cfg, teacher, 2)
    make_trainer(tmp_path).fit(resumed, datamodule=datamodule, ckpt_path=str(tmp_path / "compacted.ckpt"))
    assert resumed.compacted and int(resumed.controller.step) == 24
    for kind, mask in first.controller.masks().items():
        assert torch.equal(mask, resumed.controller.masks()[kind])


def test_the_terminal_bar_counts_the_steps_that_will_run(tmp_path, capsys):
    """trainer.progress=bar: one bar over the optimizer steps the stage runs (6 here, a step cap under 20
    epochs), titled by the stage, not Lightning's per-epoch bar (`Epoch 0`, an epoch count the cap never
    reaches)."""
    cfg, datamodule, teacher = setup_parts(tmp_path, ["trainer.progress=bar", "student.max_steps=6", "student.epochs=20"])
    module = build_student_module(cfg, teacher, datamodule.num_labels)
    trainer = build_trainer(cfg, cfg.student, tmp_path / "student", logger=None, limit_val_batches=0)
    [bar] = [c for c in trainer.callbacks if isinstance(c, StepProgressBar)]
    trainer.fit(module, datamodule=datamodule)
    shown = capsys.readouterr().out  # where Lightning draws its bars
    assert "student: 100%" in shown and " 6/6 " in shown
    assert "Epoch" not in shown and bar.train_progress_bar.n == 6


@pytest.mark.parametrize("model_name", ["tiny", "tiny-modernbert"])
def test_student_dropout_zero_makes_its_training_forward_its_eval_forward(model_name, tmp_path):
    """student.dropout=0: the student distils without dropout noise (its training-mode forward is its
    eval-mode one), ModernBERT's attention dropout included; the teacher is left as it is; a value
    outside [0, 1) is refused in one line."""
    from transformers import AutoModelForSequenceClassification

    from grain.config import validate_config
    from grain.errors import GrainError
    from grain.models.backbone import load_task_model
    from grain.stages.prune import init_student
    from tests.helpers.configs import compose_config
    from tests.helpers.models import token_batch

    cfg = compose_config([f"model={model_name}", "student.dropout=0", "student.init=teacher"], tmp_path)
    teacher = load_task_model(cfg.model, AutoModelForSequenceClassification, 2)
    for module in teacher.modules():  # dropout everywhere, also where the tiny config says 0
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.5
    student = init_student(cfg, teacher, 2)
    inputs = token_batch((3, 12), lengths=[12, 9, 5], token_types=None)
    with torch.no_grad():
        trained, evaluated = student.train()(**inputs).logits, student.eval()(**inputs).logits
        torch.testing.assert_close(trained, evaluated)
        torch.manual_seed(0)
        noisy = teacher.train()(**inputs).logits
        assert not torch.allclose(noisy, teacher.eval()(**inputs).logits)  # the teacher keeps its dropout
    with pytest.raises(GrainError, match=r"student.dropout=1.0 is not a number in \[0.0, 1.0\)") as err:
        validate_config(compose_config(["model=tiny", "student.dropout=1.0"], tmp_path))
    assert "\n" not in str(err.value)
