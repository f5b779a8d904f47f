"""The service's web page (Jinja2 templates, no build step): jobs, one job with its overlay, health.

The browser authenticates with an API token (``read`` scope) entered once on
``/ui/login``; the browser then holds only a random session id (HttpOnly, SameSite=Strict,
Secure over TLS cookie; the store keeps its hash, the token's id and an expiry), never the
token. ``/ui/logout`` ends the session. The pages run no script and are served with
:data:`CSP`: nothing but same-origin images and the templates' own style blocks.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from medinfer.serve.auth import COOKIE, Principal, require
from medinfer.serve.models import Job, Result, Study
from medinfer.serve.store import MAX_ID

__all__ = ["CSP", "SESSION_SECONDS", "router"]

SESSION_SECONDS = 8 * 3600  # a web login lasts one working day at most

_TEMPLATES = Path(__file__).parent / "templates"
router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(_TEMPLATES))
Reader = Annotated[Principal, Depends(require("read"))]
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def _style_hashes() -> str:
    """CSP sources of the templates' ``<style>`` blocks (rendered verbatim), so that
    the policy needs no ``'unsafe-inline'`` and follows any edit of the templates."""
    blocks = {m for t in sorted(_TEMPLATES.glob("*.html"))
              for m in re.findall(r"<style>(.*?)</style>", t.read_text(), flags=re.DOTALL)}
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(sorted(f"'sha256-{d}'" for d in digests))


CSP = ("default-src 'none'; img-src 'self'; style-src " + (_style_hashes() or "'none'")
       + "; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, error: str = "") -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"error": error})


@router.post("/login")
def login(request: Request, token: Annotated[str, Form()]) -> RedirectResponse:
    sid = request.app.state.store.create_web_session(token.strip(), SESSION_SECONDS)
    if sid is None:
        return RedirectResponse("/ui/login?error=invalid+token", status_code=303)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(COOKIE, sid, max_age=SESSION_SECONDS, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout(request: Request) -> RedirectResponse:
    """End the web session (server side) and clear its cookie."""
    sid = request.cookies.get(COOKIE)
    if sid:
        request.app.state.store.end_web_session(sid)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, who: Reader) -> HTMLResponse:
    store = request.app.state.store
    with store.session() as s:
        jobs = list(s.scalars(select(Job).order_by(Job.id.desc()).limit(200)))
        unrouted = list(s.scalars(select(Study).where(Study.state == "unrouted")
                                  .order_by(Study.id.desc()).limit(20)))
    return templates.TemplateResponse(request, "jobs.html", {
        "jobs": jobs, "unrouted": unrouted, "counts": store.job_counts(),
        "deliveries": store.delivery_counts(), "who": who.name})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, who: Reader, job_id: JobId) -> HTMLResponse:
    store = request.app.state.store
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        results = list(s.scalars(select(Result).where(Result.job_id == job_id)))
    store.audit(who.name, "read-job", f"job:{job_id}", "web page")
    # a slide job's heat-map is its picture with the result drawn over it
    overlay = next((r for r in results if r.kind in ("overlay", "heatmap")), None)
    return templates.TemplateResponse(request, "job.html", {
        "job": job, "results": results, "overlay": overlay, "who": who.name})
