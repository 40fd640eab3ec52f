"""grain.bench.structure: the named structures are what the paper reports, run masks map onto
BERT-base, and the command prints and writes dense vs compact numbers."""

import json

import torch
from safetensors.torch import save_file

from grain.bench.structure import main, upsample
from grain.measure.structures import floor_masks, paper_5pct
from grain.models.masks import EncoderShape
from grain.pruning.ranking import encoder_linear_params, kept_linear_params, prunable_params
from tests.helpers.runs import readme_commands

BERT_BASE = EncoderShape(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072)
MINILM = EncoderShape(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536)


def kept_per_head(masks, kind, shape):
    return masks[kind].view(shape.num_layers, shape.num_heads, shape.head_dim).sum(-1).long().tolist()


def test_paper_5pct_is_the_papers_structure():
    masks = paper_5pct(BERT_BASE)
    qk = kept_per_head(masks, "qk", BERT_BASE)
    assert qk == kept_per_head(masks, "vo", BERT_BASE)
    assert qk[0] == [29, 29, 29] + [0] * 9 and all(row == [29, 29] + [0] * 10 for row in qk[1:])
    assert masks["ffn"].sum(-1).tolist() == [113] * 12 and masks["ffn"][:, :113].all()
    # density 5.07% of the prunable units' parameters (the target's measure: sparsity 0.9493), 5.10% of all
    # encoder linear weights (the never-pruned output biases of W_O and W_2 kept)
    kept_units = kept_linear_params(masks, BERT_BASE) - 12 * 2 * 768
    assert round(kept_units / prunable_params(BERT_BASE), 4) == 0.0507
    assert round(kept_linear_params(masks, BERT_BASE) / encoder_linear_params(BERT_BASE), 4) == 0.0510


def test_floor_keeps_one_unit_of_each_kind():
    masks = floor_masks(BERT_BASE)
    assert [m.sum().item() for m in masks.values()] == [12, 12, 12]


def test_upsample_keeps_each_heads_fraction_on_bert_base():
    masks = {kind: torch.zeros(6, n) for kind, n in MINILM.units_per_layer.items()}
    masks["qk"][2, 32:37] = 1    # layer 2, head 1: 5 of 32 QK units
    masks["vo"][2, 32:35] = 1    # 3 of 32 VO units
    masks["ffn"][2, :100] = 1
    masks["qk"][3, 0:4] = 1      # layer 3, head 0: QK units but no VO (an orphan)
    big = upsample(masks, MINILM, BERT_BASE)
    qk, vo = kept_per_head(big, "qk", BERT_BASE), kept_per_head(big, "vo", BERT_BASE)
    for layer in (4, 5):  # MiniLM layer 2 -> BERT-base layers 4 and 5
        assert qk[layer][1] == 10 and vo[layer][1] == 6 and big["ffn"][layer].sum() == 200
    assert sum(map(sum, qk)) == 20 and sum(map(sum, vo)) == 12  # the orphan QK units are not kept


def test_command_prints_and_writes_dense_vs_compact(tmp_path, capsys):
    out = tmp_path / "structure.json"
    assert main(["paper-5pct", "--device", "cpu", "--shapes", "1x8,2x4", "--min-run-time", "0.05",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "density 5.10%" in printed and "eager" in printed
    result, other = json.loads(out.read_text())
    assert (other["batch"], other["seq_len"]) == (2, 4)
    assert result["structure"] == "paper-5pct" and result["dtype"] == "float32"
    assert result["flops_ratio"] > 15 and result["speedup"] == result["dense_latency_ms"] / result["latency_ms"]


def test_command_refuses_masks_that_do_not_fit(tmp_path, capsys):
    save_file({kind: torch.ones(6, n) for kind, n in MINILM.units_per_layer.items()}, str(tmp_path / "masks.safetensors"))
    assert main([str(tmp_path), "--device", "cpu"]) == 2
    assert "give --upsample" in capsys.readouterr().err


def test_readme_structure_commands_run_as_written(tmp_path, capsys):
    """The README's `grain.bench.structure` commands, with a tiny shape appended (the last --shapes wins)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    masks = {kind: (torch.rand(6, n, generator=torch.Generator().manual_seed(0)) < 0.2).float()
             for kind, n in MINILM.units_per_layer.items()}
    save_file(masks, str(run_dir / "masks.safetensors"))
    commands = readme_commands("On GPUs", "grain.bench.structure")
    assert len(commands) == 3
    for words in commands:
        args = [str(run_dir) if arg.startswith("outputs/") else arg for arg in words]
        assert main(args + ["--device", "cpu", "--shapes", "1x8", "--min-run-time", "0.02"]) == 0, args
    assert capsys.readouterr().out.count("FLOPs-ideal") >= 3


def test_modernbert_base_with_random_grain_like_masks(tmp_path, capsys):
    """`--family modernbert random-0.9`: transformers' ModernBERT-base (random weights) against its compact
    form under GRAIN-like random masks (rotary pairs as QK units); a sparsity outside [0, 1) is refused."""
    out = tmp_path / "structure.json"
    assert main(["random-0.9", "--family", "modernbert", "--device", "cpu", "--shapes", "1x8",
                 "--min-run-time", "0.02", "--json", str(out)]) == 0
    assert "of modernbert-base's encoder linear weights" in capsys.readouterr().out
    [result] = json.loads(out.read_text())
    assert result["structure"] == "random-0.9" and result["flops_ratio"] > 3
    assert main(["random-1.5", "--device", "cpu"]) == 2
    assert "random-<sparsity> with a sparsity in [0, 1)" in capsys.readouterr().err
