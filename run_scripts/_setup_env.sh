# Sourced by the run scripts: create the local virtualenv when missing, install
# lavislike into it (again only when setup.py changed), then activate it.
# LAVISLIKE_VENV overrides the location (default: .venv at the repo root).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAVISLIKE_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"

# A set-up killed half-way leaves a venv without pip: make it again rather than fail later.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
fi
# Importing torch and torchvision takes seconds and every run script passes here, so they
# are checked only when the stamp is stale: it holds setup.py's hash and the installed torch
# and torchvision versions (a failing import is what a wrong pairing gives, e.g. CPU torch
# 2.13 beside PyPI's torchvision).
stamp="$VENV/.lavislike-install-stamp"
fingerprint() {
  echo "$(sha256sum < "$REPO/setup.py" | cut -d' ' -f1) $("$VENV/bin/python" -c \
    'from importlib.metadata import version as v; print(v("torch"), v("torchvision"))' 2>/dev/null)"
}
now="$(fingerprint)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$now" ] \
    || ! "$VENV/bin/python" -c "import lavislike" >/dev/null 2>&1; then
  if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    # This build machine serves torch 2.14.1 / torchvision 0.29.1 from a local cache;
    # elsewhere any recent torch works.
    echo "[setup] installing torch"
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
      || "$VENV/bin/python" -m pip install -q "torch>=2.4" "torchvision>=0.19"
  fi
  if [ ! -f "$stamp" ] || [ "$(cut -d' ' -f1 "$stamp")" != "${now%% *}" ] \
      || ! "$VENV/bin/python" -c "import lavislike" >/dev/null 2>&1; then
    echo "[setup] installing lavislike and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q -e "$REPO[dev,video,plots,web]"
  fi
  fingerprint > "$stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$REPO"
