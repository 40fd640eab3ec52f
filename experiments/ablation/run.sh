#!/usr/bin/env bash
# GRAIN vs GRAIN without structure regularization / gradient separation / hidden-state loss, and
# head-level units; MiniLM on SST-2 at sparsity 0.9 (override with sparsity=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
export GRAIN_DATA_DIR="${GRAIN_DATA_DIR:-$(cd ../shared/data 2>/dev/null && pwd || true)}"
sweep_dir="multirun/ablation_$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/python -m grain.run -m experiment=ablation hydra.sweep.dir="$sweep_dir" "$@"
.venv/bin/python -m grain.report "$sweep_dir" --out "$sweep_dir/report" --structure
