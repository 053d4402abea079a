#!/usr/bin/env bash
# On a GPU machine: the config matrix of tests/projects at tiny size on CUDA - every project
# YAML through `lavislike train` / `evaluate`, and the run-script subset with NCCL over every
# GPU (NPROC) - once per precision setting: fp16 AMP over frozen parts stored in fp16 (the
# OPT configs, with the grad scaler), bf16 AMP over bf16 frozen parts (FlanT5), and FSDP.
# Usage: bash bench/gpu_config_matrix.sh [pytest args]   (NPROC=N to use N GPUs)
source "$(dirname "${BASH_SOURCE[0]}")/../run_scripts/_setup_env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LAVISLIKE_MATRIX_DEVICE=cuda
export LAVISLIKE_MATRIX_NPROC="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
status=0
for extra in \
  "run.amp=true run.amp_dtype=fp16 model.image_encoder.precision=fp16 model.llm.dtype=fp16" \
  "run.amp=true run.amp_dtype=bf16 model.image_encoder.precision=bf16 model.llm.dtype=bf16" \
  "run.amp=true run.fsdp=true"; do
  echo "== $extra (NPROC=$LAVISLIKE_MATRIX_NPROC)"
  LAVISLIKE_MATRIX_EXTRA="$extra" python -m pytest tests/projects/test_config_matrix.py \
    tests/projects/test_config_matrix_ddp.py -q -p no:cacheprovider "$@" || status=1
done
exit $status
