"""FLOPs counted for dense and compact models match the arithmetic of their shapes; compare_models
reports consistent ratios."""

import sys
import types

import torch

import grain  # noqa: F401  (registers the compact classes)
from grain.bench.__main__ import main as bench_main
from grain.measure.compare import compare_models
from grain.measure.flops import count_flops, padding_flops
from grain.measure.profile import format_op_table, op_times
from grain.measure.structures import floor_masks
from grain.models.compact.kernels import round_up
from grain.models.inputs import random_batch
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from grain.summary import read_summary, write_summary
from tests.helpers.models import BENCH_BATCH, BENCH_SEQ, BENCH_VOCAB, all_kept_masks, half_ffn_compact, tiny_model

HIDDEN, LAYERS, HEADS, FFN, LABELS = 32, 2, 4, 48, 3
BATCH, SEQ = BENCH_BATCH, BENCH_SEQ
# the dense model timed here: a vocabulary the benchmark's token ids fit
DENSE = dict(layers=LAYERS, hidden=HIDDEN, heads=HEADS, ffn=FFN, labels=LABELS, vocab=BENCH_VOCAB)


def expected_flops(ffn_widths, qk_width=HIDDEN, vo_width=HIDDEN):
    """Multiply-adds x 2 of the encoder's matmuls, attention scores and context, pooler and head."""
    tokens = BATCH * SEQ
    total = 0
    for ffn in ffn_widths:
        total += 2 * tokens * HIDDEN * (2 * qk_width + 2 * vo_width)   # Q, K, V, O
        total += 2 * tokens * HIDDEN * 2 * ffn                          # FFN up and down
        total += 2 * BATCH * SEQ * SEQ * (qk_width + vo_width)          # Q K^T and attention @ V
    return total + 2 * BATCH * HIDDEN * HIDDEN + 2 * BATCH * HIDDEN * LABELS


def test_dense_flops_match_the_shapes():
    assert count_flops(tiny_model(**DENSE), BATCH, SEQ) == expected_flops([FFN] * LAYERS)


def test_compact_flops_shrink_by_exactly_the_removed_ffn_neurons():
    dense = tiny_model(**DENSE)
    masks = all_kept_masks(EncoderShape.of(dense))
    assert count_flops(compact_from_masked(dense, masks)[0], BATCH, SEQ) == count_flops(dense, BATCH, SEQ)
    masks["ffn"][0, :20] = 0
    masks["ffn"][1, 5:10] = 0
    compact, _ = compact_from_masked(dense, masks)
    # the FFN runs padded to a multiple of 8 neurons; the padding is counted apart
    assert count_flops(compact, BATCH, SEQ) == expected_flops([round_up(FFN - 20), round_up(FFN - 5)])
    kept = count_flops(compact, BATCH, SEQ) - padding_flops(compact, BATCH, SEQ)
    assert kept == expected_flops([FFN - 20, FFN - 5])


def test_padding_flops_of_narrow_heads():
    """A head of QK width 1 (padded to 2) and a projection padded to a multiple of 8 count as padding."""
    dense = tiny_model(**DENSE)
    shape = EncoderShape.of(dense)
    masks = all_kept_masks(shape)
    masks["qk"][0, 1 : shape.head_dim] = 0  # layer 0, head 0: QK width 1
    compact, _ = compact_from_masked(dense, masks)
    # projection: [Q | K] of 3 full heads + head 0 at 2, V of 4 heads = 2 * (24 + 2) + 32 = 84 -> 88 columns
    tokens = BATCH * SEQ
    padding = 2 * tokens * HIDDEN * (88 - (2 * 25 + 32)) + 2 * BATCH * SEQ * SEQ * 1
    assert padding_flops(compact, BATCH, SEQ) == padding
    kept = count_flops(compact, BATCH, SEQ) - padding
    assert kept == expected_flops([FFN] * LAYERS) - 2 * 2 * tokens * HIDDEN * 7 - 2 * BATCH * SEQ * SEQ * 7


def test_compare_models_reports_consistent_ratios():
    dense = tiny_model(**DENSE)
    compact = half_ffn_compact(dense)
    result = compare_models(dense, compact, BATCH, SEQ, min_run_time=0.05, rounds=1)
    # the FLOPs by the shapes' arithmetic (the kept FFN, 24 wide, needs no padding), not by the result's own
    dense_flops, kept_flops = expected_flops([FFN] * LAYERS), expected_flops([FFN // 2] * LAYERS)
    assert (result["dense_flops"], result["kept_flops"]) == (dense_flops, kept_flops)
    assert result["flops_ratio"] == dense_flops / kept_flops > 1
    assert result["kept_flops"] == result["flops"] - padding_flops(compact, BATCH, SEQ)
    assert result["speedup"] == result["dense_latency_ms"] / result["latency_ms"]
    assert result["dense_encoder_params"] - result["encoder_params"] == LAYERS * (FFN // 2) * (2 * HIDDEN + 1)
    assert (result["batch"], result["seq_len"]) == (BATCH, SEQ)


def test_operator_profile_lists_the_compact_models_costliest_operators():
    dense = tiny_model(**DENSE)
    compact = half_ffn_compact(dense)
    dense_ops, compact_ops = op_times(dense, BATCH, SEQ), op_times(compact, BATCH, SEQ)
    assert dense_ops["aten::addmm"] > 0 and compact_ops["aten::addmm"] > 0
    table = format_op_table(dense_ops, compact_ops, top=3).splitlines()
    assert len(table) == 5 and table[0].startswith("operator") and table[-1].startswith("all operators")
    listed = [line.split()[0] for line in table[1:-1]]
    assert listed == sorted(compact_ops, key=compact_ops.get, reverse=True)[:3]


def test_bench_command_names_a_missing_compact_model_or_teacher(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_summary(run_dir, {"teacher": {"path": str(tmp_path / "gone-teacher")}})
    assert bench_main([str(run_dir)]) == 2
    assert f"no saved model at {run_dir / 'compact'}" in capsys.readouterr().err
    tiny_model(**DENSE).save_pretrained(run_dir / "compact")
    assert bench_main([str(run_dir)]) == 2
    assert f"the run's teacher {tmp_path / 'gone-teacher'} is gone" in capsys.readouterr().err


def test_floor_keeps_one_unit_of_each_kind_per_layer(tmp_path, capsys):
    dense = tiny_model(**DENSE)
    masks = floor_masks(EncoderShape.of(dense))
    assert {kind: m.sum(1).tolist() for kind, m in masks.items()} == {kind: [1.0] * LAYERS for kind in masks}
    floor, _ = compact_from_masked(dense, masks)
    assert floor.config.qk_dims == floor.config.vo_dims == [[1]] * LAYERS and floor.config.ffn_dims == [1] * LAYERS
    # the CLI reports the floor and the speedup ceiling it sets, in summary.json too
    run_dir = tmp_path / "run"
    half_ffn_compact(dense).save_pretrained(run_dir / "compact")
    dense.save_pretrained(tmp_path / "dense")
    write_summary(run_dir, {"teacher": {"path": str(tmp_path / "dense")}})
    args = [str(run_dir), "--batch", str(BATCH), "--seq-len", str(SEQ), "--min-run-time", "0.05", "--floor"]
    assert bench_main(args) == 0
    assert "no sparsity gets past" in capsys.readouterr().out
    compact = read_summary(run_dir)[f"bench/cpu-float32-{BATCH}x{SEQ}"]
    assert compact["speedup_ceiling"] == compact["dense_latency_ms"] / compact["floor_latency_ms"]


def test_bench_command_keeps_the_runs_speedup_and_reports_its_spread(tmp_path, capsys):
    dense = tiny_model(**DENSE)
    run_dir = tmp_path / "run"
    half_ffn_compact(dense).save_pretrained(run_dir / "compact")
    dense.save_pretrained(tmp_path / "dense")
    recorded = {"speedup": 7.0, "latency_ms": 1.0, "metric": 0.9}  # what the run's compact stage measured
    write_summary(run_dir, {"teacher": {"path": str(tmp_path / "dense")}, "compact": recorded})
    args = [str(run_dir), "--batch", str(BATCH), "--seq-len", str(SEQ), "--min-run-time", "0.05"]
    assert bench_main(args) == 0
    assert bench_main([*args, "--batch", "1"]) == 0  # another shape: another key beside the first
    out = capsys.readouterr().out
    assert "min-max over 3 rounds" in out and "speedup per round" in out
    summary = read_summary(run_dir)
    assert summary["compact"] == recorded  # never overwritten
    assert {key for key in summary if key.startswith("bench/")} == {
        f"bench/cpu-float32-{BATCH}x{SEQ}", f"bench/cpu-float32-1x{SEQ}",
    }
    result = summary[f"bench/cpu-float32-{BATCH}x{SEQ}"]
    rounds = result["latency_rounds_ms"]
    assert len(rounds["compact"]) == 3 and "min-max" in result["latency_spread"]
    assert (result["latency_ms_min"] == min(rounds["compact"]) <= result["latency_ms"]
            <= result["latency_ms_max"] == max(rounds["compact"]))
    assert result["dense_latency_ms_min"] <= result["dense_latency_ms"] <= result["dense_latency_ms_max"]
    assert result["speedup_min"] <= result["speedup_max"] and len(result["speedup_rounds"]) == 3


def test_measurement_keys_name_device_dtype_shape_and_mode():
    from grain.bench.__main__ import measurement_key

    torch_cpu = {"dtype": "float32", "batch": 32, "seq_len": 128}
    assert measurement_key(torch_cpu, "cpu") == "bench/cpu-float32-32x128"
    assert measurement_key(torch_cpu, "cpu", "reduce-overhead", True) == (
        "bench/cpu-float32-32x128-compiled-reduce-overhead-system-allocator"
    )
    onnx = {**torch_cpu, "runtime": "onnxruntime", "provider": "CPUExecutionProvider"}
    assert measurement_key(onnx, "cuda") == "bench/cpu-float32-32x128-onnxruntime"  # ran on the CPU provider


def test_compact_stage_times_the_training_device_at_its_default_shapes():
    from omegaconf import OmegaConf

    from grain.measure.compare import bench_shapes, serving_device
    from grain.stages.compact import benchmark

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert serving_device(OmegaConf.create({"accelerator": "cpu"})) == cpu
    defaults = OmegaConf.create({"bench_batch": None, "bench_seq_len": None, "bench_extra_shapes": None})
    assert bench_shapes(defaults, cpu) == [(32, 128)]
    assert bench_shapes(defaults, cuda) == [(128, 512), (32, 128)]  # the paper's shape first
    chosen = OmegaConf.create({"bench_batch": 8, "bench_seq_len": None, "bench_extra_shapes": [[1, 16], [8, 128]]})
    assert bench_shapes(chosen, cpu) == [(8, 128), (1, 16)]
    dense = tiny_model(**DENSE)
    result = benchmark(dense, half_ffn_compact(dense), [(BATCH, SEQ), (1, 8)], cpu, seconds=0.1)
    assert (result["dtype"], result["batch"], result["seq_len"]) == ("float32", BATCH, SEQ)
    assert result["device"].startswith("cpu")
    assert [(s["batch"], s["seq_len"]) for s in result["shapes"]] == [(BATCH, SEQ), (1, 8)]
    assert result["shapes"][0]["speedup"] == result["speedup"]


def test_steptime_writes_its_ratios(tmp_path):
    import json

    from grain.bench.steptime import main as steptime_main

    out = tmp_path / "steptime.json"
    assert steptime_main(["--model", "tiny", "--steps", "8", "--batch", "2", "--seq-len", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["scoring_ratio"] == result["scoring_step_ms"] / result["kd_step_ms"]
    assert result["device"] == "cpu" and abs(result["achieved_sparsity"] - 0.9) < 0.02


def test_the_commands_name_a_path_that_does_not_exist(tmp_path, capsys):
    """grain.bench and grain.export on a directory that is not there say so (grain.bench said "give --dense")."""
    from grain.export import main as export_main

    missing = tmp_path / "no-such-run"
    assert bench_main([str(missing)]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err
    assert export_main([str(missing)]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err


def test_a_small_vocabulary_is_timed_with_ids_inside_it():
    """The benchmarks drew token ids from 1000 up: a model of at most 1,000 tokens trained, then crashed in
    the compact stage (randint's low above its high). The ids are drawn inside the vocabulary now."""
    dense = tiny_model(vocab=100)
    compact = half_ffn_compact(dense)
    result = compare_models(dense, compact, 2, 16, min_run_time=0.01, rounds=1)
    assert result["speedup"] > 0 and count_flops(compact, 2, 16) > 0
    ids = random_batch(dense.config, 4, 16)["input_ids"]
    assert 0 < ids.min() and ids.max() < 100


def test_bench_command_reads_a_teacher_given_as_an_installed_package(tmp_path, capsys, monkeypatch):
    """A run whose teacher is `package:<module>` (the offline MiniLM, task=squad_retrieval's teacher as
    given) is compared with the model directory that package ships, not looked up as a hub name."""
    dense = tiny_model(**DENSE)
    dense.save_pretrained(tmp_path / "dense")
    shipped = types.ModuleType("grain_test_shipped_model")
    shipped.get_model_path = lambda: str(tmp_path / "dense")
    monkeypatch.setitem(sys.modules, "grain_test_shipped_model", shipped)
    run_dir = tmp_path / "run"
    half_ffn_compact(dense).save_pretrained(run_dir / "compact")
    write_summary(run_dir, {"teacher": {"path": "package:grain_test_shipped_model"}})
    args = [str(run_dir), "--batch", str(BATCH), "--seq-len", str(SEQ), "--min-run-time", "0.05"]
    assert bench_main(args) == 0, capsys.readouterr().err
    assert read_summary(run_dir)[f"bench/cpu-float32-{BATCH}x{SEQ}"]["speedup"] > 0
