#!/usr/bin/env bash
# Zero-shot GQA.
# Usage: bash run_scripts/eval_gqa_zeroshot.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun evaluate projects/blip2/eval/gqa_zeroshot_opt_eval.yaml "$@"
