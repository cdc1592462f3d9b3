"""Artifact store throughput: a 200 MB checkpoint up and down through the SQL blob store
and through S3 (a local SeaweedFS), against a plain local file copy in the same run,
with each case's memory high-water mark.

    python -m bench.artifacts [--mb 200] [--postgres]

Each case runs in a fresh process, so its peak RSS (ru_maxrss) is its own: upload
streams the file into the store (as a dataset upload does), download streams the
blob to a file (as the API relays a model and a worker fills its dataset cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PIECE = 1 << 20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while piece := f.read(PIECE):
            yield piece


def _case(kind: str, source: Path, database_url: str) -> dict[str, Any]:
    """One case in this process: (up, down) seconds and the peak RSS above the start."""
    if kind == "copy":
        base = _rss_mb()
        t0 = time.perf_counter()
        shutil.copyfile(source, source.with_suffix(".copy"))
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        shutil.copyfile(source.with_suffix(".copy"), source.with_suffix(".back"))
        return {"up_s": up, "down_s": time.perf_counter() - t0, "peak_mb": _rss_mb() - base}

    from app.artifacts import open_store
    from app.db import make_engine, make_sessionmaker
    from app.settings import Settings

    engine = make_engine(database_url, pool_size=1)
    store = open_store(make_sessionmaker(engine), Settings())
    base = _rss_mb()
    t0 = time.perf_counter()
    info = store.write(_file_pieces(source), owner="bench", kind="checkpoint")
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    with source.with_suffix(".back").open("wb") as out:
        for chunk in store.iter_chunks(info.id):
            digest.update(chunk)
            out.write(chunk)
    down = time.perf_counter() - t0
    assert digest.hexdigest() == info.sha256
    store.delete(info.id)
    engine.dispose()
    return {"up_s": up, "down_s": down, "peak_mb": _rss_mb() - base}


def _run_case(kind: str, source: Path, database_url: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.artifacts", "--case", kind, "--source", str(source),
         "--database-url", database_url],
        env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    """Run every case, print MB/s and ratios against the local copy."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="SQL store on PostgreSQL too")
    parser.add_argument("--case")
    parser.add_argument("--source")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(args.case, Path(args.source), args.database_url)))
        return

    from app.db import migrate
    from bench.s3server import SeaweedServer
    from bench.stack import create_postgres_database, drop_postgres_database

    with tempfile.TemporaryDirectory(prefix="trainery-bench-") as tmp:
        root = Path(tmp)
        source = root / "checkpoint.bin"
        with source.open("wb") as f:
            for i in range(args.mb):
                f.write(hashlib.sha256(str(i).encode()).digest() * (PIECE // 32))
        sqlite = f"sqlite:///{root / 'trainery.db'}"
        migrate(sqlite)
        pg = create_postgres_database() if args.postgres else None
        if pg:
            migrate(pg)
        s3 = SeaweedServer(root / "seaweed")
        s3.start()
        try:
            cases = [("local file copy", "copy", sqlite, {}),
                     ("SQL store (SQLite)", "store", sqlite, {"TRAINERY_ARTIFACT_URL": ""})]
            if pg:
                cases.append(("SQL store (PostgreSQL)", "store", pg, {"TRAINERY_ARTIFACT_URL": ""}))
            cases.append(("S3 store (SeaweedFS)", "store", sqlite, s3.env()))
            results = [(name, _run_case(kind, source, url, env)) for name, kind, url, env in cases]
        finally:
            s3.stop()
            if pg:
                drop_postgres_database(pg)
    base = results[0][1]
    print(f"{args.mb} MB checkpoint, streamed in 1 MiB pieces; peak = RSS high-water above "
          "the process's start")
    print(f"{'case':26} {'up MB/s':>8} {'x copy':>7} {'down MB/s':>10} {'x copy':>7} "
          f"{'peak MB':>8}")
    for name, r in results:
        print(f"{name:26} {args.mb / r['up_s']:8.0f} {base['up_s'] / r['up_s']:7.2f} "
              f"{args.mb / r['down_s']:10.0f} {base['down_s'] / r['down_s']:7.2f} "
              f"{r['peak_mb']:8.0f}")


if __name__ == "__main__":
    main()
