#!/usr/bin/env bash
# Fine-tune on your own data (captioning, VQA or retrieval) with the paper's recipe for the task.
# Usage: bash run_scripts/finetune.sh [recipe.yaml] --task captioning|vqa|retrieval --data PATH
#            [--val PATH] [--model NAME --model-type TYPE] [--output DIR] [a.b=c ...]
#        (NPROC=N for N processes; see `lavislike finetune --help`)
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
# no default config: the task's project recipe is the default
lavislike_torchrun finetune "" "$@"
