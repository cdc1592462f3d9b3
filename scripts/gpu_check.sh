#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the GPU smoke test (a bf16 job trained on CUDA
# through a real API and worker, its TorchScript model loaded back and checked),
# then the benchmarks on the GPU (data-parallel scaling over every GPU too). Everything is printed and written to one file,
# whose figures go into docs/benchmarks.md.
#   scripts/gpu_check.sh                 output in var/gpu_check-<UTC time>.txt
#   scripts/gpu_check.sh OUT.txt
# Exits non-zero if any step failed; the later steps still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-var/gpu_check-$(date -u +%Y%m%dT%H%M%SZ).txt}
mkdir -p "$(dirname "$out")"
scripts/setup.sh test || exit 1
. .venv/bin/activate

if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: torch $(python -c 'import torch; print(torch.__version__)') sees no CUDA" \
         "device; nothing to check here (the gpu tests skip on CPU)" >&2
    exit 1
fi
# The smoke test's worker takes jobs from Redis on 127.0.0.1:6379, as scripts/test.sh sets up.
if ! python -c "import socket; socket.create_connection(('127.0.0.1', 6379), timeout=1)" 2>/dev/null
then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/trainery-gpu-check-redis.log
    sleep 0.5
fi

failed=()
step() {
    echo
    echo "\$ $*"
    "$@" || failed+=("$*")
}
{
    echo "== scripts/gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
    step python -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider --basetemp=var/gpu-check-pt
    # Larger epochs than the CPU default: a GPU runs 20k samples of lenet5 in well under
    # a second, and the loop's fixed per-epoch cost (metrics, checkpoint) would dominate.
    step python -m bench.loop_overhead --framework pytorch --device cuda --samples 200000
    step python -m bench.loop_overhead --framework pytorch --device cuda --samples 200000 \
        --precision bf16
    # tensorflow-cpu is what the keras extra installs: this runs on the CPU unless a
    # GPU build of TensorFlow is installed.
    step python -m bench.loop_overhead --framework keras --device auto
    step python -m bench.airbench --device cuda
    step python -m bench.airbench --device cuda --compile
    # Data-parallel scaling: the airbench preset as a 1-GPU job and as an N-GPU job (DDP,
    # one worker per GPU of this host); samples/s of each and the scaling efficiency.
    # A 1-GPU job never takes the DDP path (no process group, no wrapper), so a machine
    # with one GPU has nothing to compare; it runs the path on 2 CPU slots instead.
    if [ "$(nvidia-smi --list-gpus | wc -l)" -ge 2 ]; then
        step python -m bench.data_parallel
    else
        step python -m bench.data_parallel --cpu-slots 2 --quick
    fi
    echo
    if [ ${#failed[@]} -eq 0 ]; then
        echo "gpu_check: all steps passed"
    else
        printf 'gpu_check: FAILED: %s\n' "${failed[@]}"
    fi
    [ ${#failed[@]} -eq 0 ]
} 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
echo "gpu_check: output in $out"
exit "$rc"
