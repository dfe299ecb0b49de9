#!/usr/bin/env bash
# Creates .venv and installs Infini Reader into it; does nothing when already up to date.
#   scripts/setup.sh          the application
#   scripts/setup.sh test     the application and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Infini Reader needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

stamp=".venv/.installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "Installing PyTorch with CUDA (a GPU was found)…"
            "${pip[@]}" install torch
        else
            # On machines that carry a local CPU build (as ours do) pip takes it from disk.
            echo "Installing PyTorch for the CPU…"
            "${pip[@]}" install torch==2.13.0
        fi
    fi
    echo "Installing Infini Reader${extra:+ with [$extra]}…"
    "${pip[@]}" install -e ".${extra:+[$extra]}"
    touch "$stamp"
fi

# The library tests also run on a PostgreSQL server they start themselves (tests/app/conftest.py):
# its programs come from the distribution. Not needed by the application; where they cannot be
# installed the PostgreSQL tests are skipped, with the reason in pytest's summary.
if [ "$extra" = test ] && ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
        && command -v apt-get >/dev/null 2>&1; then
    sudo=(); [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo=(sudo -n); }
    echo "Installing PostgreSQL for the library tests (apt-get)…"
    { "${sudo[@]}" apt-get install -y -q postgresql >/dev/null 2>&1 \
        || { "${sudo[@]}" apt-get update -q >/dev/null 2>&1 && "${sudo[@]}" apt-get install -y -q postgresql >/dev/null 2>&1; }; } \
        || echo "PostgreSQL could not be installed: its tests will be skipped" >&2
fi

# The built-in model (SmolLM2-135M-Instruct) is fetched once into the user data folder.
.venv/bin/infini model install --quiet
