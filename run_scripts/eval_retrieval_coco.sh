#!/usr/bin/env bash
# COCO retrieval.
# Usage: bash run_scripts/eval_retrieval_coco.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun evaluate projects/blip2/eval/ret_coco_eval.yaml "$@"
