# One file, two images:
#   docker build --target api -t trainery-api .
#   docker build --target worker -t trainery-worker .                 (CPU torch + TensorFlow)
#   docker build --target worker --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       --build-arg TF_PACKAGE=tensorflow[and-cuda] -t trainery-worker:cuda .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRAINERY_DATA_DIR=/var/lib/trainery
WORKDIR /srv/trainery
COPY pyproject.toml README.md alembic.ini ./
COPY client ./client
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
# Least privilege: the services run as an unprivileged user who can write only the
# data directory (the code and the installed packages stay root-owned, read-only to it).
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/trainery trainery \
    && mkdir -p /var/lib/trainery && chown trainery:trainery /var/lib/trainery

# The API: no torch, no tensorflow (the API process never imports them). The server
# depends on trainery-client (the `trainery` command), installed from ./client alongside.
FROM base AS api
RUN pip install ./client .
USER trainery
EXPOSE 8000
# As `trainery api` (app/cli.py): --timeout-keep-alive longer than clients' (KEEP_ALIVE_S),
# --loop asyncio (LOOP: uvloop answered some polls hundreds of ms late under load),
# --no-access-log (the app logs its own request line).
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-keep-alive", "75", \
     "--loop", "asyncio", "--no-access-log"]

# A worker: supervisor plus both runners. CPU wheels by default; pass
# TORCH_INDEX (and TF_PACKAGE) for CUDA builds.
FROM base AS worker
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && pip install "${TF_PACKAGE}" \
    && pip install ./client ".[torch,keras]"
USER trainery
CMD ["trainery", "worker"]
