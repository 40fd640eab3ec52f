"""The student optimizer of the paper presets (airaria/GRAIN scripts/glue/main.py, squad/main.py):
AdamW eps 1e-6, weight decay 0.01 off biases and LayerNorm weights, 10% linear warmup."""

import pytest
import torch

from grain.modules.common import adamw_with_linear_schedule, decay_groups
from grain.stages.prune import build_student_module
from tests.helpers.configs import compose_config
from tests.helpers.training import make_trainer, setup_parts


@pytest.mark.parametrize("preset", ["paper_glue", "paper_squad", "paper_conll"])
def test_paper_presets_compose_with_the_official_optimizer(preset, tmp_path):
    student = compose_config([f"experiment={preset}"], tmp_path).student
    assert (student.weight_decay, student.warmup_ratio, student.adam_eps) == (0.01, 0.1, 1e-6)
    assert (student.lr, student.batch_size, student.epochs, student.max_grad_norm) == (3e-5, 32, 20, 1.0)


def test_default_optimizer_settings_stay():
    student = compose_config([]).student
    assert (student.weight_decay, student.warmup_ratio, student.adam_eps) == (0.0, 0.0, 1e-8)


def test_adamw_gets_eps_and_warmup():
    layer = torch.nn.Linear(2, 2)
    config = adamw_with_linear_schedule(layer.parameters(), 1e-3, 0.01, 0.1, 100, eps=1e-6)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.param_groups[0]["eps"] == 1e-6
    assert [scheduler.lr_lambdas[0](step) for step in (0, 5, 10, 55)] == pytest.approx([0.0, 0.5, 1.0, 0.5])


def test_decay_groups_leave_biases_layernorm_and_projections_undecayed():
    model = torch.nn.ModuleDict({"dense": torch.nn.Linear(2, 2), "LayerNorm": torch.nn.LayerNorm(2)})
    projection = torch.nn.Linear(2, 2)
    decay, no_decay = decay_groups(model.named_parameters(), 0.01, projection.parameters())
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [p is model["dense"].weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {
        id(model["dense"].bias), id(model["LayerNorm"].weight), id(model["LayerNorm"].bias),
        id(projection.weight), id(projection.bias),
    }


def test_student_optimizer_keeps_eps_and_decay_groups_through_compaction(tmp_path):
    overrides = ["student.adam_eps=1e-6", "student.weight_decay=0.01", "student.warmup_ratio=0.1", "pruner.end=0.3"]
    cfg, datamodule, teacher = setup_parts(tmp_path, overrides)
    module = build_student_module(cfg, teacher, 2)
    make_trainer(tmp_path, max_epochs=1).fit(module, datamodule=datamodule)
    assert module.compacted
    optimizer = module.optimizers().optimizer
    names = {id(p): n for n, p in module.student.named_parameters()}
    decay, no_decay = optimizer.param_groups
    assert decay["eps"] == no_decay["eps"] == 1e-6
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    decayed = [names[id(p)] for p in decay["params"]]
    assert decayed and all(not n.endswith("bias") and "LayerNorm" not in n for n in decayed)
    assert {id(p) for p in module.projections.parameters()} <= {id(p) for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names) + len(list(module.projections.parameters()))
