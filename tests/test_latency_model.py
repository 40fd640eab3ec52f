"""The latency model's bookkeeping: parts add up, a sub-layer's base cost is charged once, tables
interpolate, the cache is keyed by what the timing depends on; and the measured model predicts."""

import torch
from transformers import BertConfig

from grain.bench.latency_model import LatencyModel, cache_path, latency_model, model_key, width_grid
from grain.models.masks import EncoderShape

SHAPE = EncoderShape(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)


def known_model() -> LatencyModel:
    widths = [0, 1, 2, 4, 8, 16]
    return LatencyModel(
        key=model_key(SHAPE, torch.device("cpu"), torch.float32, 4, 16),
        fixed_ms=1.0, attention_empty_ms=0.1, attention_base_ms=0.5,
        head_widths=widths,
        head_ms=[[0.01 * q + 0.001 * v + 0.05 for v in widths[1:]] for q in widths],  # bilinear exactly
        ffn_widths=[0, 64, 128], ffn_ms=[0.2, 0.6, 1.0],
    )


def test_parts_add_up_and_a_layers_base_cost_is_charged_once():
    model = known_model()
    head = lambda q, v: 0.01 * q + 0.001 * v + 0.05  # noqa: E731
    assert model.attention_cost([], []) == 0.1
    assert model.attention_cost([4, 0], [0, 0]) == 0.1  # heads without VO units are gone
    assert abs(model.attention_cost([4], [2]) - (0.5 + head(4, 2))) < 1e-12
    two = model.attention_cost([4, 16], [2, 8])
    assert abs(two - (0.5 + head(4, 2) + head(16, 8))) < 1e-12  # the base once, each head its own
    predicted = model.predict([[4, 16], []], [[2, 8], []], [64, 0])
    assert abs(predicted - (1.0 + two + 0.6 + 0.1 + 0.2)) < 1e-12


def test_tables_interpolate_between_and_clamp_beyond_the_grid():
    model = known_model()
    assert abs(model.head_cost(3, 5) - (0.01 * 3 + 0.001 * 5 + 0.05)) < 1e-12  # bilinear in both widths
    assert abs(model.head_cost(40, 40) - model.head_cost(16, 16)) < 1e-12
    assert abs(model.ffn_cost(32) - 0.4) < 1e-12 and model.ffn_cost(0) == 0.2


def test_masks_and_structures_predict_alike():
    model = known_model()
    masks = {kind: torch.zeros(2, n) for kind, n in SHAPE.units_per_layer.items()}
    masks["qk"][0, 0:4] = 1   # layer 0, head 0: QK 4, VO 2
    masks["vo"][0, 0:2] = 1
    masks["vo"][0, 16:24] = 1  # layer 0, head 1: uniform (QK 0), VO 8
    masks["ffn"][1, :64] = 1
    assert model.predict_masks(masks, SHAPE) == model.predict([[4, 0, 0, 0], [0] * 4], [[2, 8, 0, 0], [0] * 4], [0, 64])


def test_cache_is_keyed_by_device_dtype_torch_batch_and_length(tmp_path):
    cpu = torch.device("cpu")
    key = model_key(SHAPE, cpu, torch.float32, 4, 16)
    assert {"device", "dtype", "torch", "batch", "seq_len"} <= set(key)
    assert cache_path(tmp_path, key) != cache_path(tmp_path, model_key(SHAPE, cpu, torch.float32, 8, 16))
    assert cache_path(tmp_path, key) != cache_path(tmp_path, model_key(SHAPE, cpu, torch.bfloat16, 4, 16))
    saved = known_model()
    saved.save(cache_path(tmp_path, key))
    assert LatencyModel.load(cache_path(tmp_path, key)) == saved


def test_measured_model_is_cached_and_reused(tmp_path):
    config = BertConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    lines = []
    model = latency_model(config, torch.device("cpu"), 2, 8, tmp_path, min_run_time=0.005, progress=lines.append)
    assert model.head_widths == [0] + width_grid(16) and len(model.head_ms) == len(model.head_widths)
    assert all(t >= 0 for row in model.head_ms for t in row) and model.ffn_widths[0] == 0
    # wider never costs less (noise is smoothed out), so no marginal cost is negative
    assert all(a <= b for row in model.head_ms for a, b in zip(row, row[1:]))
    assert all(a <= b for column in zip(*model.head_ms) for a, b in zip(column, column[1:]))
    assert all(a <= b for a, b in zip(model.ffn_ms, model.ffn_ms[1:]))
    again = latency_model(config, torch.device("cpu"), 2, 8, tmp_path, progress=lines.append)
    assert again == model and lines[-1].startswith("latency model from")


def test_readme_latency_model_command_runs_as_written(tmp_path, capsys):
    """The README's `grain.bench.latency_model` command, with cheap settings appended (the last wins)."""
    from grain.bench.latency_model import main
    from tests.test_readme_commands import readme_commands

    commands = readme_commands("Comparing runs and measuring speed", "grain.bench.latency_model")
    assert len(commands) == 1
    cheap = ["--batch", "2", "--seq-len", "8", "--min-run-time", "0.002", "--check", "0.9",
             "--cache-dir", str(tmp_path)]
    assert main(commands[0] + cheap) == 0
    out = capsys.readouterr().out
    assert "predicted ms" in out and "dense (predicted)" in out
