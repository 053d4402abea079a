#!/usr/bin/env bash
# The test suite (CPU, no network). Extra arguments go to pytest.
# pytest-xdist runs it on one worker per core, at most 4 (each worker holds its own tiny
# models, and the distributed tests start two processes of their own):
# LAVISLIKE_TEST_WORKERS=N sets the number, 0 runs everything in this one process.
source "$(dirname "${BASH_SOURCE[0]}")/_setup_env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cores="$(nproc)"
python -m pytest tests -q -p no:cacheprovider -n "${LAVISLIKE_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}" "$@"
