"""Compact stage: the pruned student as a small dense model, evaluated, saved and benchmarked.

A student compacted during training (`pruner.compact_after_end`) is the compact model already; any
other is compacted here. Either way the compaction checked itself against the masked model where it
happened (`grain.models.slicing.compaction_diff`); its measured difference is reported.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from omegaconf import DictConfig

from grain.errors import writing
from grain.measure.compare import bench_shapes, compare_models, format_table, serving_defaults, serving_device
from grain.models.registry import is_compact
from grain.models.self_contained import auto_class_name, save_compact
from grain.models.slicing import compact_from_masked, factorized_copy
from grain.models.vocabulary import (
    embedding_parameters,
    prune_word_embeddings,
    pruned_tokenizer,
    renumbering,
    used_token_ids,
)
from grain.stages.trainer import build_datamodule
from grain.target import Target
from grain.tasks.evaluate import evaluate


def benchmark(dense, compact, shapes: list[tuple[int, int]], device: torch.device, seconds: float = 3.0) -> dict:
    """compare_models on `device` in its serving dtype, at every shape; the first shape's numbers
    are the result's top level, all shapes are under `shapes`."""
    dtype = serving_defaults(device)[0]
    dense = copy.deepcopy(dense).to(device=device, dtype=dtype).eval()
    compact = copy.deepcopy(compact).to(device=device, dtype=dtype).eval()
    runs = [compare_models(dense, compact, batch, seq_len, min_run_time=seconds) for batch, seq_len in shapes]
    for run in runs:
        print(format_table(run))
    keys = ("batch", "seq_len", "latency_ms", "dense_latency_ms", "speedup", "flops", "kept_flops", "dense_flops", "flops_ratio")
    return {**runs[0], "shapes": [{key: run[key] for key in keys} for run in runs]}


def task_vocabulary(cfg: DictConfig, compact, tokenizer, datamodule) -> tuple:
    """compact.vocabulary=task: a copy of `compact` with only the word embeddings of the tokens the task's
    training and evaluation splits hold (and the special tokens), its renumbered tokenizer
    (`grain.models.vocabulary`), and what they give: tokens and embedding parameters kept, and the
    copy's metrics on the eval splits re-tokenized by that tokenizer. The re-tokenized eval splits are
    checked to hold the same tokens renumbered (RuntimeError otherwise: the tokenizer would be wrong)."""
    tables = [datamodule.dataset(split) for split in ["train", *datamodule.eval_splits]]
    rows = (row for table in tables for column in table.column_names if column.endswith("input_ids")
            for row in table[column])  # only the id columns (a reranker's triples hold negative_input_ids too)
    kept = used_token_ids(rows, tokenizer)
    small_tokenizer = pruned_tokenizer(tokenizer, kept)
    small = copy.deepcopy(compact)
    prune_word_embeddings(small, kept)
    retokenized = build_datamodule(cfg, small_tokenizer, cfg.student.batch_size, cfg.student.max_train_samples)
    retokenized.setup("validate")
    new_id = renumbering(kept)
    for split in datamodule.eval_splits:
        expected = [[new_id[i] for i in row] for row in datamodule.dataset(split)["input_ids"]]
        if retokenized.dataset(split)["input_ids"] != expected:
            raise RuntimeError(f"compact.vocabulary=task: the pruned tokenizer tokenizes the {split} split differently")
    metrics = evaluate(small, retokenized, "compact (task vocabulary)")
    return small, small_tokenizer, {
        "tokens_kept": len(kept),
        "tokens_total": len(tokenizer),
        "embedding_params": embedding_parameters(small),
        "full_embedding_params": embedding_parameters(compact),
        "params": sum(p.numel() for p in small.parameters()),
        "metric": metrics.get(f"validation/{cfg.task.metric}"),
        "metrics": metrics,
    }


def run_compact_stage(cfg: DictConfig, tokenizer, pruned, teacher, summary: dict, run_dir: Path) -> dict:
    datamodule = pruned.datamodule
    device = serving_device(cfg.trainer)
    compacted_in_training = is_compact(pruned.student)
    if compacted_in_training:
        compact = pruned.student
    else:
        compact, _ = compact_from_masked(pruned.student, pruned.controller.masks())
        pruned.controller.detach()
    compact.to(device).eval()
    result = {
        "max_abs_logit_diff_vs_masked": getattr(compact, "compaction_max_abs_diff", None),
        "metrics": evaluate(compact, datamodule, "compact"),
        "compacted_during_training": compacted_in_training,
        "embedding_params": embedding_parameters(compact),  # of `params` (benchmark): those without them follow
    }
    result["metric"] = result["metrics"].get(f"validation/{cfg.task.metric}")
    saved, saved_tokenizer = compact, tokenizer
    if cfg.compact.get("vocabulary") == "task":
        saved, saved_tokenizer, result["vocabulary"] = task_vocabulary(cfg, compact, tokenizer, datamodule)
    out_dir = run_dir / "compact"
    with writing(out_dir):
        save_compact(saved, out_dir)
        saved_tokenizer.save_pretrained(out_dir)
        datamodule.save_model_files(out_dir)  # what the task's users load it with (a sentence-transformers folder)
    result["path"] = str(out_dir)

    rank = cfg.compact.embedding_rank
    if rank:
        factorized = factorized_copy(compact, int(rank))
        factorized_metrics = evaluate(factorized, datamodule, "compact (factorized embeddings)")
        result["embedding_factorized"] = {
            "rank": int(rank),
            "metric": factorized_metrics.get(f"validation/{cfg.task.metric}"),
            "metrics": factorized_metrics,
            "params": sum(p.numel() for p in factorized.parameters()),
            "path": str(run_dir / "compact_factorized"),
        }
        with writing(run_dir / "compact_factorized"):
            save_compact(factorized, run_dir / "compact_factorized")
            tokenizer.save_pretrained(run_dir / "compact_factorized")
            datamodule.save_model_files(run_dir / "compact_factorized")

    seconds = float(cfg.compact.get("bench_seconds", 3.0))
    result.update(benchmark(teacher.eval(), compact, bench_shapes(cfg.compact, device), device, seconds))
    predicted = summary.get("student", {}).get("predicted_speedup")
    if predicted is not None:  # a speedup target: what the latency model promised, beside what was measured
        result["predicted_speedup"] = predicted
    write_model_card(out_dir, cfg, summary, result, auto_class_name(compact))
    return result


def write_model_card(out_dir: Path, cfg: DictConfig, summary: dict, compact: dict, auto: str) -> None:
    """README.md of the compact folder; `auto`: the Auto class that loads it (auto_class_name)."""
    student = summary.get("student", {})
    teacher = summary.get("teacher", {})
    target = Target.of(cfg)
    achieved = (
        f"{student.get('sparsity', 0):.4f}" if target.kind == "sparsity"
        else f"{student.get('predicted_speedup', 0):.2f}x predicted, {compact['speedup']:.2f}x measured"
    )
    rows = "\n".join(
        f"| {i} | {layer['qk_per_head']} | {layer['vo_per_head']} | {layer['ffn']} |"
        for i, layer in enumerate(student.get("layers", []))
    )
    metric = cfg.task.metric
    shape = f"{compact['device']}, {compact['dtype']}, batch {compact['batch']} x {compact['seq_len']}"
    content = f"""---
library_name: transformers
tags: [grain, structured-pruning, knowledge-distillation]
---

# {cfg.task.name} {cfg.model.name}, pruned with GRAIN to {target}

This folder holds its own modeling code (the `.py` files beside the weights; they import only torch
and transformers 5). Load it where grain is not installed with

```python
from transformers import {auto}
model = {auto}.from_pretrained("<this dir>", trust_remote_code=True)
```

or, where grain is installed, `import grain` first (it registers the same classes) and leave out
`trust_remote_code`. `python -m grain.export <run dir> --format onnx` writes it as ONNX (fp32, and int8
with `--quantize int8`); `--target tei` lays out a folder for text-embeddings-inference.

| | value |
|---|---|
| task | {cfg.task.name} ({summary.get('eval_split', 'validation')} split) |
| teacher | {teacher.get('path')} |
| target / achieved {target.kind} | {target.value:g} / {achieved} |
| sparsity (prunable units' parameters removed) | {student.get('sparsity', 0):.4f} |
| encoder linear weights removed | {student.get('encoder_linear_sparsity', 0):.4f} |
| teacher {metric} | {_number(teacher.get('metric'))} |
| masked student {metric} | {_number(student.get('metric'))} |
| compact {metric} | {_number(compact.get('metric'))} |
| heads kept | {student.get('heads_kept')} / {student.get('heads_total')} |
| encoder linear params | {compact['encoder_params']:,} of {compact['dense_encoder_params']:,} |
| speedup ({shape}) | {compact['speedup']:.2f}x (FLOPs ratio {compact['flops_ratio']:.2f}x) |

## Structure (kept QK and VO dims per head, FFN neurons per layer)

| layer | QK per head | VO per head | FFN |
|---|---|---|---|
{rows}
"""
    with writing(out_dir / "README.md"):
        ModelCard(content).save(out_dir / "README.md")


def _number(value) -> str:
    """A metric as the card shows it: 4 significant digits, or n/a."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"
