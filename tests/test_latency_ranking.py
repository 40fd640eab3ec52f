"""Latency-aware selection on seeded scores and a known cost table: exact savings over the plan's
groups, savings that add up, fixed costs charged once, runs through steps that save nothing."""

import random

import torch

from grain.pruning.latency_ranking import head_unit_cost, marginal_costs, prune_to_latency
from tests.test_latency_model import SHAPE, head, known_model

D = SHAPE.head_dim


def full_masks():
    return {kind: torch.ones(SHAPE.num_layers, n) for kind, n in SHAPE.units_per_layer.items()}


def seeded_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {kind: torch.rand(SHAPE.num_layers, n, generator=g) for kind, n in SHAPE.units_per_layer.items()}


def set_widths(masks, layer, qk, vo):
    """Layer `layer`'s heads keep their first qk[h] QK and vo[h] VO units."""
    for kind, widths in (("qk", qk), ("vo", vo)):
        masks[kind][layer] = 0
        for h, w in enumerate(widths):
            masks[kind][layer, h * D:h * D + w] = 1


def test_savings_follow_the_groups():
    model = known_model()  # group call 0.03, grouped part 0.07, uniform part 0.02, base 0.5, empty 0.1
    masks = full_masks()
    set_widths(masks, 0, [4, 4, 8, 8], [3, 2, 2, 5])
    costs = marginal_costs(masks, SHAPE, model)
    # head 0 (4, 3) -> (4, 2) joins head 1's group: its own call goes
    assert abs(costs["vo"][0, 0] - (head(4, 3) - head(4, 2) + 0.03)) < 1e-12
    # head 1 (4, 2) -> (4, 1) leaves a width of its own for another width of its own: no call saved
    assert abs(costs["vo"][0, D] - (head(4, 2) - head(4, 1))) < 1e-12
    # head 2 (8, 2) -> (4, 2) by QK would join head 1, but one QK unit gives (7, 2): a new width, same call count
    assert abs(costs["qk"][0, 2 * D] - (head(8, 2) - head(7, 2))) < 1e-12
    set_widths(masks, 1, [4, 4, 0, 0], [2, 2, 0, 0])
    costs = marginal_costs(masks, SHAPE, model)
    # leaving a shared group for a width of its own opens a call: it can cost time
    assert abs(costs["vo"][1, 0] - (head(4, 2) - head(4, 1) - 0.03)) < 1e-12


def test_a_heads_fixed_cost_is_charged_once_with_its_last_unit():
    model = known_model()
    masks = full_masks()
    set_widths(masks, 0, [16, 16, 16, 16], [1, 16, 16, 16])  # head 0: its last VO unit left, a group of its own
    set_widths(masks, 1, [16, 0, 0, 0], [2, 0, 0, 0])        # layer 1: one head left
    costs = marginal_costs(masks, SHAPE, model)
    assert abs(costs["qk"][0, 0] - (head(16, 1) - head(15, 1))) < 1e-12
    assert abs(costs["vo"][0, 0] - (head(16, 1) + 0.03)) < 1e-12  # the whole head and its call; its QK go too
    # another head's unit pays no head cost; leaving its group of three for a width of its own opens a call
    assert abs(costs["vo"][0, D] - (head(16, 16) - head(16, 15) - 0.03)) < 1e-12
    assert costs["vo"][1, D:].abs().sum() == 0 and costs["qk"][1, D:].abs().sum() == 0  # gone heads: nothing to save


def test_an_emptied_sublayer_frees_its_fixed_cost():
    model = known_model()
    masks = full_masks()
    set_widths(masks, 1, [16, 0, 0, 0], [1, 0, 0, 0])  # one head, one VO unit: the layer's last
    costs = marginal_costs(masks, SHAPE, model)
    freed = 0.5 + 0.07 + 0.03 + head(16, 1) - 0.1  # base, grouped part, call, head, less the empty sub-layer
    assert abs(costs["vo"][1, 0] - freed) < 1e-12
    set_widths(masks, 1, [0, 0, 0, 0], [1, 0, 0, 0])  # a uniform head, the layer's last
    costs = marginal_costs(masks, SHAPE, model)
    assert abs(costs["vo"][1, 0] - (0.5 + 0.02 + head(0, 1) - 0.1)) < 1e-12


def test_savings_add_up_to_the_predicted_change():
    """Removing units one at a time in any order, each saving (exact for the structure at that
    moment) sums to the predicted latency before minus after."""
    model = known_model()
    rng = random.Random(0)
    masks = full_masks()
    start, saved = model.predict_masks(masks, SHAPE), 0.0
    for _ in range(400):
        costs = marginal_costs(masks, SHAPE, model)
        kind = rng.choice(["qk", "vo", "ffn"])
        layer = rng.randrange(SHAPE.num_layers)
        kept = masks[kind][layer].nonzero().flatten().tolist()
        if kind == "qk":  # QK units of gone heads are not units of the compact model
            kept = [u for u in kept if masks["vo"][layer, u // D * D:(u // D + 1) * D].any()]
        if not kept:
            continue
        unit = rng.choice(kept)
        saved += float(costs[kind][layer, unit])
        masks[kind][layer, unit] = 0
        if kind == "vo" and not masks["vo"][layer, unit // D * D:(unit // D + 1) * D].any():
            masks["qk"][layer, unit // D * D:(unit // D + 1) * D] = 0
        assert abs(start - saved - model.predict_masks(masks, SHAPE)) < 1e-9


def test_lands_on_the_target_within_one_run_and_keeps_exact_books():
    model = known_model()
    dense = model.predict_masks(full_masks(), SHAPE)
    for target in (0.9 * dense, 0.6 * dense, 0.45 * dense):
        masks = full_masks()
        predicted = prune_to_latency(seeded_scores(), masks, SHAPE, model, target)
        assert abs(predicted - model.predict_masks(masks, SHAPE)) < 1e-9  # the books kept along the way
        assert target - 0.5 <= predicted <= target, (target, predicted)  # 0.5 ms: more than any run here
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
    model.group_ms = 0.0  # every QK unit saves the same (no call opened by leaving a group)
    scores = seeded_scores(3)
    scores["vo"].fill_(1e3)  # keep VO (and so every head)
    scores["ffn"].fill_(1e3)
    masks = full_masks()
    prune_to_latency(scores, masks, SHAPE, model, model.predict_masks(masks, SHAPE) - 0.2)
    removed, kept = scores["qk"][masks["qk"] == 0], scores["qk"][masks["qk"] == 1]
    assert removed.numel() > 0 and removed.max() <= kept.min()


def test_runs_cross_steps_that_save_nothing_alone():
    """The FFN runs at a multiple of 8 columns: one neuron alone saves nothing, a run of 8 saves a
    step. Where FFN neurons are the cheapest importance, the selection takes them in runs."""
    model = known_model()
    scores = {kind: torch.full((SHAPE.num_layers, n), 1e3) for kind, n in SHAPE.units_per_layer.items()}
    scores["ffn"] = seeded_scores(5)["ffn"]
    masks = full_masks()
    masks["ffn"][:, 121:] = 0  # 121 kept (run at 128 columns): removing one saves a step
    assert marginal_costs(masks, SHAPE, model)["ffn"][0, 0] == model.ffn_cost(121) - model.ffn_cost(120) > 0
    masks["ffn"][:, 120:] = 0  # 120 kept: removing one neuron leaves 119, still run at 120 columns
    assert marginal_costs(masks, SHAPE, model)["ffn"][0, 0] == 0
    target = model.predict_masks(masks, SHAPE) - 0.1
    predicted = prune_to_latency(scores, masks, SHAPE, model, target)
    assert predicted <= target and masks["qk"].all() and masks["vo"].all()  # no head unit was needed
    assert all(int(w) % 8 == 0 for w in masks["ffn"].sum(-1))  # whole steps only


def test_a_qk_width_of_one_keeps_its_slot():
    """QK width 2 -> 1 saves nothing on CPU (the slot stays 2); a head whose QK units are its least
    important still loses them, in one run down to a uniform head, when that pays."""
    model = known_model()
    assert head_unit_cost(model, [2, 16], [4, 16], 0, "qk") == 0.0
    assert head_unit_cost(model, [2, 16], [4, 16], 0, "qk", count=2) > 0
    scores = {kind: torch.full((SHAPE.num_layers, n), 1e3) for kind, n in SHAPE.units_per_layer.items()}
    masks = full_masks()
    set_widths(masks, 0, [2, 16, 16, 16], [4, 16, 16, 16])
    scores["qk"][0, 0:2] = 0.001
    before = model.predict_masks(masks, SHAPE)
    prune_to_latency(scores, masks, SHAPE, model, before - 0.001)
    assert masks["qk"][0, 0:2].sum() == 0 and masks["vo"][0, 0:4].sum() == 4
