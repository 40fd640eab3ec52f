"""Latency-aware selection on seeded scores and a known cost table: exact savings over the plan's
groups, savings that add up, fixed costs charged once, runs through steps that save nothing.

The savings are those prune_to_latency prices its candidates with (`_State.price`: the next run of a
head's QK or VO units, or of a layer's FFN neurons, the fewest whose removal saves time)."""

import random

import pytest
import torch

from grain.pruning.latency_ranking import _State, prune_to_latency
from tests.helpers.latency import SHAPE, head, known_model
from tests.helpers.models import all_kept_masks
from tests.helpers.pruning import seeded_scores

D = SHAPE.head_dim


def set_widths(masks, layer, qk, vo):
    """Layer `layer`'s heads keep their first qk[h] QK and vo[h] VO units."""
    for kind, widths in (("qk", qk), ("vo", vo)):
        masks[kind][layer] = 0
        for h, w in enumerate(widths):
            masks[kind][layer, h * D:h * D + w] = 1


def next_run(masks, model, kind, layer, head=None, scores=None):
    """(importance lost, ms saved, units) of the run prune_to_latency would price next for `head`'s
    `kind` units (or, `kind` "ffn", the layer's neurons); None where there is nothing to remove."""
    return _State(seeded_scores(SHAPE) if scores is None else scores, masks, SHAPE).price(model, kind, layer, head)


def saved_and_units(run):
    _, saved, units = run
    return saved, units


def test_savings_follow_the_groups():
    model = known_model()  # group call 0.03, grouped part 0.07, uniform part 0.02, base 0.5, empty 0.1
    masks = all_kept_masks(SHAPE)
    set_widths(masks, 0, [4, 4, 8, 8], [3, 2, 2, 5])
    # head 0 (4, 3) -> (4, 2) joins head 1's group: its own call goes
    saved, units = saved_and_units(next_run(masks, model, "vo", 0, 0))
    assert units == 1 and abs(saved - (head(4, 3) - head(4, 2) + 0.03)) < 1e-12
    # head 1 (4, 2) -> (4, 1) leaves a width of its own for another width of its own: no call saved
    saved, units = saved_and_units(next_run(masks, model, "vo", 0, 1))
    assert units == 1 and abs(saved - (head(4, 2) - head(4, 1))) < 1e-12
    # head 2 (8, 2) -> (4, 2) by QK would join head 1, but one QK unit gives (7, 2): a new width, same call count
    saved, units = saved_and_units(next_run(masks, model, "qk", 0, 2))
    assert units == 1 and abs(saved - (head(8, 2) - head(7, 2))) < 1e-12
    set_widths(masks, 1, [4, 4, 0, 0], [2, 2, 0, 0])
    # leaving a shared group for a width of its own opens a call: one unit would cost time, so the run
    # takes the head's two VO units, the head goes and its group stays with head 1
    assert head(4, 2) - head(4, 1) - 0.03 < 0
    saved, units = saved_and_units(next_run(masks, model, "vo", 1, 0))
    assert units == 2 and abs(saved - head(4, 2)) < 1e-12


def test_a_heads_fixed_cost_is_charged_once_with_its_last_unit():
    model = known_model()
    masks = all_kept_masks(SHAPE)
    set_widths(masks, 0, [16, 16, 16, 16], [1, 16, 16, 16])  # head 0: its last VO unit left, a group of its own
    set_widths(masks, 1, [16, 0, 0, 0], [2, 0, 0, 0])        # layer 1: one head left
    scores = seeded_scores(SHAPE)
    saved, units = saved_and_units(next_run(masks, model, "qk", 0, 0))
    assert units == 1 and abs(saved - (head(16, 1) - head(15, 1))) < 1e-12
    # the whole head and its call; its QK units go too, their importance lost with it
    lost, saved, units = next_run(masks, model, "vo", 0, 0, scores)
    assert units == 1 and abs(saved - (head(16, 1) + 0.03)) < 1e-12
    assert abs(lost - float(scores["vo"][0, 0].double() + scores["qk"][0, :D].double().sum())) < 1e-9
    # another head's unit pays no head cost; leaving its group of three for a width of its own opens a
    # call, so its run goes on to (16, 1), head 0's width: 15 units, no call opened
    saved, units = saved_and_units(next_run(masks, model, "vo", 0, 1))
    assert units == 15 and abs(saved - (head(16, 16) - head(16, 1))) < 1e-12
    for kind in ("vo", "qk"):  # gone heads: nothing to save
        assert next_run(masks, model, kind, 1, 1) is None


def test_an_emptied_sublayer_frees_its_fixed_cost():
    model = known_model()
    masks = all_kept_masks(SHAPE)
    set_widths(masks, 1, [16, 0, 0, 0], [1, 0, 0, 0])  # one head, one VO unit: the layer's last
    freed = 0.5 + 0.07 + 0.03 + head(16, 1) - 0.1  # base, grouped part, call, head, less the empty sub-layer
    saved, units = saved_and_units(next_run(masks, model, "vo", 1, 0))
    assert units == 1 and abs(saved - freed) < 1e-12
    set_widths(masks, 1, [0, 0, 0, 0], [1, 0, 0, 0])  # a uniform head, the layer's last
    saved, units = saved_and_units(next_run(masks, model, "vo", 1, 0))
    assert units == 1 and abs(saved - (0.5 + 0.02 + head(0, 1) - 0.1)) < 1e-12


def test_savings_add_up_to_the_predicted_change():
    """Removing runs one at a time in any order, each saving (exact for the structure at that
    moment) sums to the predicted latency before minus after."""
    model = known_model()
    rng = random.Random(0)
    masks = all_kept_masks(SHAPE)
    state = _State(seeded_scores(SHAPE), masks, SHAPE)
    start, saved, runs = model.predict_masks(masks, SHAPE), 0.0, 0
    for _ in range(400):
        kind = rng.choice(["qk", "vo", "ffn"])
        layer = rng.randrange(SHAPE.num_layers)
        head_index = None if kind == "ffn" else rng.randrange(SHAPE.num_heads)
        priced = state.price(model, kind, layer, head_index)
        if priced is None:
            continue
        _, run_saved, units = priced
        state.remove(kind, layer, head_index, units)
        saved += run_saved
        runs += 1
        now = {k: m.clone() for k, m in masks.items()}
        for k, removed in state.removed.items():
            for removed_layer, unit in removed:
                now[k][removed_layer, unit] = 0
        assert abs(start - saved - model.predict_masks(now, SHAPE)) < 1e-9
    assert runs > 100


@pytest.mark.parametrize("layer_scale", [1.0, 1.08])
def test_lands_on_the_target_within_one_run_and_keeps_exact_books(layer_scale):
    """Also where a whole model runs its sub-layers slower than alone (layer_scale): each removal then
    saves that much more of the whole model's time."""
    model = known_model()
    model.layer_scale = layer_scale
    dense = model.predict_masks(all_kept_masks(SHAPE), SHAPE)
    for target in (0.9 * dense, 0.6 * dense, 0.45 * dense):
        masks = all_kept_masks(SHAPE)
        predicted = prune_to_latency(seeded_scores(SHAPE), masks, SHAPE, model, target)
        assert abs(predicted - model.predict_masks(masks, SHAPE)) < 1e-9  # the books kept along the way
        assert target - 0.5 <= predicted <= target, (target, predicted)  # 0.5 ms: more than any run here
        heads_without_vo = masks["vo"].view(2, 4, 16).amax(-1) == 0
        assert (masks["qk"].view(2, 4, 16).amax(-1)[heads_without_vo] == 0).all()


def test_prefers_units_that_save_more_time_for_their_importance():
    model = known_model()
    model.ffn_ms = [0.2, 0.2001, 0.2002]  # FFN neurons save (almost) nothing
    scores = {kind: torch.ones(SHAPE.num_layers, n) for kind, n in SHAPE.units_per_layer.items()}
    masks = all_kept_masks(SHAPE)
    prune_to_latency(scores, masks, SHAPE, model, model.predict_masks(masks, SHAPE) - 0.3)
    assert masks["ffn"].all() and masks["qk"].sum() < masks["qk"].numel()


def test_within_equal_costs_the_least_important_go_first():
    model = known_model()
    model.group_ms = 0.0  # every QK unit saves the same (no call opened by leaving a group)
    scores = seeded_scores(SHAPE, 3)
    scores["vo"].fill_(1e3)  # keep VO (and so every head)
    scores["ffn"].fill_(1e3)
    masks = all_kept_masks(SHAPE)
    prune_to_latency(scores, masks, SHAPE, model, model.predict_masks(masks, SHAPE) - 0.2)
    removed, kept = scores["qk"][masks["qk"] == 0], scores["qk"][masks["qk"] == 1]
    assert removed.numel() > 0 and removed.max() <= kept.min()


def test_runs_cross_steps_that_save_nothing_alone():
    """The FFN runs at a multiple of 8 columns: one neuron alone saves nothing, a run of 8 saves a
    step. Where FFN neurons are the cheapest importance, the selection takes them in runs."""
    model = known_model()  # FFN 0.6 ms at 64 columns, 1.0 at 128: 0.05 ms per step of 8
    scores = {kind: torch.full((SHAPE.num_layers, n), 1e3) for kind, n in SHAPE.units_per_layer.items()}
    scores["ffn"] = seeded_scores(SHAPE, 5)["ffn"]
    masks = all_kept_masks(SHAPE)
    masks["ffn"][:, 121:] = 0  # 121 kept (run at 128 columns): removing one saves a step, 128 -> 120 columns
    saved, units = saved_and_units(next_run(masks, model, "ffn", 0))
    assert units == 1 and abs(saved - 0.05) < 1e-12
    masks["ffn"][:, 120:] = 0  # 120 kept: removing one neuron leaves 119, still run at 120 columns
    saved, units = saved_and_units(next_run(masks, model, "ffn", 0))
    assert units == 8 and abs(saved - 0.05) < 1e-12  # 120 -> 112 columns
    target = model.predict_masks(masks, SHAPE) - 0.1
    predicted = prune_to_latency(scores, masks, SHAPE, model, target)
    assert predicted <= target and masks["qk"].all() and masks["vo"].all()  # no head unit was needed
    assert all(int(w) % 8 == 0 for w in masks["ffn"].sum(-1))  # whole steps only


def test_a_qk_width_of_one_keeps_its_slot():
    """QK width 2 -> 1 saves nothing on CPU (the slot stays 2); a head whose QK units are its least
    important still loses them, in one run down to a uniform head, when that pays."""
    model = known_model()
    scores = {kind: torch.full((SHAPE.num_layers, n), 1e3) for kind, n in SHAPE.units_per_layer.items()}
    masks = all_kept_masks(SHAPE)
    set_widths(masks, 0, [2, 16, 16, 16], [4, 16, 16, 16])
    # the run is both QK units: head 0 becomes uniform, its call and its head cost go, the uniform part
    # and a uniform head of VO width 4 come
    saved, units = saved_and_units(next_run(masks, model, "qk", 0, 0))
    assert units == 2 and abs(saved - (0.03 + head(2, 4) - 0.02 - head(0, 4))) < 1e-12
    scores["qk"][0, 0:2] = 0.001
    before = model.predict_masks(masks, SHAPE)
    prune_to_latency(scores, masks, SHAPE, model, before - 0.001)
    assert masks["qk"][0, 0:2].sum() == 0 and masks["vo"][0, 0:4].sum() == 4
