#!/usr/bin/env bash
# The paper's settings for BERT-base on one task (default sst2), on a GPU:
#   experiments/paper/run.sh sst2|mnli|qnli|qqp|squad|conll2003 [extra overrides]
# On a SLURM cluster add: hydra/launcher=grain_slurm trainer=ddp trainer.devices=4 -m
set -euo pipefail
cd "$(dirname "$0")/../.."
task="${1:-sst2}"; shift || true
case "$task" in
  squad) preset=paper_squad ;;
  conll2003) preset=paper_conll ;;
  *) preset="paper_glue task=$task" ;;
esac
.venv/bin/python -m grain.run experiment=$preset "$@"
