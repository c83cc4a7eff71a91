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

Bad parameters are answered 4xx with `{"error": ..., "parameter": ...}`; anything unexpected is a 500 with a
JSON message, and the replica keeps serving. `jobs.serve` starts it locally; `configs/serve/moments.yaml` runs it with
`serve run` / `serve deploy` through `app_builder`.
"""


import json
import logging
import mimetypes
import os
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from drn.errors import InputError
from drn.store.object_store import is_uri
from moments.serve.backend import NotReady, SearchBackend, ServiceSettings
from moments.serve.params import BadRequest

logger = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
APP_NAME = "moments"
DEFAULT_PORT = 8000
LOOPBACK = "127.0.0.1"
FRAME_MAX_AGE_S = 3600

app = FastAPI(title="drn-moments search", docs_url=None, redoc_url=None, openapi_url=None)


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


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(app)
class MomentsService:
    """The search service's replica: everything is loaded once, in the constructor."""

    def __init__(self, settings: ServiceSettings) -> None:
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
    def health(self) -> JsonResponse:
        body = self.backend.health()
        return JsonResponse(body, status_code=200 if body["ready"] else 503)

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


def build_app(settings: ServiceSettings, *, num_replicas: int = 1, num_cpus: float = 1.0,
              autoscaling_config: dict[str, Any] | None = None) -> serve.Application:
    """The application for `serve.run`: fixed replicas, or autoscaling when `autoscaling_config` is given."""
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": num_cpus}}
    if autoscaling_config:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas
    return MomentsService.options(**options).bind(settings)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """`import_path: moments.serve.app:app_builder` for `serve run` / `serve deploy`; `args` are ServiceSettings
    fields (db required; table, features, videos, checkpoint, refresh_s optional). Replicas, autoscaling and
    CPUs come from the config's `deployments:` section."""
    return MomentsService.bind(settings_from_args(args))


def settings_from_args(args: dict[str, Any]) -> ServiceSettings:
    """ServiceSettings from a config's `args`; relative local paths are taken from the current folder."""
    known = {field.name for field in fields(ServiceSettings)}
    unknown = sorted(set(args) - known)
    if unknown or "db" not in args:
        raise ValueError(f"the service's args take {sorted(known)} (db required); got unknown {unknown}")
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
                  name: str = APP_NAME, route_prefix: str = "/", num_replicas: int = 1, num_cpus: float = 1.0,
                  autoscaling_config: dict[str, Any] | None = None) -> str:
    """Start Serve's HTTP proxy on host:port (if Serve is not running yet) and deploy the app; returns its URL.

    Ray must be running (`pipeline.ray_runtime.start_ray()`); `serve.run` returns once every replica's constructor
    has run.
    """
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings, num_replicas=num_replicas, num_cpus=num_cpus,
                        autoscaling_config=autoscaling_config), name=name, route_prefix=route_prefix)
    return service_url(host, port, route_prefix)


def service_url(host: str, port: int, route_prefix: str = "/") -> str:
    """The URL of the page: `http://host:port/prefix/` (a wildcard host is reached on loopback)."""
    shown = {"0.0.0.0": LOOPBACK, "::": "[::1]", "": LOOPBACK}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}/"
