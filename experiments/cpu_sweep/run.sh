#!/usr/bin/env bash
# GRAIN vs head pruning vs random scores, MiniLM on SST-2, sparsity 0.8/0.9/0.95 (9 jobs).
# The teacher is fine-tuned by the first job and reused from the cache by the others.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GRAIN_DATA_DIR="${GRAIN_DATA_DIR:-$(cd ../shared/data 2>/dev/null && pwd || true)}"
sweep_dir="multirun/cpu_sweep_$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/python -m grain.run -m experiment=cpu_sweep hydra.sweep.dir="$sweep_dir" "$@"
.venv/bin/python -m grain.report "$sweep_dir" --out "$sweep_dir/report"
