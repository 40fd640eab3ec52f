"""Compact stage: slice the pruned student into a small dense model, check it, save it, benchmark it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from omegaconf import DictConfig

from grain.bench.measure import compare_models, format_table
from grain.data.base import model_inputs
from grain.distill.losses import prediction_logits
from grain.metrics.evaluate import evaluate
from grain.models.compact import GrainBertPreTrainedModel
from grain.models.masks import attach_mask_hooks
from grain.models.slicing import compact_from_masked, expand_to_masked


@torch.inference_mode()
def max_output_diff(model_a, model_b, datamodule, task_type: str) -> float:
    """Largest |difference| between two models' task logits over the eval splits."""
    largest = 0.0
    for model in (model_a, model_b):
        model.eval()
    device = next(model_a.parameters()).device
    for split in datamodule.eval_splits:
        for batch in datamodule.eval_dataloader(split):
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            for a, b in zip(prediction_logits(model_a(**inputs), task_type), prediction_logits(model_b(**inputs), task_type)):
                largest = max(largest, float((a - b).abs().max()))
    return largest


def masked_reference(pruned, teacher):
    """The masked student with its hooks; rebuilt from the compact one if training compacted it."""
    masks = pruned.controller.masks()
    student = pruned.student
    if isinstance(student, GrainBertPreTrainedModel):
        student = expand_to_masked(student, copy.deepcopy(teacher), masks)
    handles = attach_mask_hooks(student, lambda layer, kind: masks[kind][layer])
    return student, handles


def run_compact_stage(cfg: DictConfig, tokenizer, pruned, teacher, summary: dict, run_dir: Path) -> dict:
    datamodule = pruned.datamodule
    task_type = cfg.task.type
    masked, handles = masked_reference(pruned, teacher)
    if isinstance(pruned.student, GrainBertPreTrainedModel):
        compact = pruned.student
    else:
        pruned.controller.detach()
        compact, _ = compact_from_masked(masked, pruned.controller.masks())
    compact.eval()
    result = {
        "max_abs_logit_diff_vs_masked": max_output_diff(masked, compact, datamodule, task_type),
        "metrics": evaluate(compact, datamodule, "compact"),
        "compacted_during_training": isinstance(pruned.student, GrainBertPreTrainedModel),
    }
    result["metric"] = result["metrics"].get(f"validation/{cfg.task.metric}")
    out_dir = run_dir / "compact"
    compact.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result["path"] = str(out_dir)

    rank = cfg.compact.embedding_rank
    if rank:
        factorized, _ = compact_from_masked(masked, pruned.controller.masks(), embedding_rank=int(rank))
        factorized.eval()
        factorized_metrics = evaluate(factorized, datamodule, "compact (factorized embeddings)")
        result["embedding_factorized"] = {
            "rank": int(rank),
            "metric": factorized_metrics.get(f"validation/{cfg.task.metric}"),
            "metrics": factorized_metrics,
            "max_abs_logit_diff_vs_compact": max_output_diff(compact, factorized, datamodule, task_type),
            "params": sum(p.numel() for p in factorized.parameters()),
            "path": str(run_dir / "compact_factorized"),
        }
        factorized.save_pretrained(run_dir / "compact_factorized")
        tokenizer.save_pretrained(run_dir / "compact_factorized")
    for handle in handles:
        handle.remove()

    dense = teacher.eval()
    result.update(compare_models(dense, compact, cfg.compact.bench_batch, cfg.compact.bench_seq_len))
    print(format_table(result))
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
| speedup ({compact['device']}, batch {compact['batch']} x {compact['seq_len']}) | {compact['speedup']:.2f}x (FLOPs ratio {compact['flops_ratio']:.2f}x) |

## Structure (kept QK and VO dims per head, FFN neurons per layer)

| layer | QK per head | VO per head | FFN |
|---|---|---|---|
{rows}
"""
    ModelCard(content).save(out_dir / "README.md")
