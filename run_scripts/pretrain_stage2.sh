#!/usr/bin/env bash
# Stage 2 (generative learning): Q-Former + projection into a frozen OPT.
# Usage: bash run_scripts/pretrain_stage2.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun train projects/blip2/train/pretrain_stage2.yaml "$@"
