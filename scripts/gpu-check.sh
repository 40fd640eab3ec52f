#!/usr/bin/env bash
# grain's GPU checks in one call, for a CUDA machine (a lent GPU machine has no network and no hydra:
# prepare with `make gpu-pack` here, send .gpu along, run `source .gpu/env.sh; bash scripts/gpu-check.sh`).
#
# Steps, each with its own time limit, in order of importance:
#   pytest      the tests marked gpu (exactness of the GPU plan in fp32/bf16, CUDA-graph capture, pruning on CUDA)
#   structure   paper-5pct on a BERT-base shape, bf16, 128 x 512 and 32 x 128, eager and compiled (CUDA graphs)
#   floor       the floor structure at 128 x 512 (must be faster than any pruned model)
#   run-bf16    a tiny end-to-end `grain.run trainer=gpu` (bf16-mixed); run-fp32: the same with 32-true
#   steptime    GRAIN step / plain KD step on a BERT-base shape, bf16-mixed
#   modernbert  ModernBERT-base at a GRAIN-like sparsity 0.9 (random-0.9), bf16, 128 x 512 and 32 x 128, eager
# Writes under $OUT (default ./gpu-check-out): one log per step, steps.txt, and gpu-check.json with every
# number; prints a short table last.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export GRAIN_CACHE_DIR=${GRAIN_CACHE_DIR:-/tmp/grain-cache}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$OUT/steps.txt"
}
: >"$OUT/steps.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv >"$OUT/gpu.txt" 2>&1
BERT_BASE="model.random_config.num_hidden_layers=12 model.random_config.hidden_size=768 model.random_config.num_attention_heads=12 model.random_config.intermediate_size=3072"
TINY_RUN="model=tiny trainer=gpu trainer.max_steps=30 task.max_train_samples=512 task.max_eval_samples=256 logger=csv"

step pytest 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step structure 240 $PY -m grain.bench.structure paper-5pct --shapes 128x512,32x128 --compile reduce-overhead \
  --min-run-time 2 --json "$OUT/structure-paper-5pct.json"
step floor 120 $PY -m grain.bench.structure floor --shapes 128x512 --compile reduce-overhead \
  --min-run-time 2 --json "$OUT/structure-floor.json"
step run-bf16 150 $PY -m grain.run $TINY_RUN paths.root_dir=/tmp/gpu-check-bf16 "hydra.run.dir=$OUT/run-bf16"
step run-fp32 150 $PY -m grain.run $TINY_RUN trainer.precision=32-true paths.root_dir=/tmp/gpu-check-fp32 "hydra.run.dir=$OUT/run-fp32"
step steptime 180 $PY -m grain.bench.steptime --model tiny --batch 32 --seq-len 128 --steps 40 \
  --json "$OUT/steptime.json" $BERT_BASE trainer.precision=bf16-mixed
step modernbert 120 $PY -m grain.bench.structure random-0.9 --family modernbert --shapes 128x512,32x128 --compile none \
  --min-run-time 2 --json "$OUT/structure-modernbert.json"

$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None
result = {
    "gpu": (out / "gpu.txt").read_text().strip().splitlines()[-1] if (out / "gpu.txt").exists() else None,
    "steps": (out / "steps.txt").read_text().split("\n"),
    "structure": sum((load(f"structure-{name}.json") or [] for name in ("paper-5pct", "floor", "modernbert")), []),
    "steptime": load("steptime.json"),
    "runs": {name: (load(f"{name}/summary.json") or {}).get("compact") for name in ("run-bf16", "run-fp32")},
}
(out / "gpu-check.json").write_text(json.dumps(result, indent=2, default=str))
print("\n".join(result["steps"]))
print(f"{'structure':12} {'shape':9} {'mode':16} {'dense ms':>9} {'compact ms':>10} {'speedup':>8} {'ideal':>6}")
for r in result["structure"]:
    print(f"{r['structure']:12} {r['batch']}x{r['seq_len']:<6} {str(r['compiled'] or 'eager'):16} "
          f"{r['dense_latency_ms']:9.2f} {r['latency_ms']:10.2f} {r['speedup']:7.2f}x {r['flops_ratio']:5.1f}x")
for name, compact in result["runs"].items():
    if compact:
        print(f"{name}: compact.device {compact['device']} dtype {compact['dtype']} speedup {compact['speedup']:.2f}x "
              f"max|compact-masked| {compact['max_abs_logit_diff_vs_masked']:.2e}")
    else:
        print(f"{name}: no summary (see {name}.log)")
if result["steptime"]:
    print(f"steptime: GRAIN / KD in the scoring window {result['steptime']['scoring_ratio']:.2f}")
PY
