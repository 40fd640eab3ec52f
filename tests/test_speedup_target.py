"""Pruning to a speed: `speedup=` as the target, `pruner.cost=latency`, and their refusals."""

import json
from pathlib import Path

import pytest
import torch

from grain.config import validate_config, validate_target
from grain.errors import GrainError
from grain.measure.latency_model import cache_path, check_reachable, model_key
from grain.pipeline import results_block, target_outcome
from grain.pruning.controller import PruningController
from grain.target import Target
from tests.helpers.configs import compose_config
from tests.helpers.latency import SHAPE, known_model
from tests.helpers.pruning import seeded_scores
from tests.helpers.runs import TINY_RUN_SHAPE, run_grain, summaries


@pytest.mark.parametrize("overrides,message", [
    (["sparsity=0.9", "speedup=8"], "both given"),
    (["pruner.cost=latency"], "give speedup=<x>"),
    (["speedup=1"], "not a number above 1"),
    (["speedup=8", "pruner.cost=flops"], "pruner.cost='flops'"),
])
def test_targets_are_refused_in_one_line(overrides, message):
    with pytest.raises(GrainError, match=message):
        validate_config(compose_config(overrides))


def test_speedup_alone_and_with_latency_cost_validate(tmp_path):
    validate_config(compose_config(["speedup=8"], tmp_path))
    validate_config(compose_config(["speedup=8", "pruner.cost=latency"], tmp_path))


@pytest.mark.parametrize("cost", ["params", "latency"])
def test_controller_reaches_the_predicted_speedup(cost):
    model = known_model()
    controller = PruningController(SHAPE, 0.0, score="random", cost=cost, target_speedup=1.5, latency_model=model,
                                   start=0.0, end=0.0)
    controller.set_total_steps(1)
    assert controller.active and controller.schedule_target == pytest.approx(1 / 3)
    for kind, score in seeded_scores(SHAPE).items():
        getattr(controller, f"score_{kind}").copy_(score)
    assert controller.end_step()  # one-shot, to the target
    dense = model.dense_ms()
    predicted = model.predict_masks(controller.masks(), SHAPE)
    assert dense / 1.5 - 0.5 <= predicted <= dense / 1.5  # within the largest unit's cost (0.5 ms here)
    assert controller.predicted_speedup() == pytest.approx(dense / predicted)


@pytest.mark.parametrize("cost", ["params", "latency"])
def test_predicted_speedup_divides_the_measured_dense_model(cost):
    """The target and the predicted speedup are over the dense model as the compact stage measures
    it (the latency model's dense_latency_ms), not over the predicted compact form of the unpruned
    model: predicted and measured speedups share a denominator."""
    model = known_model()
    model.dense_latency_ms = 0.8 * model.compact_dense_ms()
    controller = PruningController(SHAPE, 0.0, score="random", cost=cost, target_speedup=1.5, latency_model=model,
                                   start=0.0, end=0.0)
    controller.set_total_steps(1)
    for kind, score in seeded_scores(SHAPE).items():
        getattr(controller, f"score_{kind}").copy_(score)
    assert controller.end_step()
    predicted = model.predict_masks(controller.masks(), SHAPE)
    assert model.dense_latency_ms / 1.5 - 0.5 <= predicted <= model.dense_latency_ms / 1.5
    assert controller.predicted_speedup() == pytest.approx(model.dense_latency_ms / predicted)


def test_latency_cost_keeps_more_importance_at_equal_predicted_latency():
    """On the known table heads are dear and FFN neurons cheap in latency: charging latency keeps more
    importance at the same predicted speed than charging parameters."""
    model = known_model()
    model.ffn_ms = [0.2, 0.21, 0.22]
    kept = {}
    for cost in ("params", "latency"):
        controller = PruningController(SHAPE, 0.0, score="grad", cost=cost, target_speedup=1.4, latency_model=model)
        for kind, score in seeded_scores(SHAPE, 1).items():
            getattr(controller, f"score_{kind}").copy_(score)
        controller.prune_to_latency(model.dense_ms() / 1.4)
        kept[cost] = sum(float((s * m).sum()) for s, m in zip(controller.scores().values(), controller.masks().values()))
    assert kept["latency"] > kept["params"]


def test_tiny_run_to_a_speed(tmp_path):
    """A run to speedup=1.5 on the latency model cached for its device and shape (the known one, planted:
    what pruning reaches must not depend on how fast the test machine's overhead is; measuring is
    test_latency_model's); the compact model is still timed for real, at 4 x 32."""
    planted = known_model(shape=TINY_RUN_SHAPE)
    planted.key = model_key(TINY_RUN_SHAPE, torch.device("cpu"), torch.float32, 4, 32, "bert")
    planted.measurement = {"cpu_share": 0.99, "spread": 0.05, "fit_error": 0.04, "on": "test, cpu", "at": "planted"}
    planted.save(cache_path(tmp_path / ".cache" / "grain", planted.key))
    # the default sparsity dropped ('~sparsity'): nothing of the run needs it
    result = run_grain(["model=tiny", "speedup=1.5", "~sparsity", "pruner.cost=latency", "trainer.max_steps=8",
                        "logger=csv", "compact.bench_batch=4", "compact.bench_seq_len=32"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "latency model from" in result.stdout + result.stderr  # the cached one, not measured again
    [path] = summaries(tmp_path)
    assert path.parent.parent.name == "x1.5"
    summary = json.loads(path.read_text())
    assert (summary["speedup"], summary["sparsity"]) == (1.5, None)
    # where the latency model was measured and how well it checked out; whether the target was met
    assert summary["student"]["latency_model"] == planted.measurement
    assert summary["target_measure"] == "compact.speedup" and summary["target_reached"] == summary["compact"]["speedup"]
    assert summary["target_missed"] == (summary["compact"]["speedup"] < 0.9 * 1.5)
    card = (path.parent / "compact" / "README.md").read_text()
    assert "pruned with GRAIN to speedup 1.5x" in card and "target / achieved speedup | 1.5 /" in card
    assert "sparsity 0.9" not in card and "| 0.9 /" not in card  # the unused default sparsity nowhere
    student, compact = summary["student"], summary["compact"]
    assert student["target_speedup"] == 1.5 and student["cost"] == "latency" and student["target_sparsity"] is None
    assert 1.5 - 1e-9 <= student["predicted_speedup"] <= 1.7  # at the target, past it by at most a unit or two
    assert compact["predicted_speedup"] == student["predicted_speedup"] and compact["speedup"] > 0
    assert (compact["batch"], compact["seq_len"]) == (4, 32)


def test_the_target_names_the_run_dir_the_wandb_run_and_its_tag(tmp_path):
    """One target object: with speedup=2 the run dir, the W&B run name and tag say x2, whatever the
    (unused) default sparsity; with a sparsity they say s<sparsity>; no target at all is one line."""
    for overrides, label in ((["speedup=2"], "x2"), (["speedup=2", "~sparsity"], "x2"), (["sparsity=0.95"], "s0.95")):
        cfg = compose_config(["logger=wandb", *overrides], tmp_path)
        assert str(validate_target(cfg)) == (f"speedup {label[1:]}x" if label[0] == "x" else f"sparsity {label[1:]}")
        assert Path(cfg.hydra.run.dir).parent.name == label
        assert cfg.logger.name.endswith(f"-{label}") and label in cfg.logger.tags
    with pytest.raises(GrainError, match=r"no target: give sparsity=<fraction> .* or speedup=<x>"):
        validate_target(compose_config(["~sparsity"], tmp_path))


@pytest.mark.parametrize("cost", ["params", "latency"])
def test_a_speed_target_never_prunes_the_model_to_nothing(cost):
    """Asked for less than the fixed part (a poisoned latency model made 4x look so on model=tiny), the
    pruner used to remove every head and FFN neuron; the most important VO unit and FFN neuron stay."""
    model = known_model()
    controller = PruningController(SHAPE, 0.0, score="grad", cost=cost, target_speedup=1.5, latency_model=model)
    scores = seeded_scores(SHAPE)
    for kind, score in scores.items():
        getattr(controller, f"score_{kind}").copy_(score)
    controller.prune_to_latency(0.5 * model.fixed_ms)  # below what any structure costs
    masks = controller.masks()
    assert int(masks["vo"].sum()) == 1 and int(masks["ffn"].sum()) == 1 and controller.structure()["heads_kept"] == 1
    assert masks["vo"].flatten().argmax() == scores["vo"].flatten().argmax()
    assert masks["ffn"].flatten().argmax() == scores["ffn"].flatten().argmax()


def test_an_unreachable_speed_target_is_refused_from_the_latency_models_floor(tmp_path):
    """speedup=1000 (beyond one head and one FFN neuron per layer) ran to a near-empty model without a
    word; the floor's predicted speedup bounds what a target may ask, checked before training (at
    validation when the device's latency model is cached)."""
    model = known_model()
    ceiling = model.dense_ms() / model.predict([[1], [1]], [[1], [1]], [1, 1])
    assert model.max_speedup() == pytest.approx(ceiling)
    check_reachable(model, 0.99 * ceiling)
    with pytest.raises(GrainError, match=rf"speedup=1000 is beyond .* at most {ceiling:.1f}x, .* give speedup="):
        check_reachable(model, 1000)

    cfg = compose_config(["model=tiny", "speedup=1000", "compact.bench_batch=4", "compact.bench_seq_len=16"], tmp_path)
    validate_config(cfg)  # no latency model cached yet: the prune stage measures and checks it
    model.save(cache_path(tmp_path / "cache", model.key))  # known_model: model=tiny's shape, CPU, 4 x 16
    with pytest.raises(GrainError, match="speedup=1000 is beyond"):
        validate_config(cfg)


def test_a_missed_target_is_said_in_the_summary_and_the_results_block():
    """A run short of its target by more than 10% says so (target_missed), where it ended (target_reached)
    and in which measure, in summary.json and the results block."""
    speed = Target("speedup", 4.0)
    summary = {"task": "sst2", "model": "tiny", "speedup": 4.0, "status": "completed",
               "student": {"predicted_speedup": 4.02}, "compact": {"speedup": 2.91}}
    summary.update(target_outcome(speed, summary))
    assert (summary["target_missed"], summary["target_reached"], summary["target_measure"]) == (True, 2.91, "compact.speedup")
    assert "MISSED: speedup 4.0 asked, 2.91 reached (compact.speedup, more than 10% short)" in results_block(summary)
    assert target_outcome(speed, {"student": {"predicted_speedup": 3.7}})["target_missed"] is False  # within 10%
    # pruner=none (the layer-dropping baseline) pursues no target: nothing is missed
    assert target_outcome(Target("sparsity", 0.9), {"student": {"sparsity": 0.0}}, prunes=False)["target_missed"] is False
    assert target_outcome(Target("sparsity", 0.9), {"student": {"sparsity": 0.8986}}) == {
        "target_reached": 0.8986, "target_measure": "student.sparsity", "target_missed": False}
