"""ONNX export of the compact model (`python -m grain.export`): the file runs in onnxruntime on padded
batches of any batch size and length, as the PyTorch model does, attention mask included; and
`grain.bench --runtime onnxruntime` times it.

Needs the `export` extra (onnx, onnxscript, onnxruntime; part of `dev`); the tests that export skip
without it, the error-message tests run anyway.
"""

import sys

import pytest
import torch

import grain  # noqa: F401  (registers the compact classes)
from grain.bench.__main__ import main as bench_main
from grain.deploy.onnx import DEFAULT_OPSET, INPUT_NAMES, TensorOutputs, export_onnx, onnx_opset, onnx_outputs
from grain.export import main as export_main
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from grain.summary import read_summary, write_summary
from tests.helpers.models import BENCH_BATCH, BENCH_SEQ, BENCH_VOCAB, half_ffn_compact, hard_masks, tiny_model, token_batch

ATOL = 1e-4


def needs_onnx():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason="the export extra (pip install -e .[export]) is not installed")


def compact_of(head):
    """A tiny compact model whose outputs depend on attention: weights drawn 10x wider than BERT's
    initialization (at 0.02, dropping the mask moves a tiny model's logits by only ~1e-5)."""
    dense = tiny_model(head=head)
    with torch.no_grad():
        for name, param in dense.named_parameters():
            if param.dim() == 2 and "embeddings" not in name:
                param.normal_(0, 0.2)
    return compact_from_masked(dense, hard_masks(EncoderShape.of(dense)))[0].eval()


def pytorch_outputs(model, batch: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(TensorOutputs(model)(**batch))


@pytest.mark.parametrize("head", ["sequence", "qa"])
def test_onnx_export_keeps_the_attention_mask_at_any_shape(head, tmp_path):
    """Exported on an unpadded 2 x 8 batch (where a host-side `attention_mask.all()` shortcut would
    drop the mask from the graph), run on padded batches of other sizes and lengths."""
    needs_onnx()
    model = compact_of(head)
    g = torch.Generator().manual_seed(3)
    example = token_batch(ids=torch.randint(1, 100, (2, 8), generator=g), lengths=[8, 8])
    path = export_onnx(model, tmp_path / "model.onnx", example=example)
    assert onnx_opset(path) == DEFAULT_OPSET

    ids = torch.randint(1, 100, (3, 13), generator=g)
    padded = token_batch(ids=ids, lengths=[13, 9, 4])
    got = onnx_outputs(path, padded)
    expected = pytorch_outputs(model, padded)
    assert len(got) == len(expected) == (2 if head == "qa" else 1)
    for g_out, e_out in zip(got, expected):
        assert g_out.shape == tuple(e_out.shape)
        torch.testing.assert_close(torch.from_numpy(g_out), e_out, atol=ATOL, rtol=0)
    # one row, another length: the batch axis is dynamic down to 1 too
    single = token_batch(ids=ids[:1, :5], lengths=[5])
    for g_out, e_out in zip(onnx_outputs(path, single), pytorch_outputs(model, single)):
        torch.testing.assert_close(torch.from_numpy(g_out), e_out, atol=ATOL, rtol=0)

    # the mask is in the graph: row 1 padded to 13 gives what its 9 tokens give alone (ONNX and
    # PyTorch), and the same 13 tokens without the mask give something else
    alone = onnx_outputs(path, token_batch(ids=ids[1:2, :9], lengths=[9]))
    unmasked = onnx_outputs(path, token_batch(ids=ids[1:2], lengths=[13]))
    for padded_out, alone_out, unmasked_out in zip(got, alone, unmasked):
        row, kept, other = (torch.from_numpy(a) for a in (padded_out[1:2], alone_out, unmasked_out))
        if row.dim() == 2 and row.shape[1] == 13:  # QA: per-token logits; compare the 9 kept positions
            row, other = row[:, :9], other[:, :9]
        torch.testing.assert_close(row, kept, atol=ATOL, rtol=0)
        assert (row - other).abs().max() > 100 * ATOL


def test_export_command_writes_and_checks_the_file(tmp_path, capsys):
    needs_onnx()
    run_dir = tmp_path / "run"
    compact_of("sequence").save_pretrained(run_dir / "compact")
    write_summary(run_dir, {"teacher": {"path": str(tmp_path / "dense")}})
    assert export_main([str(run_dir), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    path = run_dir / "compact" / "model.onnx"
    assert f"wrote {path}" in out and f"opset {DEFAULT_OPSET};" in out
    diff = float(out.split("(onnxruntime, CPU): ")[1].split()[0])
    assert diff < ATOL
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_export_command_names_a_missing_model_or_extra(tmp_path, capsys, monkeypatch):
    assert export_main([str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    model_dir = tmp_path / "compact"
    compact_of("sequence").save_pretrained(model_dir)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    assert export_main([str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "not installed" in err and "pip install -e .[export]" in err
    assert not (model_dir / "model.onnx").exists()


def test_bench_times_both_models_with_onnxruntime(tmp_path, capsys):
    needs_onnx()
    dense = tiny_model(layers=2, vocab=BENCH_VOCAB)
    run_dir = tmp_path / "run"
    half_ffn_compact(dense).save_pretrained(run_dir / "compact")
    dense.save_pretrained(tmp_path / "dense")
    write_summary(run_dir, {"teacher": {"path": str(tmp_path / "dense")}})
    args = [str(run_dir), "--batch", str(BENCH_BATCH), "--seq-len", str(BENCH_SEQ), "--min-run-time", "0.05",
            "--runtime", "onnxruntime"]
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "CPUExecutionProvider" in out and "latency ms (median)" in out
    result = read_summary(run_dir)[f"bench/cpu-float32-{BENCH_BATCH}x{BENCH_SEQ}-onnxruntime"]  # its own key (grain.bench)
    assert result["speedup"] == result["dense_latency_ms"] / result["latency_ms"]
    assert result["flops_ratio"] > 1 and (result["batch"], result["seq_len"]) == (BENCH_BATCH, BENCH_SEQ)
    assert len(result["latency_rounds_ms"]["compact"]) == 3
    summary = read_summary(run_dir)  # the PyTorch numbers stay apart
    assert "compact" not in summary and f"bench/cpu-float32-{BENCH_BATCH}x{BENCH_SEQ}" not in summary


def test_bench_onnxruntime_rejects_pytorch_only_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main([str(tmp_path), "--runtime", "onnxruntime", "--compile"])
    assert exit_info.value.code == 2
    assert "--runtime onnxruntime" in capsys.readouterr().err
