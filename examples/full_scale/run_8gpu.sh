#!/usr/bin/env bash
# The paper's schedule on one 8-GPU machine without SLURM (docs/full-scale.md).
# Resumable: run it again after an interruption; finished stages are skipped and an unfinished
# one resumes from its checkpoint_last.pt.  fairseq-train spawns one process per GPU itself.
#
#   bash examples/full_scale/run_8gpu.sh data/en-zh runs/paper-en-zh [N_GPUS]
set -euo pipefail
DATA=${1:?data directory from trelm-prepare}
OUT=${2:?output directory}
NGPU=${3:-8}
UPDATE_FREQ=$(( 8 / NGPU ))   # keep 128 x 512 tokens per update

trelm-stages "$DATA" "$OUT" --langs en,zh \
  --lr 3e-5 --warmup 500 --weight-decay 0.01 --adam-eps 1e-6 --clip-norm 5 \
  --updates-stage1 20000 --updates-stage2 20000 --updates-stage4 80000 \
  --max-tokens 8192 --update-freq "$UPDATE_FREQ" --tokens-per-sample 512 \
  --save-interval-updates 1000 \
  -- --fp16 --optimizer trelm_adamw --num-workers 4 --distributed-world-size "$NGPU"
