"""The dashboard's pages: jobs, one job, compare, submit, datasets, studies, sign-in."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import CeleryDep, SessionDep, SessionFactoryDep, SettingsDep
from app.core.catalog import BUILTIN_DATASETS
from app.core.errors import DomainError, InvalidInput, validation_problems
from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.db import transaction
from app.models import Study
from app.services import datasets as dataset_service
from app.services import dispatch, runs
from app.services import jobs as job_service
from app.services import steps as step_service
from app.services.studies import service as study_service
from app.services.unit_of_work import UnitOfWork
from app.settings import Settings
from app.web import forms, session, views
from app.web.assets import CachedStatic, static_url
from app.web.security import SecurityHeaders

HERE = Path(__file__).parent
PAGE_SIZE = 50
# A live list re-reads its rows this often (htmx polling of one fragment).
LIST_POLL_S = 3
# The most events a job page lists when it opens; the live stream adds the rest.
PAGE_EVENTS = 500

_env = Environment(loader=FileSystemLoader(HERE / "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True))
_env.filters.update(views.FILTERS)
_env.globals.update(is_live=views.is_live, static=static_url, statuses=[s.value for s in JobStatus],
                    poll_s=LIST_POLL_S)
templates = Jinja2Templates(env=_env)


@dataclass
class Page:
    """Who is looking, and the session their forms must carry."""

    request: Request
    owner: str
    web: session.WebSession
    fresh: bool

    def render(self, name: str, status_code: int = 200, **context: Any) -> Response:
        """The template as an HTML response; sets the session cookie on a first visit."""
        settings = self.request.app.state.settings
        response = templates.TemplateResponse(
            self.request, name, {"csrf": self.web.csrf, "owner": self.owner,
                                 "signed_in": self.web.key is not None,
                                 "auth_required": settings.auth_required, **context},
            status_code=status_code)
        if self.fresh:
            session.write(self.request, response, self.web)
        return response

    async def check_csrf(self) -> dict[str, str]:
        """The posted form's text fields, once its CSRF token matched; CsrfRejected otherwise."""
        form = await self.request.form(max_files=0, max_fields=32,
                                       max_part_size=forms.MAX_SPEC_CHARS * 4)
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if self.fresh or not session.csrf_ok(self.web, fields.get("csrf")):
            raise session.CsrfRejected()
        return fields


def _web_session(request: Request) -> tuple[session.WebSession, bool]:
    current = session.read(request)
    return (current, False) if current is not None else (session.new_session(), True)


def get_page(request: Request) -> Page:
    """The page's viewer; SignInRequired when keys are required and the cookie has none."""
    web, fresh = _web_session(request)
    return Page(request, session.page_owner(request, web), web, fresh)


PageDep = Annotated[Page, Depends(get_page)]


def _error_page(request: Request, status: int, title: str, detail: Any) -> Response:
    web, fresh = _web_session(request)
    settings = request.app.state.settings
    response = templates.TemplateResponse(
        request, "error.html", {"title": title, "detail": detail, "csrf": web.csrf,
                                "signed_in": web.key is not None, "owner": None,
                                "auth_required": settings.auth_required},
        status_code=status)
    if fresh:
        session.write(request, response, web)
    return response


class PageRoute(APIRoute):
    """Pages answer in HTML: domain errors as an error page, no key as a redirect to sign in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except session.SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/signin?" + urlencode({"next": target}), 303)
            except session.CsrfRejected:
                return _error_page(request, 403, "Form expired",
                                   "the form's security token did not match your session; "
                                   "reload the page and try again")
            except DomainError as exc:
                return _error_page(request, exc.status_code, exc.code.replace("_", " "),
                                   exc.detail)

        return handle


router = APIRouter(route_class=PageRoute, include_in_schema=False)


# -- jobs list ----------------------------------------------------------------

def _list_context(page: Page, db: SessionDep, lost_after_s: float, status: str | None,
                  q: str | None, cursor: str | None) -> dict[str, Any]:
    jobs, next_cursor = job_service.list_jobs(db, page.owner, status=status or None,
                                              limit=PAGE_SIZE, cursor=cursor or None,
                                              name_contains=(q or "").strip()[:200] or None)
    public = job_service.to_public_page(db, jobs, lost_after_s)
    query = {k: v for k, v in (("status", status), ("q", q)) if v}
    return {"jobs": public, "status": status or "", "q": q or "",
            "next_url": ("/?" + urlencode({**query, "cursor": next_cursor}))
            if next_cursor else None,
            "fragment_url": "/fragments/jobs?" + urlencode(
                {**query, **({"cursor": cursor} if cursor else {})}),
            "live": any(views.is_live(j.status) for j in public)}


@router.get("/")
def jobs_page(page: PageDep, db: SessionDep, settings: SettingsDep, status: str | None = None,
              q: str | None = None, cursor: str | None = None) -> Response:
    """Jobs newest first, filtered by status and name."""
    ctx = _list_context(page, db, settings.worker_lost_after_s, status, q, cursor)
    return page.render("jobs.html", **ctx)


@router.get("/fragments/jobs")
def jobs_fragment(page: PageDep, db: SessionDep, settings: SettingsDep,
                  status: str | None = None, q: str | None = None,
                  cursor: str | None = None) -> Response:
    """The list's table alone: what the live list polls."""
    ctx = _list_context(page, db, settings.worker_lost_after_s, status, q, cursor)
    return page.render("_jobs_table.html", **ctx)


# -- one job ------------------------------------------------------------------

@router.get("/jobs/{job_id}")
def job_page(job_id: str, page: PageDep, db: SessionDep, settings: SettingsDep) -> Response:
    """Status, live curves, events, spec, checkpoints, model card and actions of one job."""
    job = job_service.get_job(db, job_id, page.owner)
    public = job_service.to_public(db, job_service.read_job(db, job_id, page.owner),
                                   settings.worker_lost_after_s)
    rows = runs.series(db, job)
    events = job_service.events(db, job, 0, PAGE_EVENTS)
    unavailable = ((job.model_card or {}).get("unavailable_formats") or {})
    formats = [(f, unavailable.get(f)) for f in job_service.FORMATS[job.framework]]
    log_every = ((job.spec.get("training") or {}).get("log_every_steps"))
    data = {"id": job.id, "status": job.status, "rows": rows, "order": runs.CHART_ORDER,
            "after": events[-1].id if events else 0,
            "terminal": JobStatus(job.status).is_terminal,
            "steps": step_service.series(db, job.id) if log_every else None,
            "log_every_steps": log_every, "step_points": step_service.DEFAULT_POINTS}
    return page.render("job.html", job=public, events=events, stderr_tail=_stderr_tail(events),
                       checkpoints=job_service.checkpoints(db, job),
                       card=job.model_card if job.status == JobStatus.SUCCEEDED.value else None,
                       formats=formats, spec_text=forms.spec_text(job.spec), data=data)


def _stderr_tail(events: list[Any]) -> str | None:
    # The supervisor keeps the runner's last output (the traceback of an internal
    # error) in the data of the event that failed the job.
    for event in reversed(events):
        if event.to_status == JobStatus.FAILED.value and event.data:
            tail = event.data.get("stderr_tail")
            return str(tail) if tail else None
    return None


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: str, page: PageDep, factory: SessionFactoryDep) -> Response:
    """Cancel from the page, then show the job again."""
    await page.check_csrf()
    with transaction(factory) as db:
        job_service.cancel(db, job_id, page.owner)
    return RedirectResponse(f"/jobs/{job_id}", 303)


def _wake(factory: sessionmaker[Session], celery: Celery, settings: Settings,
          uow: UnitOfWork) -> None:
    """Send the wake-ups a service registered, now that its transaction has committed."""
    for w in uow.wakeups:
        dispatch.wake(factory, celery, settings, w.job_id, w.queue)


@router.post("/jobs/{job_id}/retry")
async def retry(job_id: str, page: PageDep, factory: SessionFactoryDep, settings: SettingsDep,
                celery: CeleryDep) -> Response:
    """Queue a failed or cancelled job again, then show it."""
    await page.check_csrf()
    with transaction(factory) as db:
        uow = UnitOfWork(db)
        job_service.retry(uow, job_id, page.owner)
    _wake(factory, celery, settings, uow)
    return RedirectResponse(f"/jobs/{job_id}", 303)


# -- compare ------------------------------------------------------------------

@router.get("/compare")
def compare_page(page: PageDep, db: SessionDep,
                 ids: Annotated[list[str], Query()] = []) -> Response:  # noqa: B006
    """Up to 20 runs overlaid, with the spec fields that differ and best/last values."""
    pairs = runs.compare(db, page.owner, runs.parse_ids(ids))
    metrics: dict[str, None] = {}
    for _, rows in pairs:
        for m in runs.metric_names(rows):
            metrics.setdefault(m)
    names = runs.chart_order(list(metrics))
    data = {"runs": [{"id": j.id, "name": j.name, "columns": runs.columns(rows, names)}
                     for j, rows in pairs],
            "metrics": names}
    return page.render("compare.html", jobs=[j for j, _ in pairs], metrics=names,
                       summaries=[runs.summary(rows) for _, rows in pairs],
                       diff=runs.differing_fields([j.spec for j, _ in pairs]), data=data)


# -- submit -------------------------------------------------------------------

@router.get("/new")
def new_page(page: PageDep, db: SessionDep, from_: Annotated[str | None, Query(alias="from")]
             = None) -> Response:
    """The submit form, empty or holding a copy of another job's spec ("clone and edit")."""
    spec = forms.DEFAULT_SPEC
    if from_:
        spec = dict(job_service.get_job(db, from_, page.owner).spec)
    return page.render("new.html", text=forms.spec_text(spec), values={},
                       current=forms.common_values(spec), field_problems={}, problems=[])


@router.post("/new")
async def submit(page: PageDep, factory: SessionFactoryDep, settings: SettingsDep,
                 celery: CeleryDep) -> Response:
    """Submit the form's spec; a 422 shows each problem beside its field path."""
    fields = await page.check_csrf()
    text = fields.get("spec", "")
    try:
        spec = JobSpec.model_validate(forms.build_spec(text, fields))
        with transaction(factory) as db:
            uow = UnitOfWork(db)
            job, _ = job_service.submit(uow, spec, owner=page.owner, limits=settings.limits,
                                         idempotency_key=None,
                                         max_gpus_per_job=settings.max_gpus_per_job)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
    except InvalidInput as exc:
        problems = list(exc.detail)
    else:
        _wake(factory, celery, settings, uow)
        return RedirectResponse(f"/jobs/{job.id}", 303)
    by_field, rest = forms.split_problems(problems)
    values = {name: fields.get(name, "") for name in forms.COMMON_FIELDS}
    return page.render("new.html", status_code=422, text=text, values=values,
                       current=_editor_values(text), field_problems=by_field, problems=rest)


def _editor_values(text: str) -> dict[str, str]:
    # The placeholders show what the editor's spec says, when it parses.
    try:
        return forms.common_values(forms.build_spec(text, {}))
    except InvalidInput:
        return {}


# -- datasets -----------------------------------------------------------------

@router.get("/datasets")
def datasets_page(page: PageDep, db: SessionDep, settings: SettingsDep) -> Response:
    """Uploaded and builtin datasets, and the upload form."""
    uploads = [dataset_service.to_public(d) for d in dataset_service.list_datasets(db, page.owner)]
    builtin = [job_service.builtin_dataset_info(n) for n in BUILTIN_DATASETS]
    return page.render("datasets.html", uploads=uploads, builtin=builtin,
                       max_upload=settings.max_upload_bytes)


# -- studies ------------------------------------------------------------------

@router.get("/studies")
def studies_page(page: PageDep, db: SessionDep, state: str | None = None,
                 cursor: str | None = None) -> Response:
    """Studies newest first: state, trials, the best value so far."""
    rows, next_cursor = study_service.list_studies(db, page.owner, state=state or None,
                                                   limit=PAGE_SIZE, cursor=cursor or None)
    query = {"state": state} if state else {}
    return page.render("studies.html", studies=[study_service.to_public(db, s) for s in rows],
                       state=state or "", states=study_service.STATES,
                       next_url=("/studies?" + urlencode({**query, "cursor": next_cursor}))
                       if next_cursor else None)


def _study_context(page: Page, db: Session, study_id: str) -> tuple[Study, dict[str, Any]]:
    study = study_service.get(db, study_id, page.owner)
    public = study_service.to_public(db, study)
    return study, {"study": public, "trials": study_service.trials(db, study),
                   "params": list(public.space), "live": public.state == "running",
                   "fragment_url": f"/fragments/studies/{study.id}/trials"}


@router.get("/studies/{study_id}")
def study_page(study_id: str, page: PageDep, db: SessionDep) -> Response:
    """A study: where it stands, the best so far over time, the objective against each
    searched parameter, and its trials linked to their jobs."""
    row, ctx = _study_context(page, db, study_id)
    study, trials = ctx["study"], ctx["trials"]
    scored = [t for t in trials if t.value is not None]
    data = {"metric": study.objective["metric"], "mode": study.objective["mode"],
            "best": study_service.best_over_time(db, row),
            "params": [{"path": path, "type": dist["type"], "log": dist.get("log", False),
                        "choices": dist.get("values"),
                        "points": [[t.params.get(path), t.value, t.number] for t in scored]}
                       for path, dist in study.space.items()]}
    return page.render("study.html", data=data, **ctx)


@router.get("/fragments/studies/{study_id}/trials")
def study_trials_fragment(study_id: str, page: PageDep, db: SessionDep) -> Response:
    """The trials table alone: what a running study's page polls."""
    _, ctx = _study_context(page, db, study_id)
    return page.render("_trials_table.html", **ctx)


# -- sign in ------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    # Only a path on this site: never //evil.example or https://evil.example.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/signin")
def signin_page(request: Request, next: str | None = None) -> Response:
    """The sign-in form (an API key from `trainery keys create`)."""
    web, fresh = _web_session(request)
    page = Page(request, "", web, fresh)
    return page.render("signin.html", next=_safe_next(next), message=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Check the key; keep it in the signed cookie with a fresh CSRF token."""
    web, fresh = _web_session(request)
    page = Page(request, "", web, fresh)
    fields = await page.check_csrf()
    key = fields.get("key", "").strip()
    target = _safe_next(fields.get("next"))
    if session.owner_for_key(request, key) is None:
        return page.render("signin.html", status_code=401, next=target,
                           message="unknown or revoked API key")
    response = RedirectResponse(target, 303)
    session.write(request, response, session.new_session(key))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    """Forget the key (a new session without one replaces the cookie)."""
    web, fresh = _web_session(request)
    await Page(request, "", web, fresh).check_csrf()
    response = RedirectResponse("/signin", 303)
    session.write(request, response, session.new_session())
    return response


def install(app: FastAPI) -> None:
    """Mount the pages, their static files and the security headers on the API app."""
    app.include_router(router)
    app.mount("/static", CachedStatic(directory=HERE / "static"), name="static")
    app.add_middleware(SecurityHeaders)
