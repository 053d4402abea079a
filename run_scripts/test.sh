#!/usr/bin/env bash
# The test suite (CPU, no network). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_setup_env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest tests -q -p no:cacheprovider "$@"
