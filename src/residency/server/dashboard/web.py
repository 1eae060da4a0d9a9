"""The dashboard's web app: one read-only page, kept live by server-sent events.

FastAPI serves the page (a Jinja2 template, autoescaped: country reasons and job names come
from other parties), the plotly.js bundle from the ``plotly`` package (no CDN), and an event
stream. The stream checks the watched files' sizes and times every ``poll_s`` and, when they
changed, sends the re-rendered page body and its figures; the browser swaps them in without a
reload. There is no route that writes, and none that serves a file by name.

Every request must name a host the dashboard serves (:mod:`.hosts`): a rebound DNS name
gets a fixed refusal before any route runs. Beyond loopback the page needs a token
(``--token-file``): a request that carries it as ``?token=`` is answered with the HttpOnly,
SameSite=Strict cookie and a redirect to the same address without it, so the token stays in
neither the address bar, the history nor a Referer. Every response carries a
Content-Security-Policy that allows scripts from this server only.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool

from residency.common import charts
from residency.common.version import __version__
from residency.server.dashboard.hosts import AllowedHost, host_allowed
from residency.server.dashboard.metrics import CONTENT_TYPE as METRICS_TYPE
from residency.server.dashboard.metrics import coordinator_metrics
from residency.server.dashboard.state import (
    DashboardState,
    folder_kind,
    read_state,
    version,
    watched_files,
)

COOKIE = "residency_dashboard"
TOKEN_PARAMETER = "token"
UNKNOWN_HOST = (
    "this dashboard does not serve the host named in the request; open it by the address it "
    "printed, or start it with --allow-host NAME\n"
)
_STATIC = Path(__file__).parent / "static"
_SECURITY_HEADERS = {
    # plotly.js sets inline styles on the elements it draws, hence 'unsafe-inline' for style only.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("residency.server.dashboard", "templates"),
        autoescape=select_autoescape(["j2", "html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _figures(state: DashboardState) -> dict[str, charts.Figure]:
    """Each figure under the id of the element it draws into."""
    return {
        f"chart-{run.id}-{name}": figure
        for run in state.runs
        for name, figure in run.figures.items()
    }


def address_without_token(request: Request) -> str:
    """The request's path and query minus the token: where its redirect sends the browser.

    Always a path on this server (``//evil.example`` would be another host's address).
    """
    query = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAMETER]
    target = "/" + str(request.scope["path"]).lstrip("/")
    if query:
        target += "?" + urlencode(query)
    return target


FEW_COUNTRIES = 6
"""Up to this many countries, each one's burn-down shows open under the overview chart."""


def create_app(
    folder: Path,
    *,
    hosts: frozenset[AllowedHost],
    token: str | None = None,
    poll_s: float = 1.0,
    https: bool = False,
) -> FastAPI:
    """The dashboard for ``folder``; checked now so a wrong folder fails before serving.

    ``hosts`` are the (name, port) pairs a request's Host header may name
    (:func:`.hosts.served_hosts`). ``https`` marks the token cookie Secure, so a browser
    never sends it over plain HTTP.
    """
    folder_kind(folder)
    app = FastAPI(title="Residency dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(env=_environment())

    def content(state: DashboardState) -> str:
        page = templates.get_template("content.html.j2")
        return page.render(state=state, few_countries=FEW_COUNTRIES)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not host_allowed(request.headers.get("host"), hosts, https=https):
            return PlainTextResponse(UNKNOWN_HOST, status_code=400, headers=_SECURITY_HEADERS)
        given = request.query_params.get(TOKEN_PARAMETER)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        scraper = (
            bool(bearer)
            and token is not None
            and hmac.compare_digest(bearer.encode(), token.encode())
        )  # a scraper's or a script's header: nothing to exchange for a cookie
        if token is not None and not scraper:
            presented = given or request.cookies.get(COOKIE) or ""
            if not hmac.compare_digest(presented.encode(), token.encode()):
                return PlainTextResponse(
                    "a token is needed: open the address with ?token=<the dashboard token>",
                    status_code=401,
                    headers=_SECURITY_HEADERS,
                )
            if given is not None:
                exchanged = RedirectResponse(
                    address_without_token(request), status_code=303, headers=_SECURITY_HEADERS
                )
                exchanged.set_cookie(
                    COOKIE, token, httponly=True, samesite="strict", secure=https, path="/"
                )
                return exchanged
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> Response:
        state = await run_in_threadpool(read_state, folder)
        return templates.TemplateResponse(
            request,
            "page.html.j2",
            {
                "state": state,
                "content": content(state),
                "figures": _figures(state),
                "residency_version": __version__,
            },
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus' scrape target (the token, if set, as ``Authorization: Bearer``)."""
        state = await run_in_threadpool(read_state, folder)
        return Response(coordinator_metrics(state), media_type=METRICS_TYPE)

    @app.get("/api/state")
    async def api_state() -> JSONResponse:
        state = await run_in_threadpool(read_state, folder)
        return JSONResponse(state.model_dump(mode="json"))

    @app.get("/events", response_class=EventSourceResponse)
    async def events(request: Request, since: str = "") -> AsyncIterator[ServerSentEvent]:
        seen = request.headers.get("last-event-id") or since
        kind = folder_kind(folder)
        while not await request.is_disconnected():
            current = await run_in_threadpool(lambda: version(watched_files(folder, kind)))
            if current != seen:
                state = await run_in_threadpool(read_state, folder)
                payload: dict[str, Any] = {
                    "version": state.version,
                    "read_at": state.read_at,
                    "html": content(state),
                    "figures": _figures(state),
                }
                yield ServerSentEvent(data=payload, event="state", id=state.version)
                seen = state.version
            await asyncio.sleep(poll_s)

    @app.get("/static/plotly.min.js")
    async def plotly() -> Response:
        return Response(charts.plotly_js(), media_type="text/javascript")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        path = _STATIC / name
        if name not in {p.name for p in _STATIC.iterdir()} or path.suffix not in _STATIC_TYPES:
            return PlainTextResponse("not found", status_code=404)
        return Response(path.read_bytes(), media_type=_STATIC_TYPES[path.suffix])

    return app
