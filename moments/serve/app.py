"""The search service on Ray Serve: a JSON API and a web page that plays the moments it finds.

One deployment, `MomentsService`, with a FastAPI ingress. Its constructor loads the index, the sentence model
and the video manifest once (`moments.serve.backend.SearchBackend`); its replicas then answer:

| route | answer |
|---|---|
| `GET /` and `/static/{app.js,style.css}` | the web page (moments/serve/web, no build step) |
| `GET /api/health` | 200 `{"ready": true, ...}` once loaded; 503 `{"ready": false, "reason": ...}` before |
| `GET /api/search?q=&k=&video=&min_score=&run=&live=` | rows with the fields of `jobs.search --json` |
| `GET /api/videos`, `GET /api/videos/{id}` | the playable videos; one video's duration and moments |
| `GET /api/clip?video=[&start=&end=]` | the video file (HTTP Range), or a short MP4 clip of [start, end] |
| `GET /api/frames?video=&t=[&width=]` | the frame at t as JPEG |
| `POST /api/login`, `POST /api/logout` | the page's sign-in (token in the body; sets the session cookie) and out |

Bad parameters are answered 4xx with `{"error": ..., "parameter": ...}`; anything unexpected is a 500 with a
JSON message, and the replica keeps serving. `jobs.serve` starts it locally; `configs/serve/moments.yaml` runs it with
`serve run` / `serve deploy` through `app_builder`.

Access (moments.serve.auth, docs/serve.md "Access token"): with a token configured, `TokenGate` (ASGI middleware,
in front of routing) answers every request 401 unless it carries `Authorization: Bearer <token>` or the session
cookie of a sign-in, unknown paths included, so nothing about the service shows without the token. Two routes
take anonymous requests: `GET /api/health` answers only `{"ready": ...}` to them (no paths, no counts), and
`POST /api/login` checks the token in its body. The page itself answers 401 too: its body is a self-contained
sign-in form (`web/login.html`), which posts the token to `api/login`, keeps it in the tab's sessionStorage and
reloads; the page then sends it as a header on its `fetch` calls, and the HttpOnly, SameSite=Strict cookie carries
the session for `<video>` and `<img>`, which cannot send headers. A token in the query string (`?token=`), an empty
token and a wrong one are refused with 401. Each replica also refuses to start when Serve's proxies listen beyond
loopback and it has no token (unless `insecure_no_token`).
"""


import html
import json
import logging
import mimetypes
import os
import socket
import urllib.parse
from dataclasses import fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from drn.errors import InputError
from drn.store.object_store import is_uri
from moments.serve.auth import (
    SESSION_S,
    Access,
    Decision,
    Verdict,
    cleared_cookie,
    decide,
    session_cookie,
    token_from,
)
from moments.serve.backend import NotReady, SearchBackend, ServiceSettings
from moments.serve.params import BadRequest

logger = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
APP_NAME = "moments"
DEFAULT_PORT = 8000
LOOPBACK = "127.0.0.1"
FRAME_MAX_AGE_S = 3600
AUTH_SCOPE_KEY = "drn_moments.verdict"  # where TokenGate leaves its verdict for the routes
ANONYMOUS_ROUTES = {("GET", "/api/health"), ("HEAD", "/api/health"), ("POST", "/api/login")}
PAGE_PATHS = {"", "/"}
MAX_LOGIN_BYTES = 4096
NO_STORE = {"Cache-Control": "no-store"}
AUTH_ARGS = ("token_file", "insecure_no_token")  # app_builder's args beside the ServiceSettings fields


class TokenGate:
    """ASGI middleware in front of routing: the replica's `Access` judges every HTTP request (docs above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = replica_access()
        if access is None:
            refusal = JsonResponse({"error": "the service is starting", "status": 503}, status_code=503)
            await refusal(scope, receive, send)
            return
        request = Request(scope)
        decision = decide(access, request.headers, set(request.query_params.keys()), request.headers.get("cookie"))
        scope[AUTH_SCOPE_KEY] = decision.verdict
        route = (scope["method"], route_path(scope))
        if decision.verdict is Verdict.AUTHENTICATED or (
                decision.verdict is Verdict.ANONYMOUS and route in ANONYMOUS_ROUTES):
            await self.app(scope, receive, send)
            return
        await refused(decision, scope)(scope, receive, send)


def replica_access() -> Access | None:
    """The Access of the replica answering (None before its constructor has run)."""
    try:
        return serve.get_replica_context().servable_object.access
    except Exception:  # noqa: BLE001 - no replica context yet: refuse rather than guess
        return None


def route_path(scope: Scope) -> str:
    """The request's path inside the application (without its route prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def base_path(scope: Scope) -> str:
    """The application's own root: `/`, or `/prefix/` under a route prefix."""
    return scope.get("root_path", "").rstrip("/") + "/"


def refused(decision: Decision, scope: Scope) -> Response:
    """401: the sign-in page for a browser opening the page, else a JSON message."""
    if scope["method"] in ("GET", "HEAD") and route_path(scope) in PAGE_PATHS:
        shown = decision.reason if decision.verdict is Verdict.REFUSED else ""
        return login_page(base_path(scope), shown)
    challenge = 'Bearer realm="drn-moments"' + (', error="invalid_token"' if decision.verdict is Verdict.REFUSED
                                                 else "")
    return JsonResponse({"error": decision.reason, "status": 401}, status_code=401,
                        headers={"WWW-Authenticate": challenge, **NO_STORE})


def login_page(base: str, message: str = "") -> HTMLResponse:
    """The sign-in form (web/login.html) as a 401, posting to this application's api/login."""
    text = (WEB / "login.html").read_text(encoding="utf-8")
    text = (text.replace("{{ACTION}}", html.escape(base + "api/login"))
            .replace("{{HIDDEN}}", "" if message else "hidden")
            .replace("{{MESSAGE}}", html.escape(message)))
    return HTMLResponse(text, status_code=401, headers=NO_STORE)


app = FastAPI(title="drn-moments search", docs_url=None, redoc_url=None, openapi_url=None)
app.add_middleware(TokenGate)


class JsonResponse(Response):
    """JSON as UTF-8 text; the backend has already turned values JSON has no words for (NaN) into null."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")


@app.exception_handler(BadRequest)
def _bad_request(request: Request, error: BadRequest) -> JsonResponse:
    return JsonResponse(error.to_json(), status_code=error.status)


@app.exception_handler(NotReady)
def _not_ready(request: Request, error: NotReady) -> JsonResponse:
    return JsonResponse({"error": str(error), "status": 503}, status_code=503)


@app.exception_handler(StarletteHTTPException)
def _http_error(request: Request, error: StarletteHTTPException) -> JsonResponse:
    message = f"no such page: {request.url.path}" if error.status_code == 404 else str(error.detail)
    return JsonResponse({"error": message, "status": error.status_code}, status_code=error.status_code,
                        headers=getattr(error, "headers", None))


@app.exception_handler(RequestValidationError)
def _invalid(request: Request, error: RequestValidationError) -> JsonResponse:
    return JsonResponse({"error": f"bad request: {error.errors()}", "status": 400}, status_code=400)


@app.exception_handler(Exception)
def _unexpected(request: Request, error: Exception) -> JsonResponse:
    logger.exception("unexpected error answering %s", request.url.path)
    return JsonResponse({"error": f"internal error ({type(error).__name__}): {error}", "status": 500},
                        status_code=500)


def _query(request: Request) -> dict[str, str]:
    """The query parameters; a parameter given twice counts once (its last value)."""
    return dict(request.query_params)


async def presented_token(request: Request) -> tuple[str, bool]:
    """The token in a sign-in's body (JSON `{"token": ...}` or a form's `token=`), and whether it came from a form."""
    body = await request.body()
    if len(body) > MAX_LOGIN_BYTES:
        raise BadRequest("the sign-in body is too large", status=413, parameter="token")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        values = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get("token", [""])
        return values[-1].strip(), True
    try:
        value = json.loads(body or b"{}").get("token", "")
    except (ValueError, AttributeError):
        raise BadRequest('give the token as JSON: {"token": "..."}', parameter="token") from None
    return (value if isinstance(value, str) else "").strip(), False


def proxy_host() -> str | None:
    """The host Serve's HTTP proxies listen on, from the controller (None when it cannot be asked)."""
    try:
        from ray.serve.context import _get_global_client

        return str(_get_global_client().http_config.host)
    except Exception:  # noqa: BLE001 - unknown: Access.check_host then requires a token
        logger.warning("could not ask Serve which host its proxies listen on", exc_info=True)
        return None


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(app)
class MomentsService:
    """The search service's replica: everything is loaded once, in the constructor, after the access check."""

    def __init__(self, settings: ServiceSettings, access: Access | None = None) -> None:
        self.access = access or Access()
        self.access.check_host(proxy_host())  # Serve's proxies listen beyond loopback: a token is required
        self.backend = SearchBackend(settings)

    @app.get("/")
    def page(self, request: Request) -> Response:
        if not request.url.path.endswith("/"):  # under a route prefix: /prefix -> /prefix/, so relative URLs work
            return RedirectResponse(str(request.url.replace(path=request.url.path + "/")))
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}")
    def static(self, name: str) -> FileResponse:
        media_type = STATIC.get(name)
        if media_type is None:  # a fixed list: the name is never joined to a path unchecked
            raise BadRequest(f"no such file: {name!r}", status=404)
        return FileResponse(WEB / name, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    def health(self, request: Request) -> JsonResponse:
        body = self.backend.health()
        status = 200 if body["ready"] else 503
        if request.scope.get(AUTH_SCOPE_KEY) is not Verdict.AUTHENTICATED:
            return JsonResponse({"ready": body["ready"]}, status_code=status)  # no paths, no counts
        return JsonResponse({**body, "token_required": self.access.token is not None}, status_code=status)

    @app.post("/api/login")
    async def login(self, request: Request) -> Response:
        token = self.access.token
        if token is None:
            return JsonResponse({"signed_in": True, "token_required": False})
        presented, from_form = await presented_token(request)
        reason = "" if presented and token.matches(presented) else ("the token is empty" if not presented
                                                                    else "wrong token")
        if reason and from_form:
            return login_page(base_path(request.scope), f"Not signed in: {reason}")
        if reason:
            return JsonResponse({"error": reason, "status": 401, "parameter": "token"}, status_code=401,
                                headers=NO_STORE)
        cookie = session_cookie(token, base_path(request.scope), secure=request.url.scheme == "https")
        if from_form:  # a browser without JavaScript: back to the page
            return RedirectResponse(base_path(request.scope), status_code=303,
                                    headers={"Set-Cookie": cookie, **NO_STORE})
        return JsonResponse({"signed_in": True, "expires_in_s": SESSION_S}, headers={"Set-Cookie": cookie, **NO_STORE})

    @app.post("/api/logout")
    def logout(self, request: Request) -> JsonResponse:
        cookie = cleared_cookie(base_path(request.scope), secure=request.url.scheme == "https")
        return JsonResponse({"signed_in": False}, headers={"Set-Cookie": cookie, **NO_STORE})

    @app.get("/api/search")
    def search(self, request: Request) -> JsonResponse:
        return JsonResponse(self.backend.search(_query(request)))

    @app.get("/api/videos")
    def videos(self) -> JsonResponse:
        return JsonResponse(self.backend.videos())

    @app.get("/api/videos/{video_id:path}")
    def video(self, video_id: str, request: Request) -> JsonResponse:
        return JsonResponse(self.backend.video(video_id, _query(request)))

    @app.get("/api/clip")
    def clip(self, request: Request) -> Response:
        path, clip = self.backend.clip(_query(request))
        if clip is None:
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return FileResponse(path, media_type=media_type)  # answers Range / If-Range requests
        headers = {"X-Clip-Start-S": f"{clip.source_start_s:.6f}", "X-Clip-End-S": f"{clip.source_end_s:.6f}",
                   "Content-Disposition": f'inline; filename="{path.stem}-moment.mp4"'}
        return Response(clip.data, media_type="video/mp4", headers=headers)

    @app.get("/api/frames")
    def frames(self, request: Request) -> Response:
        data = self.backend.frame(_query(request))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": f"max-age={FRAME_MAX_AGE_S}"})


def build_app(settings: ServiceSettings, access: Access | None = None, *, num_replicas: int = 1,
              num_cpus: float = 1.0, autoscaling_config: dict[str, Any] | None = None) -> serve.Application:
    """The application for `serve.run`: fixed replicas, or autoscaling when `autoscaling_config` is given."""
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": num_cpus}}
    if autoscaling_config:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas
    return MomentsService.options(**options).bind(settings, access or Access())


def app_builder(args: dict[str, Any]) -> serve.Application:
    """`import_path: moments.serve.app:app_builder` for `serve run` / `serve deploy`; `args` are ServiceSettings
    fields (db required; table, features, videos, checkpoint, refresh_s optional) and the access settings:
    `token_file` (default: $DRN_SERVE_TOKEN, else the file $DRN_SERVE_TOKEN_FILE, read where the app is built)
    and `insecure_no_token`. Replicas, autoscaling and CPUs come from the config's `deployments:` section."""
    service_args = {key: value for key, value in args.items() if key not in AUTH_ARGS}
    return MomentsService.bind(settings_from_args(service_args), access_from_args(args))


def access_from_args(args: dict[str, Any]) -> Access:
    """The Access of a config's `args`: its `token_file` (relative paths from the current folder) or the
    environment's token, and `insecure_no_token`."""
    insecure = args.get("insecure_no_token", False)
    if not isinstance(insecure, bool):
        raise ValueError(f"insecure_no_token must be true or false, not {insecure!r}")
    return Access(token_from(args.get("token_file")), insecure_no_token=insecure)


def settings_from_args(args: dict[str, Any]) -> ServiceSettings:
    """ServiceSettings from a config's `args`; relative local paths are taken from the current folder."""
    known = {field.name for field in fields(ServiceSettings)}
    unknown = sorted(set(args) - known)
    if unknown or "db" not in args:
        raise ValueError(f"the service's args take {sorted(known | set(AUTH_ARGS))} (db required); got unknown "
                         f"{unknown}")
    values = {key: value for key, value in args.items() if value is not None}
    for key in ("db", "features", "videos", "checkpoint"):
        if key in values and not is_uri(str(values[key])):
            values[key] = os.path.abspath(values[key])
    return ServiceSettings(**values)


def check_port_free(host: str, port: int) -> None:
    """InputError when nothing can listen on host:port (taken, or not an address of this machine)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                         "or --host") from None


def start_service(settings: ServiceSettings, host: str = LOOPBACK, port: int = DEFAULT_PORT, *,
                  access: Access | None = None, name: str = APP_NAME, route_prefix: str = "/", num_replicas: int = 1,
                  num_cpus: float = 1.0, autoscaling_config: dict[str, Any] | None = None) -> str:
    """Start Serve's HTTP proxy on host:port (if Serve is not running yet) and deploy the app; returns its URL.

    `access`: its token (None: no token, refused beyond loopback unless `insecure_no_token`). Ray must be running
    (`pipeline.ray_runtime.start_ray()`); `serve.run` returns once every replica's constructor has run.
    """
    access = access or Access()
    access.check_host(host)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings, access, num_replicas=num_replicas, num_cpus=num_cpus,
                        autoscaling_config=autoscaling_config), name=name, route_prefix=route_prefix)
    return service_url(host, port, route_prefix)


def service_url(host: str, port: int, route_prefix: str = "/") -> str:
    """The URL of the page: `http://host:port/prefix/` (a wildcard host is reached on loopback)."""
    shown = {"0.0.0.0": LOOPBACK, "::": "[::1]", "": LOOPBACK}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}/"
