#!/usr/bin/env bash
# Fine-tune captioning on COCO.
# Usage: bash run_scripts/finetune_caption_coco.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun train projects/blip2/train/caption_coco_ft.yaml "$@"
