#!/usr/bin/env bash
# Install Trainery into ./.venv: torch first (so a CPU-only box takes the CPU wheel
# that pip finds locally and a CUDA box takes the CUDA one), then the client
# distribution (./client: the SDK and the `trainery` command) and the server, both
# editable, in one pip call (the server depends on trainery-client).
#   scripts/setup.sh            the service with both runners (PyTorch, Keras/TensorFlow):
#                               the same spec trains in either, and a study may search both
#   scripts/setup.sh test       plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want=${1:-run}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.trainery-$want-$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    echo "setup: .venv is up to date for '$want'"
    exit 0
fi
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    # 2.13.0 is the release this project is tested with; pip picks the build
    # (CPU or CUDA) the machine's indexes offer.
    python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4,<2.15"
fi
extras="torch,keras"
[ "$want" = "test" ] && extras="torch,keras,dev"
python -m pip install -q -e ./client -e ".[$extras]"
# A venv from before the client split has a `trainery` whose uninstall takes the
# console script the client just installed with it: put the client's back.
[ -x .venv/bin/trainery ] || python -m pip install -q --no-deps --force-reinstall -e ./client
touch "$stamp"
echo "setup: installed trainery-client and trainery[$extras]"
