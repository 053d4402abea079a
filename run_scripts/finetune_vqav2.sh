#!/usr/bin/env bash
# Fine-tune VQA on VQAv2.
# Usage: bash run_scripts/finetune_vqav2.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun train projects/blip2/train/vqav2_ft.yaml "$@"
