"""Job pages: the list (filtered, newest first, by cursor), one job, and the dead letter."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tagrun.server.auth import WORKSPACE_ID, authenticator
from tagrun.server.errors import InvalidInput
from tagrun.server.http import path_int, query_int
from tagrun.server.services.broadcast import with_children
from tagrun.server.services.jobs import job_view
from tagrun.server.services.pending import with_pending_reason, with_pending_reasons
from tagrun.server.store import FINAL_STATES, STATES, Store
from tagrun.server.ui.render import home_workspace, page
from tagrun.server.ui.session import Session
from tagrun.server.ui.views import ui_page, with_query
from tagrun.shared.executors import LANGUAGES

JOBS_PER_PAGE = 50
NO_CURSOR = 2**62


def _filters(request: Request, *, status: str | None = None) -> dict[str, str | None]:
    if status is None:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(STATES)}")
    tag = request.query_params.get("tag", "").strip() or None
    script = request.query_params.get("script", "").strip() or None
    return {"status": status, "tag": tag, "script": script}


async def _job_list(request: Request, session: Session, *, dead_letter: bool) -> Response:
    workspace = await authenticator(request).workspace(request)
    filters = _filters(request, status="failed" if dead_letter else None)
    cursor = query_int(request, "cursor", NO_CURSOR, minimum=1, maximum=NO_CURSOR)
    store: Store = request.app.state.store
    jobs = await store.list_jobs(workspace, before=cursor, limit=JOBS_PER_PAGE + 1, **filters)
    more, shown = len(jobs) > JOBS_PER_PAGE, jobs[:JOBS_PER_PAGE]
    views = await with_pending_reasons(store, [job_view(j) for j in shown],
                                       request.app.state.config.stale_after_s)
    for view in views:
        view["error"] = _error(view["error"])
    return await page(request, session, "jobs.html", {
        "nav": "dead" if dead_letter else "jobs", "workspace": workspace, "jobs": views,
        "filters": filters, "states": STATES, "dead_letter": dead_letter,
        "first_page": cursor == NO_CURSOR,
        "newest": with_query(request, cursor=None) if cursor != NO_CURSOR else None,
        "older": with_query(request, cursor=shown[-1].id) if more else None,
    })


@ui_page
async def jobs_page(request: Request, session: Session) -> Response:
    return await _job_list(request, session, dead_letter=False)


@ui_page
async def dead_letter_page(request: Request, session: Session) -> Response:
    return await _job_list(request, session, dead_letter=True)


def _error(error: Any) -> dict[str, str] | None:
    if not isinstance(error, dict):
        return None
    return {"kind": str(error.get("kind", "")), "message": str(error.get("message", ""))}


def _attempts(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts of a job's view (times as the view shows them), the one under way last."""
    keys = ("attempt", "worker", "started_at", "finished_at", "status")
    attempts = [{**{k: a.get(k) for k in keys}, "error": _error(a.get("error"))}
                for a in view["attempts"] if isinstance(a, dict)]
    if view["status"] == "running":  # the attempt under way is recorded once it ends
        attempts.append({"attempt": view["attempt"], "worker": view["worker"],
                         "started_at": view["started_at"], "finished_at": None,
                         "status": "running", "error": None})
    return attempts


@ui_page
async def job_page(request: Request, session: Session) -> Response:
    workspace = await authenticator(request).workspace(request)
    store: Store = request.app.state.store
    job = await store.get_job(workspace, path_int(request, "id"))
    view = await with_children(store, await with_pending_reason(
        store, job_view(job), request.app.state.config.stale_after_s))
    view["error"] = _error(job.error)
    return await page(request, session, "job.html", {
        "nav": "jobs", "workspace": workspace, "job": view, "attempts": _attempts(view),
        "final": job.status in FINAL_STATES,
        "copyable": job.language in LANGUAGES,  # built-in jobs run on their schedule
    })


@ui_page
async def choose_workspace(request: Request, session: Session) -> Response:
    """`/jobs?ws=…` (the workspace picker's form) goes to that workspace's job list."""
    workspace = request.query_params.get("ws") or home_workspace(session)
    if not WORKSPACE_ID.fullmatch(workspace):
        raise InvalidInput(f"{workspace!r} is not a workspace id")
    view = request.query_params.get("view")
    section = view if view in ("jobs", "dead-letter", "schedules", "secrets") else "jobs"
    return RedirectResponse(f"/w/{workspace}/{section}", status_code=303)


@ui_page
async def section_shortcut(request: Request, session: Session) -> Response:
    """`/dead-letter`, `/schedules` and `/secrets`, like `/jobs`: that page of the home
    workspace."""
    section = request.url.path.strip("/")
    return RedirectResponse(f"/w/{home_workspace(session)}/{section}", status_code=303)


routes = [
    Route("/jobs", choose_workspace, methods=["GET"]),
    Route("/dead-letter", section_shortcut, methods=["GET"]),
    Route("/schedules", section_shortcut, methods=["GET"]),
    Route("/secrets", section_shortcut, methods=["GET"]),
    Route("/w/{ws}/jobs", jobs_page, methods=["GET"]),
    Route("/w/{ws}/jobs/{id}", job_page, methods=["GET"]),
    Route("/w/{ws}/dead-letter", dead_letter_page, methods=["GET"]),
]
