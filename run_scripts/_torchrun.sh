# Sourced by the training / evaluation scripts: launch `lavislike $CMD` under torchrun
# (one process on one node: plain `python -m lavislike $CMD`, the same run).
#   NPROC: processes per node (default: every GPU, or 1 on CPU)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT: multi-node, as torchrun takes them
# Usage inside a script: lavislike_torchrun train <default-config> "$@"
# where "$@" is an optional config path (a .yaml) followed by a.b=c overrides.
source "$(dirname "${BASH_SOURCE[0]}")/_setup_env.sh"

lavislike_torchrun() {
  local cmd="$1" cfg="$2"; shift 2
  if [ $# -gt 0 ] && [[ "$1" == *.yaml ]]; then cfg="$1"; shift; fi
  local nproc="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
  if [ "$nproc" = 1 ] && [ "${NNODES:-1}" = 1 ]; then
    # one process needs no launcher, and without torchrun's failure report a user error
    # stays the one line lavislike prints, with its exit status (2)
    exec python -m lavislike "$cmd" --cfg-path "$cfg" "$@"
  fi
  # a config mistake is one line and exit status 2 here, before torchrun starts workers that
  # would each fail with a traceback and torchrun's failure report
  case "$cmd" in
    train|evaluate) python -m lavislike "$cmd" --check-config --cfg-path "$cfg" "$@" || exit $? ;;
  esac
  exec torchrun --nproc_per_node="$nproc" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29517}" \
    -m lavislike "$cmd" --cfg-path "$cfg" "$@"
}
