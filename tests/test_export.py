"""ONNX export of the compact model (`python -m grain.export`): the file runs in onnxruntime on padded
batches of any batch size and length, as the PyTorch model does, attention mask included; and
`grain.bench --runtime onnxruntime` times it.

Needs the `export` extra (onnx, onnxscript, onnxruntime; part of `dev`); the tests that export skip
without it, the error-message tests run anyway.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

import grain  # noqa: F401  (registers the compact classes)
from grain.bench.__main__ import main as bench_main
from grain.deploy.onnx import DEFAULT_OPSET, TensorOutputs, check_onnx, export_onnx, onnx_input_names, onnx_opset, onnx_outputs
from grain.deploy.onnx_model import OnnxModel
from grain.deploy.quantize import quantize_int8
from grain.deploy.tei import tei_config
from grain.export import main as export_main
from grain.export import run_dir_of
from grain.models.masks import EncoderShape
from grain.models.registry import load_saved_model
from grain.models.self_contained import save_compact
from grain.models.slicing import compact_from_masked
from grain.summary import read_summary, write_summary
from tests.helpers.configs import compose_config
from tests.helpers.models import (
    BENCH_BATCH,
    BENCH_SEQ,
    FAMILIES,
    hard_masks,
    tiny_model,
    token_batch,
)
from tests.helpers.runs import readme_commands

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
        wrapper = TensorOutputs(model)
        return list(wrapper(**wrapper.feeds(batch)))


# the inputs each family's file declares: token types only where the family has segments
WITH_TOKEN_TYPES = {"bert", "electra"}
# by default three families, without token types (BERT's sequence head, with them: the attention-mask test
# below); each export takes seconds, so the other cases, the token heads among them, are `slow`
DEFAULT_CASES = {("roberta", "qa"), ("deberta-v2", "sequence"), ("modernbert", "token")}
CASES = [
    pytest.param(family, head, marks=() if (family, head) in DEFAULT_CASES else pytest.mark.slow)
    for family, (_, _, heads) in FAMILIES.items() for head in heads
]


@pytest.mark.parametrize("family,head", CASES)
def test_every_family_and_head_exports_with_its_own_inputs(family, head, tmp_path):
    """Each family's compact model (every corner case of hard_masks) as ONNX: only the inputs the family
    reads, and onnxruntime's outputs equal PyTorch's on a padded batch of another shape than the export's."""
    needs_onnx()
    dense = tiny_model(family, head)
    model = compact_from_masked(dense, hard_masks(EncoderShape.of(dense)))[0].eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if family in WITH_TOKEN_TYPES else [])
    assert onnx_input_names(path) == expected
    assert check_onnx(model, path) < ATOL
    # the file as a model grain evaluates (OnnxModel): the head's output class and values, token types
    # left out of the batch (zeros, as PyTorch)
    batch = token_batch(pad_id=dense.config.pad_token_id, token_types=None)
    zeros = torch.zeros_like(batch["input_ids"])
    got, want = OnnxModel(path)(**batch), pytorch_outputs(model, {**batch, "token_type_ids": zeros})
    assert type(got).__name__ == {"sequence": "SequenceClassifierOutput", "token": "TokenClassifierOutput",
                                  "qa": "QuestionAnsweringModelOutput"}[head]
    for name, value in zip(TensorOutputs(model).outputs, want):
        torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family,model_type", [("roberta", "roberta"), ("distilbert", "distilbert"),
                                               ("deberta-v2", "deberta-v2")])
def test_tei_config_has_what_tei_reads_for_every_family(family, model_type):
    model = compact_from_masked(tiny_model(family), hard_masks(EncoderShape.of(tiny_model(family))))[0]
    config = tei_config(model)
    assert config["model_type"] == model_type  # TEI's position offset for roberta
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 3)  # DistilBERT: from dim, n_layers
    assert config["architectures"][0].endswith("ForSequenceClassification") and "auto_map" not in config
    assert isinstance(config["pad_token_id"], int) and len(config["label2id"]) == 3


def test_a_compact_folder_inside_a_run_is_evaluated_as_the_run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "compact").mkdir(parents=True)
    (run_dir / "compact" / "config.json").write_text("{}")
    write_summary(run_dir, {"teacher": {"path": "x"}})
    assert run_dir_of(run_dir / "compact", run_dir / "compact") == run_dir
    assert run_dir_of(run_dir, run_dir / "compact") == run_dir
    assert run_dir_of(tmp_path / "elsewhere", tmp_path / "elsewhere") is None


@pytest.mark.parametrize("head", ["sequence", pytest.param("qa", marks=pytest.mark.slow)])  # QA: the family grid
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

    # dynamically quantized: int8 weights and products, the same inputs and outputs, close to fp32
    int8 = quantize_int8(path, tmp_path / "model_int8.onnx")
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    for q_out, f_out in zip(onnx_outputs(int8, padded), got):
        assert q_out.shape == f_out.shape and 0 < abs(q_out - f_out).max() < 0.1 * (abs(f_out).max() + 1)


def tiny_sst2_run(tmp_path, tokenizer) -> Path:
    """A run dir as the compact stage leaves it, for task=sst2 on the test fixtures: its config, summary,
    compact folder (a tiny compact BERT over the MiniLM vocabulary, with its tokenizer) and teacher."""
    run_dir = tmp_path / "run"
    cfg = compose_config(["task=sst2", "model=tiny"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    dense = tiny_model(vocab=len(tokenizer), labels=2, max_position_embeddings=512)  # the task pads to 128
    with torch.no_grad():
        dense.classifier.weight.normal_(0, 2.0)  # logits far apart: predictions robust to int8 rounding
    save_compact(compact_from_masked(dense, hard_masks(EncoderShape.of(dense)))[0], run_dir / "compact")
    tokenizer.save_pretrained(run_dir / "compact")
    dense.save_pretrained(tmp_path / "teacher")
    write_summary(run_dir, {"metric_name": "accuracy", "eval_split": "validation",
                            "teacher": {"path": str(tmp_path / "teacher")},
                            "config": OmegaConf.to_container(cfg, resolve=True)})
    return run_dir


def check_tei_contract(folder: Path, run_dir: Path, tokenizer) -> None:
    """`folder` checked against text-embeddings-inference's ONNX backend contract (grain.deploy.tei):
    config.json fields, tokenizer.json, inputs fed only where the graph declares them, `logits` by name,
    equal to the run's PyTorch compact model."""
    import onnxruntime
    from tokenizers import Tokenizer

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GrainBertForSequenceClassification"]  # ends in Classification: a classifier
    assert config["model_type"] == "bert" and "auto_map" not in config
    for field in ("max_position_embeddings", "hidden_size", "num_hidden_layers", "pad_token_id"):
        assert isinstance(config[field], int), field
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"} and config["label2id"] == {"LABEL_0": 0, "LABEL_1": 1}

    # as TEI runs it: tokenizer.json, right padding with pad_token_id, int64 inputs by name
    texts = [("a gripping , funny film", None), ("what a waste", "of two hours")]
    encoder = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encodings = [encoder.encode(a, b) if b else encoder.encode(a) for a, b in texts]
    width = max(len(e.ids) for e in encodings)

    def padded(rows, value):
        return np.array([row + [value] * (width - len(row)) for row in rows], dtype=np.int64)
    feeds = {"input_ids": padded([e.ids for e in encodings], config["pad_token_id"]),
             "attention_mask": padded([e.attention_mask for e in encodings], 0),
             "token_type_ids": padded([e.type_ids for e in encodings], 0)}
    session = onnxruntime.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    declared = [i.name for i in session.get_inputs()]
    [logits] = session.run(["logits"], {name: feeds[name] for name in declared})
    assert logits.shape == (2, len(config["id2label"]))

    model = load_saved_model(run_dir / "compact")
    expected = []  # each text alone, unpadded, through the PyTorch compact model
    for a, b in texts:
        with torch.no_grad():
            expected.append(model(**tokenizer(a, b, return_tensors="pt")).logits[0])
    torch.testing.assert_close(torch.from_numpy(logits), torch.stack(expected), atol=ATOL, rtol=0)


@pytest.mark.slow  # four ONNX exports (~45 s); by default the export, int8 and TEI code is tested in parts above and below
def test_readme_deploy_commands_run_as_written(tmp_path, capsys, tokenizer):
    """The README's "Deploy the compact model" commands on a tiny run (cheap bench settings appended):
    fp32 and int8 files evaluated beside PyTorch, the four onnxruntime timings, the TEI folder as TEI reads it."""
    needs_onnx()
    import onnx

    exports = readme_commands("Deploy the compact model", "grain.export")
    benches = readme_commands("Deploy the compact model", "grain.bench")
    assert [c[1:] for c in exports] == [["--format", "onnx", "--quantize", "int8"], ["--target", "tei"]]
    assert [c[1:] for c in benches] == [["--runtime", "onnxruntime"]]
    run_dir = tiny_sst2_run(tmp_path, tokenizer)
    cheap = ["--batch", str(BENCH_BATCH), "--seq-len", str(BENCH_SEQ), "--min-run-time", "0.05"]

    assert export_main([str(run_dir), *exports[0][1:]]) == 0
    out = capsys.readouterr().out
    folder = run_dir / "compact" / "onnx"
    assert f"wrote {folder / 'model.onnx'} (fp32" in out and f"wrote {folder / 'model_int8.onnx'} (int8" in out
    assert f"opset {DEFAULT_OPSET};" in out
    for label in ("fp32", "int8"):
        assert f"(onnxruntime, CPU), {label}: " in out
    assert float(out.split("(onnxruntime, CPU), fp32: ")[1].split()[0]) < ATOL
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())
    assert [o.name for o in session.get_outputs()] == ["logits"]
    ops = {node.op_type for node in onnx.load(str(folder / "model_int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # int8 weights, activations quantized per batch
    scores = read_summary(run_dir)["export/onnx"]["metrics"]
    assert set(scores) == {"PyTorch fp32", "onnxruntime fp32", "onnxruntime int8"}
    assert scores["onnxruntime fp32"] == scores["PyTorch fp32"]  # the same predictions, row for row
    assert abs(scores["onnxruntime int8"] - scores["PyTorch fp32"]) <= 0.1
    assert "accuracy on the run's evaluation split (validation):" in out
    for label, score in scores.items():
        assert f"compact, {label:18} {score:.4f}" in out

    assert bench_main([str(run_dir), *benches[0][1:], *cheap]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "CPUExecutionProvider" in out and "int8 (dynamic)" in out
    result = read_summary(run_dir)[f"bench/cpu-float32-{BENCH_BATCH}x{BENCH_SEQ}-onnxruntime"]  # its own key
    assert result["speedup"] == result["dense_latency_ms"] / result["latency_ms"]
    int8 = result["int8"]
    assert int8["speedup"] == int8["dense_latency_ms"] / int8["latency_ms"]
    for rounds in (result["latency_rounds_ms"], int8["latency_rounds_ms"]):
        assert len(rounds["dense"]) == len(rounds["compact"]) == 3
    assert f"int8 over fp32: dense {result['dense_latency_ms'] / int8['dense_latency_ms']:.2f}x" in out
    assert result["flops_ratio"] > 1 and (result["batch"], result["seq_len"]) == (BENCH_BATCH, BENCH_SEQ)
    assert f"bench/cpu-float32-{BENCH_BATCH}x{BENCH_SEQ}" not in read_summary(run_dir)  # PyTorch's key stays apart

    assert export_main([str(run_dir), *exports[1][1:]]) == 0
    assert f"wrote {run_dir / 'tei'} for text-embeddings-inference" in capsys.readouterr().out
    check_tei_contract(run_dir / "tei", run_dir, tokenizer)


def test_tei_refuses_a_head_it_does_not_serve(tmp_path, capsys, tokenizer):
    needs_onnx()
    model_dir = tmp_path / "compact"
    save_compact(compact_of("qa"), model_dir)
    tokenizer.save_pretrained(model_dir)
    capsys.readouterr()  # what saving printed
    assert export_main([str(model_dir), "--target", "tei"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GrainBertForQuestionAnswering" in err and "--format onnx" in err
    assert not (tmp_path / "tei").exists()


def test_export_command_names_a_missing_model_or_extra(tmp_path, capsys, monkeypatch):
    assert export_main([str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    model_dir = tmp_path / "compact"
    compact_of("sequence").save_pretrained(model_dir)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    assert export_main([str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "not installed" in err and "pip install -e .[export]" in err
    assert not (model_dir / "onnx").exists()


def test_bench_onnxruntime_rejects_pytorch_only_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main([str(tmp_path), "--runtime", "onnxruntime", "--compile"])
    assert exit_info.value.code == 2
    assert "--runtime onnxruntime" in capsys.readouterr().err
