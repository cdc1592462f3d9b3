#!/usr/bin/env bash
# Run Trainery on this machine: the API on 127.0.0.1:${TRAINERY_PORT:-8000} and one
# worker, on the embedded SQLite store under ./var. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
. .venv/bin/activate
export TRAINERY_DATA_DIR=${TRAINERY_DATA_DIR:-$PWD/var}
mkdir -p "$TRAINERY_DATA_DIR"

if [ -z "${TRAINERY_BROKER_URL:-}" ]; then
    if python - <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
except OSError:
    sys.exit(1)
PY
    then
        export TRAINERY_BROKER_URL=redis://127.0.0.1:6379/0
        echo "run: broker = Redis at 127.0.0.1:6379 (found running)"
    elif command -v redis-server >/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --dir "$TRAINERY_DATA_DIR" --logfile "$TRAINERY_DATA_DIR/redis.log"
        sleep 0.5
        export TRAINERY_BROKER_URL=redis://127.0.0.1:6379/0
        echo "run: broker = Redis at 127.0.0.1:6379 (started redis-server)"
    else
        export TRAINERY_BROKER_URL="sqla+sqlite:///$TRAINERY_DATA_DIR/broker.db"
        echo "run: broker = embedded (kombu SQLAlchemy transport on $TRAINERY_DATA_DIR/broker.db);" \
             "no Redis here. Set TRAINERY_BROKER_URL to use one."
    fi
else
    echo "run: broker = $TRAINERY_BROKER_URL (from TRAINERY_BROKER_URL)"
fi
echo "run: database = ${TRAINERY_DATABASE_URL:-sqlite file $TRAINERY_DATA_DIR/trainery.db}"

alembic upgrade head
celery -A workers.celery_app worker -Q "${TRAINERY_QUEUE_PREFIX:-trainery}.default" \
    --pool solo --concurrency 1 --prefetch-multiplier 1 --without-gossip --without-mingle \
    -n "cpu0@%h" --loglevel INFO &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
echo "run: API on http://127.0.0.1:${TRAINERY_PORT:-8000} (docs at /docs)"
uvicorn app.main:app --host 127.0.0.1 --port "${TRAINERY_PORT:-8000}"
