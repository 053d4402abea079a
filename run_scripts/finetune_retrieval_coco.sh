#!/usr/bin/env bash
# Fine-tune retrieval on COCO.
# Usage: bash run_scripts/finetune_retrieval_coco.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun train projects/blip2/train/retrieval_coco_ft.yaml "$@"
