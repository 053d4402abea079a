#!/usr/bin/env bash
# The web app (captioning, VQA, image-text matching, text-to-image search) on
# http://127.0.0.1:7860. Sets itself up (.venv), then runs `lavislike serve`.
# With no arguments it serves the model `bash run_scripts/demo.sh` trained (offline);
# otherwise: --model NAME [--model-type TYPE] | --checkpoint PATH, --image-folder DIR,
# --host ADDRESS (default 127.0.0.1), --port N (see `lavislike serve --help`).
#   LAVISLIKE_OUTPUT  where the demo wrote its runs (default ./output)
source "$(dirname "${BASH_SOURCE[0]}")/_setup_env.sh"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False
export LAVISLIKE_OUTPUT="${LAVISLIKE_OUTPUT:-$PWD/output}"
exec python -m lavislike serve "$@"
