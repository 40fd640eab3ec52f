"""Latency-aware selection on seeded scores and a known cost table."""

import torch

from grain.pruning.latency_ranking import marginal_costs, prune_to_latency
from tests.test_latency_model import SHAPE, known_model


def full_masks():
    return {kind: torch.ones(SHAPE.num_layers, n) for kind, n in SHAPE.units_per_layer.items()}


def seeded_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {kind: torch.rand(SHAPE.num_layers, n, generator=g) for kind, n in SHAPE.units_per_layer.items()}


def test_marginal_costs_charge_a_heads_fixed_cost_with_its_last_unit():
    model = known_model()  # head(q, v) = 0.01 q + 0.001 v + 0.05
    masks = full_masks()
    d = SHAPE.head_dim
    masks["vo"][0, 1:d] = 0       # layer 0, head 0: VO width 1 (its last VO unit left)
    masks["vo"][1, d:] = 0        # layer 1: only head 0 left
    costs = marginal_costs(masks, SHAPE, model)
    assert abs(costs["qk"][0, 0] - 0.01) < 1e-12 and abs(costs["vo"][0, d] - 0.001) < 1e-12
    assert abs(costs["vo"][0, 0] - model.head_cost(16, 1)) < 1e-12  # the whole head
    # layer 1's last head also frees its attention sub-layer's base cost: the base is charged once
    assert abs(costs["vo"][1, 0] - 0.001) < 1e-12
    masks["vo"][1, 1:d] = 0
    costs = marginal_costs(masks, SHAPE, model)
    assert abs(costs["vo"][1, 0] - (model.head_cost(16, 1) + 0.5 - 0.1)) < 1e-12
    assert costs["vo"][1, d:].abs().sum() == 0 and costs["qk"][1, d:].abs().sum() == 0  # gone heads: nothing to save


def test_lands_on_the_target_within_one_unit():
    model = known_model()
    dense = model.predict_masks(full_masks(), SHAPE)
    for target in (0.9 * dense, 0.6 * dense, 0.45 * dense):
        masks = full_masks()
        prune_to_latency(seeded_scores(), masks, SHAPE, model, target)
        predicted = model.predict_masks(masks, SHAPE)
        assert target - 0.5 <= predicted <= target, (target, predicted)  # 0.5 ms: the largest single unit here
        heads_without_vo = masks["vo"].view(2, 4, 16).amax(-1) == 0
        assert (masks["qk"].view(2, 4, 16).amax(-1)[heads_without_vo] == 0).all()


def test_prefers_units_that_save_more_time_for_their_importance():
    model = known_model()
    model.ffn_ms = [0.2, 0.2001, 0.2002]  # FFN neurons save (almost) nothing
    scores = {kind: torch.ones(SHAPE.num_layers, n) for kind, n in SHAPE.units_per_layer.items()}
    masks = full_masks()
    prune_to_latency(scores, masks, SHAPE, model, model.predict_masks(masks, SHAPE) - 0.3)
    assert masks["ffn"].all() and masks["qk"].sum() < masks["qk"].numel()


def test_within_equal_costs_the_least_important_go_first():
    model = known_model()
    scores = seeded_scores(3)
    scores["vo"].fill_(1e3)  # keep VO (and so every head)
    scores["ffn"].fill_(1e3)
    masks = full_masks()
    prune_to_latency(scores, masks, SHAPE, model, model.predict_masks(masks, SHAPE) - 0.2)
    removed, kept = scores["qk"][masks["qk"] == 0], scores["qk"][masks["qk"] == 1]
    assert removed.numel() > 0 and removed.max() <= kept.min()
