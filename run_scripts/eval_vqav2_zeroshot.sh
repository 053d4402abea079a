#!/usr/bin/env bash
# Zero-shot VQAv2.
# Usage: bash run_scripts/eval_vqav2_zeroshot.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun evaluate projects/blip2/eval/vqav2_zeroshot_opt_eval.yaml "$@"
