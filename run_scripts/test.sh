#!/usr/bin/env bash
# The test suite (CPU, no network). Extra arguments go to pytest.
# pytest-xdist runs it on one worker per core, at most 4 (each worker holds its own tiny
# models, and the distributed tests start two processes of their own):
# LAVISLIKE_TEST_WORKERS=N sets the number, 0 runs everything in this one process.
source "$(dirname "${BASH_SOURCE[0]}")/_setup_env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
workers="${LAVISLIKE_TEST_WORKERS:-$(nproc)}"
if [ -z "${LAVISLIKE_TEST_WORKERS:-}" ] && [ "$workers" -gt 4 ]; then workers=4; fi
python -m pytest tests -q -p no:cacheprovider -n "$workers" "$@"
