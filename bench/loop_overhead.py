"""Loop overhead: Trainery's runner trainer against a minimal loop doing the same work.

(a) the runner's trainer with the real standard callbacks, metrics and checkpoints
written to a real SQLite store through JobReporter, against (b) a hand-written
PyTorch loop, or plain `model.fit` for Keras: the same model, data, batch order,
batch size, epochs and seed, in one process. Their per-epoch training losses must
agree to 1e-5, so both did the same work. The first epoch (tracing, compiling,
warm-up) is reported apart; throughput counts the epochs after it. The PyTorch
loops take turns epoch by epoch; the Keras ones run whole, alternating; --rounds
times either way. The fastest epoch of each decides (other processes on a shared
machine only ever add time); median and mean are printed beside it.

    python -m bench.loop_overhead --framework both
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from typing import Any

from app.core.spec import JobSpec
from bench.timing import LoopResult, Summary, compare, load_average, rounds
from workers import datasets

LOSS_TOLERANCE = 1e-5
TARGET_RATIO = 0.97
# Image shapes and models; the mlp is the preset without its dropout, so that
# both loops draw no random numbers and their losses can agree exactly.
MODELS: dict[str, tuple[list[int], dict[str, Any]]] = {
    "mlp": ([784], {"layers": [{"type": "dense", "units": 128, "activation": "relu"},
                               {"type": "dense", "units": 64, "activation": "relu"}]}),
    "lenet5": ([28, 28, 1], {"preset": "lenet5"}),
    "airbench": ([32, 32, 3], {"preset": "airbench"}),
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loop_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=["pytorch", "keras", "both"], default="both")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    p.add_argument("--samples", type=int, default=20_000, help="synthetic samples, 10%% held out")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile / XLA jit_compile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=4, help="runs of each loop, alternating")
    return p.parse_args(argv)


def job_spec(args: argparse.Namespace, framework: str) -> JobSpec:
    shape, model = MODELS[args.model]
    return JobSpec.model_validate({
        "name": f"bench-{args.model}", "framework": framework,
        "dataset": {"builtin": "synthetic", "n_samples": args.samples, "sample_shape": shape,
                    "num_classes": 10, "validation_split": 0.1, "seed": args.seed},
        "model": model,
        "training": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "optimizer": {"name": "adam", "lr": 1e-3}, "precision": args.precision,
                     "compile": args.compile, "seed": args.seed},
        "checkpoint": {"every_epochs": 1, "keep_last": 2},
    })


def run_pytorch(args: argparse.Namespace) -> tuple[Summary, Summary, str]:

    import torch

    from bench import torch_loops
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    cuda = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    spec = job_spec(args, "pytorch")
    data = datasets.load(spec.dataset)
    model = torch_loops.build(spec, data)  # each loop trains a copy: the same initial weights
    runner, reference = rounds(args.rounds, lambda runner_first: torch_loops.interleaved(
        spec, data, model, device,
        lambda twin: torch_loops.minimal_epochs(spec, data, twin, device),
        reference_first=not runner_first,
        names=("(a) Trainery loop, torch backend", "(b) minimal PyTorch loop")))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    return runner, reference, f"torch {torch.__version__} on {device}{gpu}{threads}"


def run_keras(args: argparse.Namespace) -> tuple[Summary, Summary, str]:
    import tensorflow as tf

    from bench import keras_loops  # first of this project's: it fixes Keras's backend
    from workers.runners.tfkeras.backend import configure_devices, dtype_policy_for

    if args.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("--device cuda: TensorFlow sees no GPU")
    has_gpu = args.device != "cpu" and bool(tf.config.list_physical_devices("GPU"))
    gpu = configure_devices("cuda" if has_gpu else "cpu")
    spec = job_spec(args, "keras")
    policy, note = dtype_policy_for(spec.training.precision, gpu)
    data = datasets.load(spec.dataset)

    def pair(runner_first: bool) -> tuple[LoopResult, LoopResult]:
        # Each run builds its model afresh from the seed: the same initial weights.
        def run_runner() -> LoopResult:
            model = keras_loops.build(spec, data, policy)
            return keras_loops.trainery_run(spec, data, model, policy)

        def run_reference() -> LoopResult:
            return keras_loops.fit_run(spec, data, keras_loops.build(spec, data, policy), policy)

        if runner_first:
            first = run_runner()
            return first, run_reference()
        second = run_reference()
        return run_runner(), second

    runner, reference = rounds(args.rounds, pair)
    if note:
        runner.runs[0].notes.append(note)
    keras = sys.modules["keras"]
    where = "GPU:0" if gpu is not None else "CPU:0"
    return runner, reference, (f"tensorflow {tf.__version__}, keras {keras.__version__} on "
                               f"{where}, policy {policy}")


def losses_agree(runner: Summary, reference: Summary) -> bool:
    """Print the per-epoch losses; whether every run's agree to LOSS_TOLERANCE."""
    pairs = [(a, b) for ra, rb in zip(runner.runs, reference.runs, strict=True)
             for a, b in zip(ra.losses, rb.losses, strict=True)]
    worst = max(abs(a - b) for a, b in pairs)
    first = zip(runner.runs[0].losses, reference.runs[0].losses, strict=True)
    print("per-epoch training loss, (a) / (b): " + ", ".join(f"{a:.6f}/{b:.6f}" for a, b in first))
    ok = worst <= LOSS_TOLERANCE
    print(f"largest difference {worst:.2e}: "
          + ("the same work" if ok else f"DISAGREE beyond {LOSS_TOLERANCE:g}"))
    return ok


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.framework == "both":
        # One process per framework, as the runners are: neither imports the other.
        codes = [subprocess.call([sys.executable, "-m", "bench.loop_overhead",
                                  *argv, "--framework", fw]) for fw in ("pytorch", "keras")]
        return max(codes)
    print(f"== loop overhead, {args.framework}: {args.model}, {args.samples} samples "
          f"(90% trained), {args.epochs} epochs x {args.rounds} rounds, batch {args.batch_size}, "
          f"{args.precision}{', compiled' if args.compile else ''}")
    print(f"machine: {platform.platform()}, python {platform.python_version()}; "
          f"load average {load_average()}")
    runner, reference, versions = (run_pytorch if args.framework == "pytorch"
                                   else run_keras)(args)
    print(versions)
    same = losses_agree(runner, reference)
    compare(runner, reference, TARGET_RATIO)
    print(f"load average after: {load_average()}")
    return 0 if same else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
