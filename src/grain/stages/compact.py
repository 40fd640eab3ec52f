"""Compact stage: slice the pruned student into a small dense model, check it, save it, benchmark it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from omegaconf import DictConfig

from grain.bench.measure import compare_models, format_table, serving_defaults
from grain.models.compact import is_compact
from grain.models.masks import attach_mask_hooks
from grain.models.slicing import compact_from_masked, expand_to_masked
from grain.tasks.base import model_inputs
from grain.tasks.evaluate import evaluate


@torch.inference_mode()
def max_output_diff(model_a, model_b, datamodule) -> float:
    """Largest |difference| between two models' task logits (the task's `prediction_logits`) over the
    eval splits of `datamodule` (a Task)."""
    largest = 0.0
    for model in (model_a, model_b):
        model.eval()
    device = next(model_a.parameters()).device
    for split in datamodule.eval_splits:
        for batch in datamodule.eval_dataloader(split):
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            pairs = zip(datamodule.prediction_logits(model_a(**inputs)), datamodule.prediction_logits(model_b(**inputs)))
            for a, b in pairs:
                largest = max(largest, float((a - b).abs().max()))
    return largest


def masked_reference(pruned, teacher, device: torch.device):
    """The masked student with its hooks, on `device`; rebuilt from the compact one if training compacted it."""
    masks = pruned.controller.masks()
    student = pruned.student
    if is_compact(student):
        student = expand_to_masked(student, copy.deepcopy(teacher), masks)
    on_device = {kind: mask.to(device) for kind, mask in masks.items()}
    handles = attach_mask_hooks(student, lambda layer, kind: on_device[kind][layer])
    return student.to(device), handles


def serving_device(trainer_cfg) -> torch.device:
    """The device the run trained on (Lightning hands the model back on the CPU after fit)."""
    accelerator = str(trainer_cfg.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def bench_shapes(compact_cfg, device: torch.device) -> list[tuple[int, int]]:
    """[batch, length] shapes to time: `compact.bench_batch` x `bench_seq_len` first, then
    `compact.bench_extra_shapes`; each null falls back to the device's default (`serving_defaults`)."""
    defaults = serving_defaults(device)[1]
    primary = (int(compact_cfg.bench_batch or defaults[0][0]), int(compact_cfg.bench_seq_len or defaults[0][1]))
    extra = compact_cfg.get("bench_extra_shapes")
    extra = defaults[1:] if extra is None else [tuple(int(v) for v in shape) for shape in extra]
    return [primary] + [shape for shape in extra if shape != primary]


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


def run_compact_stage(cfg: DictConfig, tokenizer, pruned, teacher, summary: dict, run_dir: Path) -> dict:
    datamodule = pruned.datamodule
    device = serving_device(cfg.trainer)
    masked, handles = masked_reference(pruned, teacher, device)
    if is_compact(pruned.student):
        compact = pruned.student
    else:
        pruned.controller.detach()
        compact, _ = compact_from_masked(masked, pruned.controller.masks())
    compact.to(device).eval()
    result = {
        "max_abs_logit_diff_vs_masked": max_output_diff(masked, compact, datamodule),
        "metrics": evaluate(compact, datamodule, "compact"),
        "compacted_during_training": is_compact(pruned.student),
    }
    result["metric"] = result["metrics"].get(f"validation/{cfg.task.metric}")
    out_dir = run_dir / "compact"
    compact.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result["path"] = str(out_dir)

    rank = cfg.compact.embedding_rank
    if rank:
        factorized, _ = compact_from_masked(masked, pruned.controller.masks(), embedding_rank=int(rank))
        factorized.to(device).eval()
        factorized_metrics = evaluate(factorized, datamodule, "compact (factorized embeddings)")
        result["embedding_factorized"] = {
            "rank": int(rank),
            "metric": factorized_metrics.get(f"validation/{cfg.task.metric}"),
            "metrics": factorized_metrics,
            "max_abs_logit_diff_vs_compact": max_output_diff(compact, factorized, datamodule),
            "params": sum(p.numel() for p in factorized.parameters()),
            "path": str(run_dir / "compact_factorized"),
        }
        factorized.save_pretrained(run_dir / "compact_factorized")
        tokenizer.save_pretrained(run_dir / "compact_factorized")
    for handle in handles:
        handle.remove()
    masked.cpu()  # only the benchmark's copies stay on the device

    seconds = float(cfg.compact.get("bench_seconds", 3.0))
    result.update(benchmark(teacher.eval(), compact, bench_shapes(cfg.compact, device), device, seconds))
    predicted = summary.get("student", {}).get("predicted_speedup")
    if predicted is not None:  # a speedup target: what the latency model promised, beside what was measured
        result["predicted_speedup"] = predicted
    write_model_card(out_dir, cfg, summary, result)
    return result


def write_model_card(out_dir: Path, cfg: DictConfig, summary: dict, compact: dict) -> None:
    student = summary.get("student", {})
    teacher = summary.get("teacher", {})
    rows = "\n".join(
        f"| {i} | {layer['qk_per_head']} | {layer['vo_per_head']} | {layer['ffn']} |"
        for i, layer in enumerate(student.get("layers", []))
    )
    content = f"""---
library_name: transformers
tags: [grain, structured-pruning, knowledge-distillation]
---

# {cfg.task.name} {cfg.model.name}, pruned with GRAIN to sparsity {student.get('sparsity', 0):.3f}

Load with `import grain` (registers the compact classes), then
`AutoModelFor...from_pretrained("<this dir>")`.

| | value |
|---|---|
| task | {cfg.task.name} ({summary.get('eval_split', 'validation')} split) |
| teacher | {teacher.get('path')} |
| target / achieved sparsity | {cfg.sparsity} / {student.get('sparsity', 0):.4f} |
| teacher {cfg.task.metric} | {teacher.get('metric')} |
| masked student {cfg.task.metric} | {student.get('metric')} |
| compact {cfg.task.metric} | {compact.get('metric')} |
| heads kept | {student.get('heads_kept')} / {student.get('heads_total')} |
| encoder linear params | {compact['encoder_params']:,} of {compact['dense_encoder_params']:,} |
| speedup ({compact['device']}, {compact['dtype']}, batch {compact['batch']} x {compact['seq_len']}) | {compact['speedup']:.2f}x (FLOPs ratio {compact['flops_ratio']:.2f}x) |

## Structure (kept QK and VO dims per head, FFN neurons per layer)

| layer | QK per head | VO per head | FFN |
|---|---|---|---|
{rows}
"""
    ModelCard(content).save(out_dir / "README.md")
