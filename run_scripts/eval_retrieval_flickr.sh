#!/usr/bin/env bash
# Zero-shot Flickr30K retrieval.
# Usage: bash run_scripts/eval_retrieval_flickr.sh [config.yaml] [a.b=c ...]   (NPROC=N for N processes)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
lavislike_torchrun evaluate projects/blip2/eval/ret_flickr_eval.yaml "$@"
