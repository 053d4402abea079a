#!/usr/bin/env bash
# Zero-shot NoCaps captioning.
# Usage: bash run_scripts/eval_nocaps.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun evaluate projects/blip2/eval/caption_nocaps_eval.yaml "$@"
