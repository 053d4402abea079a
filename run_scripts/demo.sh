#!/usr/bin/env bash
# The end-to-end demo on CPU: BLIP-2 pre-trained in two stages at toy scale on the
# synthetic corpus, then evaluated zero-shot, each number next to its blind baseline.
# Sets itself up (.venv), then runs `python -m lavislike_demo` (see its --help).
#   LAVISLIKE_CACHE   where the corpus and the frozen models go (default ~/.cache/lavislike)
#   LAVISLIKE_OUTPUT  where the runs and the report go (default ./output)
# Extra arguments go to the demo (e.g. --quick for the seconds-long smoke size).
start=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/_setup_env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LAVISLIKE_OUTPUT="${LAVISLIKE_OUTPUT:-$PWD/output}"
echo "[demo] setup done in $((SECONDS - start)) s"
status=0
python -m lavislike_demo "$@" || status=$?
echo "[demo] wall time including setup: $((SECONDS - start)) s (exit status $status)"
exit $status
