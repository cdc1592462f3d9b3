"""How fast the dashboard draws many runs: /compare with 20 runs x 1,000 epochs in headless
Chromium, against 1 run x 1,000 epochs in the same run.

The runs are seeded through the service's own code (submit, claim, record_epoch, succeed)
into a SQLite file; a real API serves the page. Measured in the browser: from the start of
navigation to the page's first byte (the server's part), and to the last chart on screen
being drawn (charts below the fold do not mount); the browser's part, first byte to last
chart (download, parse, data preparation, drawing), has the target: under 300 ms for
20 runs x 1,000 points.

    python -m bench.web_charts [--runs 20] [--points 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from app.core.spec import JobSpec
from app.db import make_engine, make_sessionmaker, migrate, transaction
from app.services import jobs, lifecycle
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits
from bench.stack import Stack

TARGET_MS = 300.0
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def seed(url: str, runs: int, points: int) -> list[str]:
    """runs succeeded jobs of points epochs each, written as a runner writes them."""
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    ids = []
    try:
        for r in range(runs):
            spec = JobSpec.model_validate({
                "name": f"run-{r:02d}", "framework": "pytorch", "dataset": {"builtin": "iris"},
                "model": {"preset": "mlp"}, "training": {"epochs": points, "batch_size": 16}})
            with transaction(factory) as session:
                job, _ = jobs.submit(UnitOfWork(session), spec, owner="default",
                                     idempotency_key=None,
                                     limits=Limits(max_epochs=max(points, 1000)))
                attempt = lifecycle.claim(session, job.id, "bench")
                assert attempt is not None
                for epoch in range(1, points + 1):
                    decay = math.exp(-epoch / (50 + 10 * r))
                    values = {"loss": decay + 0.05 * math.sin(epoch / 3 + r),
                              "val_loss": 1.1 * decay + 0.08 * math.cos(epoch / 5 + r),
                              "accuracy": 1 - 0.9 * decay, "val_accuracy": 0.97 - 0.9 * decay,
                              "lr": 1e-3 * (0.5 + 0.5 * math.cos(math.pi * epoch / points)),
                              "epoch_time_s": 0.5 + 0.01 * (epoch % 7)}
                    lifecycle.record_epoch(session, job.id, attempt, epoch, points, values,
                                           {"epoch": epoch, "monitor": "val_loss",
                                            "value": values["val_loss"]})
                lifecycle.succeed(session, job.id, attempt)
            ids.append(job.id)
    finally:
        engine.dispose()
    return ids


def measure(page: Any, url: str, repeat: int) -> tuple[float, float, int, int]:
    """Median ms to the first byte of the page (the server's part) and to the last on-screen
    chart drawn, both from the start of navigation; charts mounted, charts in all."""
    times: list[float] = []
    server: list[float] = []
    mounted = total = 0
    for _ in range(repeat):
        page.goto(url, wait_until="load")
        total = page.locator("figure.chart").count()
        # Every chart in the viewport mounts on its first intersection callback.
        page.wait_for_selector("figure.chart .plot[data-mounted] canvas")
        page.wait_for_timeout(300)
        marks = page.evaluate("performance.getEntriesByName('trainery-chart-mounted')"
                              ".map(m => m.startTime)")
        mounted = len(marks)
        nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                            " return [n.responseStart, n.responseEnd, n.domInteractive]; })()")
        times.append(max(marks))
        server.append(nav[0])
    return statistics.median(server), statistics.median(times), mounted, total


def main() -> None:
    """Seed, serve, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="trainery-bench-web-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'trainery.db'}"
        migrate(url)
        ids = seed(url, args.runs, args.points)
        stack = Stack(url, Path(tmp))
        stack.start_api()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True,
                                            args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(stack.url + "/")  # warm the server and the static files
                cases = [("baseline: 1 run", ids[:1]), (f"{len(ids)} runs", ids)]
                results = []
                for label, chosen in cases:
                    target = stack.url + "/compare?ids=" + ",".join(chosen)
                    html_bytes = len(stack.client.get(target).content)
                    first_byte, drawn, mounted, total = measure(page, target, args.repeat)
                    results.append(drawn - first_byte)
                    print(f"compare, {label:>15} x {args.points} points: first byte "
                          f"{first_byte:6.1f} ms, all on-screen charts drawn {drawn:6.1f} ms: "
                          f"browser {drawn - first_byte:6.1f} ms ({mounted} of {total} charts "
                          f"mounted; page {html_bytes / 1e6:.1f} MB)")
                first_byte, drawn, mounted, total = measure(page, f"{stack.url}/jobs/{ids[0]}",
                                                            args.repeat)
                print(f"job page, 1 run x {args.points} points: first byte {first_byte:6.1f} ms, "
                      f"drawn {drawn:6.1f} ms: browser {drawn - first_byte:6.1f} ms "
                      f"({mounted} of {total} charts mounted)")
                browser.close()
        finally:
            stack.stop()
    ratio = results[1] / results[0] if results[0] else float("nan")
    verdict = "under" if results[1] < TARGET_MS else "OVER"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (a loaded machine inflates both)")
    print(f"browser time, {len(ids)} runs / 1 run: {ratio:.2f}x; {results[1]:.1f} ms is "
          f"{verdict} the {TARGET_MS:.0f} ms target (median of {args.repeat})")


if __name__ == "__main__":
    main()
