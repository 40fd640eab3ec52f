"""Importance scores, regularization, ranking, schedule and the controller's bounds."""

import math

import pytest
import torch

from grain.models.masks import EncoderShape, encoder_layers
from grain.pruning.controller import PruningController
from grain.pruning.ranking import prunable_params, removed_unit_params, select_lowest, unit_costs
from grain.pruning.regularization import regularize_updates
from grain.pruning.schedule import CubicSchedule
from tests.helpers.pruning import controller_for

# tiny_bert's units, by hand (h = 32, FFN 48, 2 layers): a QK unit is a Q row and a K row with their biases,
# 2h + 2 = 66 parameters; VO and FFN units 2h + 1 = 65; a head (head_dim 8) 8 x (66 + 65) = 1048; all
# prunable units 2 x (32 x 66 + 32 x 65 + 48 x 65) = 14624
QK_UNIT, HEAD_UNIT, PRUNABLE = 66, 1048, 14624


def mask_grads(model, controller, batch):
    masks = controller.begin_step()
    loss = model(**batch).logits.logsumexp(-1).sum()
    grads = torch.autograd.grad(loss, list(masks.values()))
    return dict(zip(masks, grads)), loss


def test_importance_equals_sum_of_grad_times_weight(tiny_bert, tiny_batch):
    """|dL/dm| of each unit equals |sum(grad * weight)| over that unit's weights (and biases)."""
    controller = controller_for(tiny_bert)
    grads, _ = mask_grads(tiny_bert, controller, tiny_batch)
    tiny_bert.zero_grad()
    controller.begin_step()
    controller._live_masks = None  # plain forward at mask = 1
    tiny_bert(**tiny_batch).logits.logsumexp(-1).sum().backward()
    layer = encoder_layers(tiny_bert)[1]
    # FFN unit j: row j of W1 (+ bias) feeds activation j; its mask sits on W2's input, so
    # dL/dm_j = sum over W2 column j of grad * weight.
    w2 = layer.output.dense.weight
    expected_ffn = (w2.grad * w2).sum(dim=0)
    torch.testing.assert_close(grads["ffn"][1], expected_ffn, atol=1e-5, rtol=1e-4)
    # VO unit j: column j of W_O.
    wo = layer.attention.output.dense.weight
    torch.testing.assert_close(grads["vo"][1], (wo.grad * wo).sum(dim=0), atol=1e-5, rtol=1e-4)
    # QK unit j (scored through the query only): row j of W_Q and its bias.
    wq = layer.attention.self.query
    expected_qk = (wq.weight.grad * wq.weight).sum(dim=1) + wq.bias.grad * wq.bias
    torch.testing.assert_close(grads["qk"][1], expected_qk, atol=1e-5, rtol=1e-4)


def test_importance_matches_finite_difference(tiny_bert, tiny_batch):
    controller = controller_for(tiny_bert)
    grads, _ = mask_grads(tiny_bert, controller, tiny_batch)
    eps = 1e-3
    for kind, unit in (("ffn", 5), ("vo", 3), ("qk", 7)):
        values = []
        for sign in (1, -1):
            controller._live_masks = {k: m.clone() for k, m in controller.masks().items()}
            controller._live_masks[kind][0, unit] += sign * eps
            with torch.no_grad():
                values.append(tiny_bert(**tiny_batch).logits.double().logsumexp(-1).sum())
        numeric = (values[0] - values[1]) / (2 * eps)
        assert float(grads[kind][0, unit]) == pytest.approx(float(numeric), rel=2e-2, abs=1e-4)


def test_ema_update_and_structure_regularization(tiny_bert):
    controller = controller_for(tiny_bert, beta=0.9, structure_reg=True, alpha_head=0.3)
    shape = controller.shape
    controller.mask_vo[0, : shape.head_dim // 2] = 0  # head 0 of layer 0 half gone
    grads = {k: torch.ones_like(m) for k, m in controller.masks().items()}
    controller.update_scores(grads)
    expected_head0 = 0.1 * math.tanh(0.5 / 0.3)
    assert controller.score_vo[0, shape.head_dim - 1].item() == pytest.approx(expected_head0, rel=1e-5)
    assert controller.score_vo[0, shape.head_dim].item() == pytest.approx(0.1 * math.tanh(1 / 0.3), rel=1e-5)
    assert controller.score_qk[0, 0].item() == pytest.approx(0.1)  # QK updates are not rescaled
    assert controller.score_ffn[1, 0].item() == pytest.approx(0.1 * math.tanh(1 / 1e-4), rel=1e-5)


def test_layer_scale_zeroes_updates_of_empty_layers():
    masks = {"qk": torch.ones(2, 8), "vo": torch.ones(2, 8), "ffn": torch.ones(2, 4)}
    masks["ffn"][1] = 0
    updates = {k: torch.ones_like(v) for k, v in masks.items()}
    out = regularize_updates(updates, masks, num_heads=2, alpha_head=0.3, alpha_layer=1e-4)
    assert torch.all(out["ffn"][1] == 0)
    assert torch.allclose(out["ffn"][0], torch.ones(4))


def test_select_lowest_takes_lowest_while_under_budget():
    """As the official `searchsorted(cumsum, budget)`: a unit goes when the cost through it stays
    below the budget, so the removed cost undershoots by less than one unit, never overshoots."""
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    costs = torch.tensor([10.0, 10.0, 10.0, 10.0, 10.0])
    assert select_lowest(scores, costs, 25).tolist() == [False, True, False, True, False]
    assert select_lowest(scores, costs, 20).tolist() == [False, True, False, False, False]
    assert select_lowest(scores, costs, 20.5).tolist() == [False, True, False, True, False]
    assert not select_lowest(scores, costs, 0).any()


def test_ranking_removes_exactly_the_lowest_units(tiny_bert):
    controller = controller_for(tiny_bert)
    g = torch.Generator().manual_seed(3)
    for score in controller.scores().values():
        score.copy_(torch.rand(score.shape, generator=g) + 1.0)
    controller.prune_to(0.3)
    removed_scores, kept_scores = [], []
    for kind in ("vo", "ffn"):  # QK may also go with empty heads; VO/FFN follow the ranking alone
        removed_scores += controller.scores()[kind][controller.masks()[kind] == 0].tolist()
        kept_scores += controller.scores()[kind][controller.masks()[kind] == 1].tolist()
    assert max(removed_scores) < min(kept_scores)
    assert unit_costs(controller.shape) == {"qk": QK_UNIT, "vo": 65, "ffn": 65}
    assert prunable_params(controller.shape) == PRUNABLE


@pytest.mark.parametrize("budget_mode", ["grain", "official"])
@pytest.mark.parametrize("target", [0.3, 0.6, 0.9, 0.97])
def test_achieved_sparsity_bound(tiny_bert, target, budget_mode):
    controller = controller_for(tiny_bert, target_sparsity=target, budget=budget_mode)
    g = torch.Generator().manual_seed(int(target * 100))
    for score in controller.scores().values():
        score.copy_(torch.rand(score.shape, generator=g))
    controller.prune_to(target)
    shape = controller.shape
    budget = target * PRUNABLE
    removed = removed_unit_params(controller.masks(), shape)
    if budget_mode == "grain":  # within one unit below the budget, QK units of emptied heads counted
        assert budget - QK_UNIT < removed < budget
    else:  # official: the prefix stays below the budget, the QK units of emptied heads go on top
        qk_of_empty_heads = sum(
            shape.head_dim for layer in controller.structure()["layers"] for vo in layer["vo_per_head"] if vo == 0
        ) * QK_UNIT
        assert budget - QK_UNIT < removed < budget + qk_of_empty_heads


def test_masks_never_turn_back_on(tiny_bert, tiny_batch):
    controller = controller_for(tiny_bert, target_sparsity=0.8, beta=0.5, structure_reg=True)
    previous = {k: m.clone() for k, m in controller.masks().items()}
    for step in range(10):
        grads, _ = mask_grads(tiny_bert, controller, tiny_batch)
        controller.update_scores(grads)
        controller.end_step()
        for kind, mask in controller.masks().items():
            assert torch.all(mask <= previous[kind])
            previous[kind] = mask.clone()
    budget = 0.8 * PRUNABLE
    assert budget - QK_UNIT < removed_unit_params(controller.masks(), controller.shape) < budget


def test_head_units_remove_whole_heads(tiny_bert):
    controller = controller_for(tiny_bert, units="head", target_sparsity=0.5)
    g = torch.Generator().manual_seed(0)
    for score in controller.scores().values():
        score.copy_(torch.rand(score.shape, generator=g))
    controller.prune_to(0.5)
    for layer in controller.structure()["layers"]:
        for qk, vo in zip(layer["qk_per_head"], layer["vo_per_head"]):
            assert (qk, vo) in ((0, 0), (controller.shape.head_dim,) * 2)
    budget = 0.5 * PRUNABLE  # within one head (the dearest item, ISPruner's head size) below it
    assert budget - HEAD_UNIT < removed_unit_params(controller.masks(), controller.shape) < budget


def test_empty_head_loses_its_qk_units(tiny_bert):
    controller = controller_for(tiny_bert)
    d = controller.shape.head_dim
    controller.mask_vo[1, d : 2 * d] = 0
    controller.prune_to(0.0)
    assert torch.all(controller.mask_qk[1, d : 2 * d] == 0)
    assert torch.all(controller.mask_qk[1, :d] == 1)


def test_cubic_schedule_values():
    """By hand, as airaria/GRAIN: S = int(0.2 * 100) = 20, E = 40; official batches g = 25, 30, 35
    prune (g = 20 at sparsity 0), then grain's final step at g = E; grain step s is batch s + 1."""
    schedule = CubicSchedule.from_fractions(0.9, total_steps=100, start=0.2, end=0.4, frequency=5)
    assert (schedule.start_batch, schedule.end_step) == (20, 39)
    assert schedule.sparsity_at(0) == 0.0
    assert schedule.sparsity_at(19) == 0.0
    assert schedule.sparsity_at(24) == pytest.approx(0.9 * (1 - 0.75**3))
    assert schedule.sparsity_at(29) == pytest.approx(1 - (0.1 + 0.9 * 0.5**3))
    assert schedule.sparsity_at(39) == pytest.approx(0.9)
    assert schedule.sparsity_at(99) == pytest.approx(0.9)
    assert [s for s in range(100) if schedule.prunes_at(s)] == [24, 29, 34, 39]
    truncated = CubicSchedule.from_fractions(0.9, total_steps=37, start=0.2, end=0.4, frequency=1)
    assert (truncated.start_batch, truncated.end_batch) == (7, 14)  # 7.4 and 14.8 truncated, not rounded
    assert [s for s in range(37) if truncated.prunes_at(s)] == [7, 8, 9, 10, 11, 12, 13]


def test_masks_freeze_after_the_schedules_last_pruning_step():
    """The schedule above, run by a controller: it prunes at steps 24, 29, 34 and 39, and its masks are
    frozen (what compacts the student) from step 40 on."""
    controller = PruningController(EncoderShape(1, 4, 2, 2), 0.9, start=0.2, end=0.4, frequency=5)
    controller.set_total_steps(100)
    pruned, frozen = [], []
    for step in range(100):
        frozen.append(controller.is_frozen())
        if controller.end_step():
            pruned.append(step)
    assert pruned == [24, 29, 34, 39]
    assert frozen.index(True) == 40 and all(frozen[40:])
    assert controller.sparsity() <= 0.9 and controller.is_frozen()


def test_short_run_still_reaches_target():
    schedule = CubicSchedule.from_fractions(0.9, total_steps=3, start=0.2, end=0.4)
    assert any(schedule.prunes_at(s) and schedule.sparsity_at(s) == 0.9 for s in range(3))


def test_non_finite_update_leaves_scores_and_counts_the_skip(tiny_bert):
    controller = controller_for(tiny_bert, beta=0.5)
    finite = {k: torch.ones_like(m) for k, m in controller.masks().items()}
    controller.update_scores(finite)
    before = {k: v.clone() for k, v in controller.scores().items()}
    poisoned = {k: torch.ones_like(m) for k, m in controller.masks().items()}
    poisoned["ffn"][1, 3] = float("nan")
    controller.update_scores(poisoned)
    for kind, score in controller.scores().items():
        assert torch.equal(score, before[kind]), kind  # no kind moves, not only the poisoned one
    poisoned["ffn"][1, 3] = float("inf")
    controller.update_scores(poisoned)
    assert int(controller.skipped_score_updates) == 2
    controller.update_scores(finite)
    torch.testing.assert_close(controller.score_qk, torch.full_like(controller.score_qk, 0.75))
    assert int(controller.skipped_score_updates) == 2


def test_step_counters_follow_the_buffers_through_a_checkpoint(tiny_bert):
    """The controller reads its step from a Python mirror (no host sync); a loaded state dict,
    as Lightning restores a checkpoint, brings the mirror along."""
    controller = controller_for(tiny_bert, score="magnitude")
    for _ in range(3):
        controller.end_step()
    assert controller.current_step == int(controller.step) == 3
    state = controller.state_dict()
    restored = controller_for(tiny_bert, score="magnitude")
    restored.set_total_steps(0)
    restored.load_state_dict(state)
    assert (restored.current_step, restored.planned_steps) == (3, 10)
    assert restored.schedule == controller.schedule
    del state["skipped_score_updates"]  # a checkpoint from before the counter existed
    restored.load_state_dict(state)
    assert int(restored.skipped_score_updates) == 0
