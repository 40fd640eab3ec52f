"""The layer-dropping baseline (student.keep_layers): the student keeps some of the teacher's layers, is
distilled against the teacher's states after the same layers, and compacts like any student."""

import copy
import json

import pytest
import torch

from grain.errors import GrainError
from grain.models.layer_drop import keep_layers, teacher_hidden_index
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from grain.modules.student import StudentModule
from grain.pruning.controller import PruningController
from grain.report import row_of
from grain.tasks.classification.task import ClassificationTask
from tests.helpers.models import all_kept_masks, tiny_model, token_batch
from tests.helpers.runs import run_grain, summaries


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2"])
def test_kept_layers_are_the_teachers_and_the_rest_gone(family):
    teacher = tiny_model(family, layers=3, dropout=0.0)
    student = copy.deepcopy(teacher)
    keep_layers(student, [0, 2])
    assert EncoderShape.of(student).num_layers == 2 and student.config.num_hidden_layers == 2
    kept = dict(student.named_parameters())
    for name, value in teacher.named_parameters():
        for old, new in ((".0.", ".0."), (".2.", ".1.")):
            if f"layer{old}" in name:
                torch.testing.assert_close(kept[name.replace(f"layer{old}", f"layer{new}")], value)
    inputs = token_batch(pad_id=teacher.config.pad_token_id, token_types=None)
    with torch.no_grad():
        states = student(**inputs, output_hidden_states=True).hidden_states
    assert len(states) == 3
    # with every unit kept, the compact form of the shortened student is the student
    compact, _ = compact_from_masked(student, all_kept_masks(EncoderShape.of(student)))
    assert compact.config.num_hidden_layers == 2 and compact.compaction_max_abs_diff < 1e-5


@pytest.mark.parametrize("keep", [[], [2, 0], [0, 0], [3], [-1]])
def test_bad_layer_lists_are_refused_naming_the_range(keep):
    with pytest.raises(GrainError, match=r"student.keep_layers=.*from 0 to 2 \(the model has 3 layers\)"):
        keep_layers(tiny_model(layers=3), keep)


def test_student_states_are_matched_with_the_teachers_after_the_same_layers():
    assert [teacher_hidden_index([1, 4], i) for i in range(3)] == [0, 2, 5]
    assert [teacher_hidden_index(None, i) for i in range(3)] == [0, 1, 2]
    teacher = tiny_model(layers=6)
    student = copy.deepcopy(teacher)
    keep_layers(student, [1, 4, 5])
    controller = PruningController(EncoderShape.of(student), 0.5)
    distill = {"kd_weight": 1.0, "temperature": 2.0, "hard_label_weight": 0.0, "hidden_weight": 1.0, "hidden_layer_stride": 1}
    optim = {"lr": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    module = StudentModule(student, teacher, controller, ClassificationTask, distill, optim, kept_layers=[1, 4, 5])
    assert module.student_layers == [0, 1, 2, 3] and module.teacher_layers == [0, 2, 5, 6]


def test_a_bad_layer_list_is_refused_at_validation(tmp_path):
    """Before the teacher trains: model=tiny has 2 layers."""
    from grain.config import validate_config
    from tests.helpers.configs import compose_config

    validate_config(compose_config(["model=tiny", "student.keep_layers=[1]", "pruner=none"], tmp_path))
    with pytest.raises(GrainError, match=r"student.keep_layers=\[0, 2\]: .* from 0 to 1 \(the model has 2 layers\)"):
        validate_config(compose_config(["model=tiny", "student.keep_layers=[0,2]", "pruner=none"], tmp_path))


def test_a_layer_dropped_students_sparsity_counts_the_dropped_layers(tmp_path):
    """pruner=none with student.keep_layers=[1] keeps one of model=tiny's two layers: half the teacher's
    prunable and linear parameters are gone, and the run pursues no sparsity target (it reported sparsity 0
    against the target 0.9, and grain.report placed the baseline at sparsity 0); the console says so."""
    args = ["task=sst2", "model=tiny", "trainer.max_steps=3", "logger=csv", "pruner=none", "student.keep_layers=[1]"]
    result = run_grain(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    student = json.loads(path.read_text())["student"]
    assert student["sparsity"] == student["encoder_linear_sparsity"] == 0.5 and student["target_sparsity"] is None
    row = row_of(path)
    assert (row["sparsity"], row["target_sparsity"]) == (0.5, None)
    block = result.stdout[result.stdout.index("grain: sst2 tiny no pruning: completed"):]
    assert f"student  accuracy {student['metric']:.4f}   sparsity 0.5000 (no target), heads 4/4" in block
