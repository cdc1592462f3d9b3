"""The dashboard in a real browser (headless Chromium via Playwright) against a real API
and worker: live list and curves, compare, cancel, the submit form, XSS, sign-in."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright import sync_api as playwright_api
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import server_app as cli_app
from app.services import jobs as job_service
from app.services.jobs import new_job_id
from tests.harness import Stack, migrate
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
# Jobs called "slowjob" sleep after every batch, so a page can watch them train;
# "failjob" raises at the end of its first epoch.
SLOW = {"TRAINERY_FAULT_INJECTION": "slow@0:0.12/slowjob,raise@1/failjob"}
XSS = "<script>alert(1)</script>"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it: apt-get install "
                    "chromium)")
    return path


def _stack(tmp: Path, env: dict[str, str], worker: bool) -> Stack:
    url = f"sqlite:///{tmp / 'trainery.db'}"
    migrate(url)
    stack = Stack(url, tmp, extra_env=env)
    stack.start_api()
    if worker:
        stack.start_worker("w1")
    return stack


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API and a worker on a fresh database, the slow-job fault armed."""
    stack = _stack(tmp_path_factory.mktemp("web"), SLOW, worker=True)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless; every context gets a fresh temporary profile."""
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Console:
    """Console errors and uncaught exceptions of every page opened through it.

    Chromium logs a document's own 4xx ("Failed to load resource") as an error; the
    tests check those statuses themselves (a 422 form, a 404 job), so only those pass.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []

    def _console(self, page: Any, message: Any) -> None:
        if message.type != "error":
            return
        own_status = (message.text.startswith("Failed to load resource")
                      and message.location.get("url") == page.url)
        if not own_status:
            self.errors.append(f"{page.url}: {message.text} ({message.location.get('url')})")

    def watch(self, page: Any) -> Any:
        page.on("console", lambda m: self._console(page, m))
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))
        page.on("dialog", lambda d: self.errors.append(f"{page.url}: dialog {d.message!r}"))
        return page


@pytest.fixture
def pages(browser: Any) -> Iterator[tuple[Any, Console]]:
    """A fresh browser context and a console watcher that fails the test on any error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    console = Console()
    context.on("page", console.watch)
    try:
        yield context, console
    finally:
        context.close()
    assert console.errors == [], console.errors


def screenshot(page: Any, name: str) -> None:
    """Keep a screenshot in TRAINERY_SCREENSHOTS_DIR (docs/ for the README) when set."""
    target = os.environ.get("TRAINERY_SCREENSHOTS_DIR")
    if target:
        page.screenshot(path=str(Path(target) / name), full_page=False)


def chart_points(page: Any, metric: str) -> int:
    return int(page.get_attribute(f'figure.chart[data-metric="{metric}"]', "data-points") or 0)


def test_list_and_job_page_follow_a_training_job_live(web: Stack,
                                                      pages: tuple[Any, Console]) -> None:
    context, _ = pages
    job = web.submit(tiny_spec(epochs=8, name="slowjob", training={
        "epochs": 8, "batch_size": 16, "log_every_steps": 2}))
    listing = context.new_page()
    listing.goto(web.url + "/")
    row = listing.locator(f'tr[data-job="{job["id"]}"]')
    assert row.locator("td.name a").inner_text() == "slowjob"

    page = context.new_page()
    page.goto(f"{web.url}/jobs/{job['id']}")
    page.wait_for_selector('figure.chart[data-metric="loss"] .plot[data-mounted] canvas',
                           timeout=60_000)
    seen: set[int] = set()
    seen_steps: set[int] = set()
    deadline = time.monotonic() + 120
    while web.job(job["id"])["status"] not in ("succeeded", "failed") \
            and time.monotonic() < deadline:
        seen.add(chart_points(page, "loss"))
        seen_steps.add(chart_points(page, "steps/loss"))
        time.sleep(0.2)
    assert web.job(job["id"])["status"] == "succeeded"
    # The curves grew while the job trained: some intermediate point count was drawn.
    assert any(0 < n < 8 for n in seen), seen
    steps = web.client.get(f"/v1/jobs/{job['id']}/metrics", params={"series": "steps"}).json()
    assert len(steps["steps"]) > 8 and any(0 < n < len(steps["steps"]) for n in seen_steps), \
        seen_steps
    # At the end the page reloads itself and shows every epoch, the downloads and the card.
    page.wait_for_selector("a.button[download]", timeout=30_000)
    assert chart_points(page, "loss") == 8
    page.wait_for_selector('figure.chart[data-metric="accuracy"] .plot[data-mounted]')
    assert page.locator("#job-status .status").inner_text() == "succeeded"
    assert "torchscript" in page.locator(".actions").inner_text()
    # The step curves sit under the epoch curves, every logged step drawn.
    page.locator("#step-charts").scroll_into_view_if_needed()
    page.wait_for_selector('figure.chart[data-metric="steps/loss"] .plot[data-mounted] canvas')
    assert chart_points(page, "steps/loss") == len(steps["steps"])
    screenshot(page, "web-steps.png")
    # The list updated the row without a reload (htmx polls the table while jobs run).
    row.locator(".status-succeeded").wait_for(timeout=30_000)
    assert listing.locator(".status-succeeded").first.inner_text() == "succeeded"
    screenshot(page, "web-job.png")


def test_cancel_from_the_page_cancels(web: Stack, pages: tuple[Any, Console]) -> None:
    context, _ = pages
    job = web.submit(tiny_spec(epochs=200, name="slowjob"))
    web.wait(job["id"], {"running"}, timeout=120)
    page = context.new_page()
    page.goto(f"{web.url}/jobs/{job['id']}")
    page.click("#cancel")
    assert web.wait(job["id"], timeout=120)["status"] == "cancelled"
    page.locator("#job-status .status-cancelled").wait_for(timeout=30_000)
    page.locator("#retry").wait_for(timeout=30_000)  # the page reloads once the job ended


def test_a_failed_job_shows_its_error_and_the_runner_output(
        web: Stack, pages: tuple[Any, Console]) -> None:
    context, _ = pages
    job = web.submit(tiny_spec(epochs=3, name="failjob"))
    failed = web.wait(job["id"])
    assert failed["status"] == "failed"
    page = context.new_page()
    page.goto(f"{web.url}/jobs/{job['id']}")
    box = page.locator(".error-box")
    assert failed["error"]["type"] in box.inner_text()
    assert failed["error"]["message"].splitlines()[0] in box.inner_text()
    assert "Traceback" in page.locator(".error-box pre.traceback").inner_text()
    assert page.locator("#retry").is_visible()


def test_compare_overlays_runs_and_shows_only_differing_fields(
        web: Stack, pages: tuple[Any, Console]) -> None:
    context, _ = pages
    ids = []
    for lr in (0.01, 0.002):
        spec = tiny_spec(epochs=6, name=f"iris lr={lr}")
        spec["training"]["optimizer"] = {"name": "adam", "lr": lr}
        ids.append(web.submit(spec)["id"])
    for job_id in ids:
        assert web.wait(job_id)["status"] == "succeeded"

    listing = context.new_page()
    listing.goto(web.url + "/")
    for job_id in ids:
        listing.check(f"#pick-{job_id}")
    screenshot(listing, "web-jobs.png")
    listing.click("#compare-form button")
    listing.wait_for_url("**/compare?**")
    page = listing
    page.wait_for_selector('figure.chart[data-metric="loss"] .plot[data-mounted] canvas')
    # Two runs, each a faint raw line and a smoothed one, over one x column.
    assert page.get_attribute('figure.chart[data-metric="loss"]', "data-series") == "4"
    diff = page.locator("table.diff").inner_text()
    assert "training.optimizer.lr" in diff and "0.002" in diff
    assert "dataset.builtin" not in diff and "training.epochs" not in diff
    summary = page.locator("table.summary").inner_text()
    assert "best" in summary and "last" in summary and "val_loss" in summary
    # The controls redraw without errors (the console watcher checks).
    page.fill("#smoothing", "0.9")
    page.check("#log-y")
    page.select_option("#x-axis", "t")
    page.wait_for_selector('figure.chart[data-metric="loss"] .plot[data-mounted] canvas')
    page.select_option("#x-axis", "epoch")
    page.uncheck("#log-y")
    screenshot(page, "web-compare.png")


def test_a_study_page_charts_its_trials_and_links_their_jobs(
        web: Stack, pages: tuple[Any, Console]) -> None:
    context, _ = pages
    r = web.client.post("/v1/studies", json={
        "name": "webstudy", "base": tiny_spec(epochs=2),
        "space": {"training.optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1},
                  "training.optimizer.name": {"type": "choice", "values": ["adam", "sgd"]}},
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "searcher": {"name": "random", "max_trials": 2, "max_concurrent_trials": 2}})
    assert r.status_code == 201, r.text
    study_id = r.json()["id"]
    deadline = time.monotonic() + 180
    while (study := web.client.get(f"/v1/studies/{study_id}").json())["state"] == "running":
        assert time.monotonic() < deadline, study
        time.sleep(0.5)
    assert study["state"] == "succeeded"

    page = context.new_page()
    page.goto(web.url + "/")
    page.click('header nav a[href="/studies"]')
    page.click(f'tr[data-study="{study_id}"] a')
    rows = page.locator("table.trials tbody tr[data-trial]")
    assert rows.count() == 2
    trials = web.client.get(f"/v1/studies/{study_id}/trials").json()
    for t in trials:
        link = page.locator(f'tr[data-trial="{t["number"]}"] a[href="/jobs/{t["job_id"]}"]')
        assert link.count() == 1
    assert page.locator("tr.best").count() == 1
    # Best so far over time, and one scatter per searched parameter with a point per trial.
    page.wait_for_selector("#best-chart .plot[data-mounted] canvas", timeout=30_000)
    params = page.locator("#param-charts figure.chart")
    assert params.count() == 2
    for name in ("training.optimizer.lr", "training.optimizer.name"):
        figure = f'#param-charts figure.chart[data-metric="{name}"]'
        page.wait_for_selector(f"{figure} .plot[data-mounted] canvas", timeout=30_000)
        assert page.get_attribute(figure, "data-points") == "2"
    screenshot(page, "web-study.png")
    page.click(f'tr[data-trial="{trials[0]["number"]}"] a')
    assert page.url.endswith(f"/jobs/{trials[0]['job_id']}")


def test_the_form_shows_each_problem_beside_its_field_path(web: Stack,
                                                          pages: tuple[Any, Console]) -> None:
    context, _ = pages
    page = context.new_page()
    page.goto(web.url + "/new")
    page.fill("#f-epochs", "0")
    spec = {"name": "bad", "framework": "pytorch", "dataset": {"builtin": "iris"},
            "model": {"layers": [{"type": "dense", "units": -3}]}}
    page.fill("#spec", json.dumps(spec))
    page.click("#submit")
    page.wait_for_selector(".field-error")
    assert "greater than or equal to 1" in page.locator('[data-field="epochs"]').inner_text()
    assert "model.layers[0].units" in page.locator("#spec-problems").inner_text()
    # The text the user typed is kept; fixing it submits the job and opens its page.
    assert json.loads(page.input_value("#spec")) == spec
    page.fill("#f-epochs", "1")
    page.fill("#spec", json.dumps({**spec, "model": {"preset": "mlp"}}))
    page.click("#submit")
    page.wait_for_url("**/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[1]
    assert web.job(job_id)["spec"]["training"]["epochs"] == 1

    # "Clone and edit" opens the form holding this job's spec.
    page.click("text=Clone and edit")
    page.wait_for_url("**/new?from=*")
    assert yaml.safe_load(page.input_value("#spec")) \
        == web.job(job_id)["spec"]


def test_names_are_text_never_markup(web: Stack, pages: tuple[Any, Console]) -> None:
    context, console = pages
    job = web.submit(tiny_spec(epochs=1, name=XSS))
    for path in ("/", f"/jobs/{job['id']}", f"/compare?ids={job['id']}"):
        page = context.new_page()
        page.goto(web.url + path)
        assert page.get_by_text(XSS).first.is_visible()
    # A dialog would have been recorded by the console watcher.
    assert not any("dialog" in e for e in console.errors)


def test_dataset_upload_with_progress(web: Stack, pages: tuple[Any, Console],
                                      tmp_path: Path) -> None:
    context, _ = pages
    csv = tmp_path / "points.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(200)))
    page = context.new_page()
    page.goto(web.url + "/datasets")
    page.set_input_files('input[name="file"]', str(csv))
    page.fill('input[name="name"]', "points")
    page.click("#upload button[type=submit]")
    page.wait_for_selector("table.datasets >> text=points", timeout=30_000)


def test_state_changing_forms_need_the_csrf_token(web: Stack) -> None:
    job = web.submit(tiny_spec(epochs=1, name="csrf"))
    r = httpx.post(f"{web.url}/jobs/{job['id']}/cancel", data={"csrf": "forged"})
    assert r.status_code == 403
    assert web.job(job["id"])["status"] != "cancelled"


def test_phone_width_has_no_sideways_scroll(web: Stack, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800})
    try:
        page = context.new_page()
        page.goto(web.url + "/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        context.close()


def _make_key(stack: Stack, owner: str) -> str:
    result = CliRunner().invoke(cli_app, ["keys", "create", "--owner", owner, "--json"],
                                env={"TRAINERY_DATABASE_URL": stack.database_url})
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["token"])


def test_auth_required_pages_sign_in_with_a_cookie(tmp_path: Path,
                                                   pages: tuple[Any, Console]) -> None:
    context, console = pages
    stack = _stack(tmp_path, {"TRAINERY_AUTH_REQUIRED": "true"}, worker=False)
    try:
        alice, bob = _make_key(stack, "alice"), _make_key(stack, "bob")
        mine = stack.submit(tiny_spec(epochs=1, name="alices"), Authorization=f"Bearer {alice}")
        theirs = stack.submit(tiny_spec(epochs=1, name="bobs"), Authorization=f"Bearer {bob}")
        page = context.new_page()
        for path in ("/", f"/jobs/{mine['id']}", "/new", "/datasets", "/compare?ids=x"):
            page.goto(stack.url + path)
            assert "/signin?next=" in page.url, path
        page.fill("#key", "trn_wrong")
        page.click("button[type=submit]")
        assert "unknown or revoked" in page.locator(".error").inner_text()
        page.fill("#key", alice)
        page.click("button[type=submit]")
        page.wait_for_url(f"{stack.url}/compare?ids=x")  # back where it was sent from
        page.goto(stack.url + "/")
        names = page.locator("td.name a").all_inner_texts()
        assert names == ["alices"]
        cookie = next(c for c in context.cookies() if c["name"] == "trainery_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        # Bob's job is not found for Alice, on the pages as through the API.
        page.goto(f"{stack.url}/jobs/{theirs['id']}")
        assert "not found" in page.locator("h1").inner_text().lower()
        # Her page follows the event stream with the cookie alone.
        page.goto(f"{stack.url}/jobs/{mine['id']}")
        page.locator("#events li").first.wait_for()
        page.click("#cancel")
        page.locator("#job-status .status-cancelled").wait_for(timeout=30_000)
        # The JSON API takes the cookie for reads only; a write needs the CSRF header too.
        page.goto(stack.url + "/")
        status = page.evaluate("fetch('/v1/jobs').then(r => r.status)")
        assert status == 200
        status = page.evaluate(f"fetch('/v1/jobs/{mine['id']}/retry', {{method: 'POST'}})"
                               ".then(r => r.status)")
        assert status == 401
        # That refusal is logged by the browser; it is the one error this page may show.
        refused = [e for e in console.errors if "/retry" in e and "401" in e]
        assert len(refused) == 1
        console.errors.remove(refused[0])
    finally:
        stack.stop()


def test_name_search_on_each_backend(factory: sessionmaker[Session]) -> None:
    from app.core.spec import JobSpec
    from app.models import Job

    with factory() as session, session.begin():
        for name in ("ResNet 50%", "resnet-18", "mlp"):
            spec = JobSpec.model_validate(tiny_spec(name=name))
            session.add(Job(id=new_job_id(), owner="o", name=name, framework="pytorch",
                            priority=0, queue="default", status="queued",
                            spec=spec.model_dump(mode="json"), attempt=0, progress_epoch=0,
                            progress_epochs=2))
    with factory() as session:
        def names(q: str) -> list[str]:
            jobs, _ = job_service.list_jobs(session, "o", status=None, limit=10, cursor=None,
                                            name_contains=q)
            return sorted(j.name for j in jobs)

        assert names("resnet") == ["ResNet 50%", "resnet-18"]
        assert names("50%") == ["ResNet 50%"]  # % is a character, not a wildcard
        assert names("_") == []
