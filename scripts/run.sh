#!/usr/bin/env bash
# Run Trainery on this machine: the API on 127.0.0.1:${TRAINERY_PORT:-8000} and the
# worker fleet (one worker per GPU, or one CPU worker), on the embedded SQLite
# store under ./var. Prints which broker it chose. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
. .venv/bin/activate
export TRAINERY_DATA_DIR=${TRAINERY_DATA_DIR:-$PWD/var}
exec trainery up --port "${TRAINERY_PORT:-8000}"
