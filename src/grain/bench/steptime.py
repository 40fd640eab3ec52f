"""`python -m grain.bench.steptime`: training-step time of GRAIN against plain KD on the same batches.

Both runs distil the same student (a copy of the teacher, MiniLM by default) on one fixed batch of
random tokens ([batch, seq_len], no padding) for `--steps` steps; GRAIN prunes between
`pruner.start` and `pruner.end` and, by default, compacts the student when pruning ends. Prints the
step-time ratio inside the scoring window (mask-gradient pass on) and over the whole run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir

from grain.conf import CONFIG_DIR
from grain.models.backbone import load_task_model
from grain.models.inputs import random_batch
from grain.stages.prune import build_student_module
from grain.tasks.base import task_class


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def _now(self, pl_module) -> float:
        self.device = str(pl_module.device)
        if pl_module.device.type == "cuda":  # the step's kernels run asynchronously: wait for them
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(self._now(pl_module) - self._start)


def fixed_batches(config, batch: int, seq_len: int, steps: int):
    """`steps` references to one batch of random tokens (`random_batch`) with random labels 0/1, built on
    the host (Lightning moves it)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    one = {**random_batch(config, batch, seq_len), "labels": torch.randint(0, 2, (batch,), generator=generator, device="cpu")}
    return [one] * steps


def time_run(overrides: list[str], steps: int, batch: int, seq_len: int) -> tuple[StepTimer, object]:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=overrides + ["student.init=teacher"])
    teacher = load_task_model(cfg.model, task_class(cfg).auto_model_class, 2)  # the batches' labels: 0 or 1
    module = build_student_module(cfg, teacher, 2)
    timer = StepTimer()
    loader = torch.utils.data.DataLoader(fixed_batches(teacher.config, batch, seq_len, steps), batch_size=None)
    trainer = pl.Trainer(
        accelerator="auto", devices=1, precision=cfg.trainer.precision, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, callbacks=[timer], limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer, module.controller


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.bench.steptime", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "overrides", nargs="*",
        help="extra Hydra overrides for both runs (trainer.precision=bf16-mixed sets the precision; default 32-true)",
    )
    args = parser.parse_args(argv)
    common = [f"model={args.model}", f"sparsity={args.sparsity}", *args.overrides]
    kd_timer, _ = time_run(common + ["pruner=none"], args.steps, args.batch, args.seq_len)
    grain_timer, controller = time_run(common + ["pruner=grain"], args.steps, args.batch, args.seq_len)
    kd_times, grain_times = kd_timer.times, grain_timer.times
    schedule = controller.schedule
    skip = 2  # first steps warm up allocators and kernels
    kd = statistics.median(kd_times[skip:])
    scoring = [t for step, t in enumerate(grain_times) if skip <= step <= schedule.end_step]
    after = [t for step, t in enumerate(grain_times) if step > schedule.end_step + 1]
    result = {
        "kd_step_ms": kd * 1e3,
        "scoring_step_ms": statistics.median(scoring) * 1e3,
        "scoring_ratio": statistics.median(scoring) / kd,
        "after_pruning_ratio": statistics.median(after) / kd if after else None,
        "whole_run_ratio": sum(grain_times[skip:]) / sum(kd_times[skip:]),
        "achieved_sparsity": controller.sparsity(),
        "device": grain_timer.device,
        "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "overrides": common,
    }
    print(f"plain KD step:                {kd * 1e3:8.1f} ms (median of {len(kd_times) - skip})")
    print(f"GRAIN step, scoring window:   {result['scoring_step_ms']:8.1f} ms -> ratio {result['scoring_ratio']:.2f}")
    if after:
        after_ms = statistics.median(after) * 1e3
        print(f"GRAIN step, after pruning:    {after_ms:8.1f} ms -> ratio {result['after_pruning_ratio']:.2f}")
    print(f"whole run ({args.steps} steps, scoring until step {schedule.end_step}): ratio {result['whole_run_ratio']:.2f}; "
          f"achieved sparsity {result['achieved_sparsity']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
