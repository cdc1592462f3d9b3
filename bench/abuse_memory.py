"""What hostile requests cost the API in memory: the worst cases of issue 12, alone and 8 at once.

A real API (uvicorn, SQLite) on a loopback port; before each case the process's peak RSS
is reset (/proc/PID/clear_refs, 5) and read back after it (VmHWM), so the figure is the
peak over the case, minus the resident memory the idle API had. Cases:

- npz_header_lie: a few hundred bytes whose x.npy header claims a 1 GB array
- npz_zeros: a ~1.9 MB npz of zeros that inflates to 1.9 GB
- json_50mb: a 50 MB JSON job spec with a Content-Length; json_50mb_chunked: the same
  body sent chunked (no Content-Length)
- events_overflow: GET /v1/jobs/{id}/events?after=2**63
- upload_ok: an accepted npz of --ok-mib MiB (float32 features), for scale

Target: no case moves the API's resident memory by more than 256 MB.

    python -m bench.abuse_memory [--ok-mib 120] [--parallel 8]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from app.db import migrate
from bench.stack import Stack

TARGET_MB = 256.0
ZEROS_BYTES = 1_900_000_000
MB = 1_000_000

Case = Callable[[httpx.Client], str]


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def header_lie() -> bytes:
    """x.npy claims 125e6 float64 (1 GB) and holds 64 bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _npy_header((125_000_000,)) + bytes(64))
        zf.writestr("y.npy", _npy(np.arange(2)))
    return buffer.getvalue()


def zeros_bomb(path: Path) -> bytes:
    """An npz whose x (float64 zeros, 1.9 GB) deflates to ~1.9 MB; built once, streamed."""
    if not path.exists():
        rows = ZEROS_BYTES // (8 * 100)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as f:
                f.write(_npy_header((rows, 100)))
                chunk = bytes(16 << 20)
                left = rows * 100 * 8
                while left:
                    f.write(chunk[:min(left, len(chunk))])
                    left -= min(left, len(chunk))
            zf.writestr("y.npy", _npy(np.arange(rows) % 2))
    return path.read_bytes()


def ok_uploads(mib: int) -> Case:
    """A different accepted npz each call (the same bytes again would be found, not parsed)."""
    seeds = itertools.count()

    def send(client: httpx.Client) -> str:
        rng = np.random.default_rng(next(seeds))
        rows = (mib << 20) // (4 * 256)
        buffer = io.BytesIO()
        np.savez(buffer, x=rng.standard_normal((rows, 256), dtype=np.float32),
                 y=(np.arange(rows) % 10))
        return upload(buffer.getvalue(), "ok.npz")(client)
    return send


def upload(payload: bytes, name: str) -> Case:
    def send(client: httpx.Client) -> str:
        r = client.post("/v1/datasets", files={"file": (name, payload)})
        return str(r.status_code)
    return send


def big_json(chunked: bool) -> Case:
    spec = {"name": "big", "framework": "pytorch", "dataset": {"builtin": "iris"},
            "model": {"layers": [{"type": "dense", "units": 4}] * 1_600_000}}
    body = json.dumps(spec).encode()  # ~50 MB

    def send(client: httpx.Client) -> str:
        content = (body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20))
        try:
            r = client.post("/v1/jobs", content=content if chunked else body,
                            headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:  # the server answered and closed while we sent
            return type(exc).__name__
        return str(r.status_code)
    return send


def events_overflow(job_id: str) -> Case:
    def send(client: httpx.Client) -> str:
        return str(client.get(f"/v1/jobs/{job_id}/events", params={"after": 2**63}).status_code)
    return send


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def measure(pid: int, url: str, case: Case, parallel: int) -> tuple[float, float, list[str]]:
    """(peak RSS over the case minus RSS before it, in MB; seconds; the answers)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_kb(pid, "VmRSS")
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        def one(_: int) -> str:
            with httpx.Client(base_url=url, timeout=300) as client:
                return case(client)
        answers = list(pool.map(one, range(parallel)))
    elapsed = time.perf_counter() - started
    return (rss_kb(pid, "VmHWM") - before) * 1024 / MB, elapsed, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ok-mib", type=int, default=120)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainery-bench-abuse-") as tmp:
        url = f"sqlite:///{tmp}/trainery.db"
        migrate(url)
        stack = Stack(url, Path(tmp), extra_env={"TRAINERY_LOG_FORMAT": "json"})
        stack.start_api()
        try:
            assert stack.api is not None
            pid = stack.api.pid
            job = stack.submit({"name": "e", "framework": "pytorch", "dataset": {"builtin": "iris"},
                                "model": {"preset": "mlp"}})["id"]
            bomb = zeros_bomb(Path(tempfile.gettempdir()) / "trainery-bench-zeros.npz")
            cases: dict[str, Case] = {
                "npz_header_lie": upload(header_lie(), "lie.npz"),
                "npz_zeros": upload(bomb, "zeros.npz"),
                "json_50mb": big_json(chunked=False),
                "json_50mb_chunked": big_json(chunked=True),
                "events_overflow": events_overflow(job),
                "upload_ok": ok_uploads(args.ok_mib),
            }
            for _ in range(3):  # warm: imports, pools and caches a first request builds
                for name in ("npz_header_lie", "json_50mb", "events_overflow"):
                    measure(pid, stack.url, cases[name], 1)
            idle = rss_kb(pid, "VmRSS") * 1024 / MB
            print(f"API pid {pid}, idle RSS {idle:.0f} MB; npz_zeros file {len(bomb) / MB:.1f} MB; "
                  f"upload_ok {args.ok_mib} MiB; target {TARGET_MB:.0f} MB per case")
            print(f"{'case':<20}{'alone MB':>10}{'s':>7}  {'x' + str(args.parallel) + ' MB':>8}"
                  f"{'s':>7}  {'vs target':>9}  answers")
            for name, case in cases.items():
                alone, t1, a1 = measure(pid, stack.url, case, 1)
                many, tn, an = measure(pid, stack.url, case, args.parallel)
                worst = max(alone, many)
                print(f"{name:<20}{alone:>10.1f}{t1:>7.2f}  {many:>8.1f}{tn:>7.2f}  "
                      f"{worst / TARGET_MB:>8.2f}x  {a1[0]} / {','.join(sorted(set(an)))}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
