#!/usr/bin/env bash
# Stage 1 (representation learning): Q-Former on a frozen image encoder.
# Usage: bash run_scripts/pretrain_stage1.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun train projects/blip2/train/pretrain_stage1.yaml "$@"
