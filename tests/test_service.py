"""The search service on a real Ray Serve: access, JSON API, media, bad requests, readiness, and jobs.search via
DRN_SERVE.

One Serve instance for the whole module, with two applications: `moments` at / (started by `jobs.serve` with
`--token-file`, on a small real library: H.264 videos, a feature store manifest and a LanceDB index) and `empty`
at /empty/ on a db that has no table yet, with the same token. Every request sends the token unless a test says
otherwise; the access tests send none, a wrong one, an empty one, or one in the URL, and see 401.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from served_library import RUN_ID, ServedLibrary, build_served_library, colour_share

from drn.text.sentence import embed_texts
from jobs import search as search_job
from jobs import serve as serve_job
from moments.index import Index, query_rows, segment_rows
from moments.serve.auth import COOKIE, Access, ServiceToken

REPO = Path(__file__).resolve().parents[1]
TOKEN = secrets.token_urlsafe(32)
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Service:
    url: str  # http://127.0.0.1:PORT/
    empty_url: str  # the not-ready app: http://127.0.0.1:PORT/empty/
    empty_db: Path
    library: ServedLibrary


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def fetch(url: str, headers: dict[str, str] | None = None, *, token: str | None = TOKEN) -> Answer:
    """GET `url`, sending `token` as a bearer token (None: no Authorization header, unless `headers` has one)."""
    headers = dict(headers or {})
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token}")
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def send(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """One request, redirects not followed, every header of the answer kept (Set-Cookie included)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                           headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def sign_in(url: str, token: str, form: bool = False) -> Answer:
    """POST the token to the application at `url` as the page does (JSON), or as a plain HTML form."""
    if form:
        body = urllib.parse.urlencode({"token": token}).encode()
        return send(url + "api/login", "POST", body, {"Content-Type": "application/x-www-form-urlencoded"})
    return send(url + "api/login", "POST", json.dumps({"token": token}).encode(), {"Content-Type": "application/json"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> ServedLibrary:
    return build_served_library(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def service(library, ray_session, tmp_path_factory):
    from ray import serve

    from moments.serve.app import start_service
    from moments.serve.backend import ServiceSettings

    port = free_port()
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    code = serve_job.main(["--db", library.db, "--features", library.features, "--port", str(port),
                           "--num-cpus", "0", "--token-file", str(token_file), "--detach"])
    assert code == 0
    empty_db = tmp_path_factory.mktemp("empty") / "lancedb"
    start_service(ServiceSettings(db=str(empty_db)), port=port, access=Access(ServiceToken(TOKEN)), name="empty",
                  route_prefix="/empty", num_cpus=0)
    try:
        yield Service(f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/empty/", empty_db, library)
    finally:
        serve.shutdown()


def api(service: Service, path: str, **params) -> Answer:
    query = urllib.parse.urlencode({key: value for key, value in params.items() if value is not None})
    return fetch(service.url + path + (f"?{query}" if query else ""))


# ---------------------------------------------------------------------------------------------------------- access
ROUTES = [  # (method, path): every route of the application, each answered 200 with the token
    ("GET", ""),
    ("GET", "static/app.js"),
    ("GET", "static/style.css"),
    ("GET", "api/health"),
    ("GET", "api/search?q=a+red+square&k=3"),
    ("GET", "api/videos"),
    ("GET", "api/videos/synth_0000?limit=3"),
    ("GET", "api/clip?video=synth_0000"),
    ("GET", "api/clip?video=synth_0000&start=1&end=3"),
    ("GET", "api/frames?video=synth_0000&t=1&width=64"),
    ("POST", "api/login"),
    ("POST", "api/logout"),
]
ROUTE_IDS = [f"{method} /{path.split('?')[0]}" for method, path in ROUTES]
LOGIN_BODY = json.dumps({"token": TOKEN}).encode()


def call(service: Service, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    body = LOGIN_BODY if path == "api/login" else b"" if method == "POST" else None
    return send(service.url + path, method, body, {"Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
def test_every_route_answers_401_without_the_token_and_200_with_it(service, method, path) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    allowed = call(service, method, path, bearer)
    assert allowed.status == 200, allowed.body[:300]
    if path == "api/health":  # readiness only, for load balancers: no paths, no counts
        anonymous = call(service, method, path)
        assert anonymous.status == 200 and anonymous.json() == {"ready": True}
        assert set(allowed.json()) > {"ready", "rows", "videos", "video_root", "db", "pid"}
        return
    if path == "api/login":  # the sign-in itself: the token in the body, or 401
        anonymous = send(service.url + path, "POST", b"{}", {"Content-Type": "application/json"})
    else:
        anonymous = call(service, method, path)
    assert anonymous.status == 401, anonymous.body[:300]
    assert anonymous.headers["cache-control"] == "no-store"
    if path == "":  # the page answers with its sign-in form
        assert anonymous.headers["content-type"].startswith("text/html")
        assert b'action="/api/login"' in anonymous.body and b'type="password"' in anonymous.body
        assert b"static/app.js" not in anonymous.body
    else:
        assert anonymous.headers["content-type"].startswith("application/json") and anonymous.json()["error"]


def test_unknown_paths_answer_401_without_the_token_and_404_with_it(service) -> None:
    for path in ("nothing-here", "api/nothing", "static/index.html", "-/anything"):
        assert fetch(service.url + path, token=None).status == 401, path
        assert fetch(service.url + path).status == 404, path


def forged_session(token: str, expires: int) -> str:
    return f"{COOKIE}={ServiceToken(token).session_value(expires)}"


REFUSED_CREDENTIALS = {  # (headers, query added to the URL)
    "wrong token": ({"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}, ""),
    "token with one character changed": ({"Authorization": f"Bearer {TOKEN[:-1]}{'A' if TOKEN[-1] != 'A' else 'B'}"},
                                         ""),
    "token prefix": ({"Authorization": f"Bearer {TOKEN[:20]}"}, ""),
    "empty token": ({"Authorization": "Bearer "}, ""),
    "bearer without a token": ({"Authorization": "Bearer"}, ""),
    "empty header": ({"Authorization": ""}, ""),
    "another scheme": ({"Authorization": f"Basic {TOKEN}"}, ""),
    "token in the query string": ({}, f"token={TOKEN}"),
    "access_token in the query string": ({}, f"access_token={TOKEN}"),
    "right header, token also in the query string": ({"Authorization": f"Bearer {TOKEN}"}, f"token={TOKEN}"),
    "token as a cookie": ({"Cookie": f"{COOKIE}={TOKEN}"}, ""),
    "expired session": ({"Cookie": forged_session(TOKEN, int(time.time()) - 5)}, ""),
    "session of another token": ({"Cookie": forged_session(secrets.token_urlsafe(32), int(time.time()) + 600)}, ""),
    "wrong token despite a live session": ({"Authorization": "Bearer " + "x" * 40,
                                            "Cookie": forged_session(TOKEN, int(time.time()) + 600)}, ""),
}


@pytest.mark.parametrize("credential", sorted(REFUSED_CREDENTIALS))
@pytest.mark.parametrize(("method", "path"), [route for route in ROUTES if route[1] not in ("api/health", "api/login")],
                         ids=[i for i, route in zip(ROUTE_IDS, ROUTES, strict=True)
                              if route[1] not in ("api/health", "api/login")])
def test_wrong_empty_and_query_string_tokens_are_refused(service, credential, method, path) -> None:
    headers, query = REFUSED_CREDENTIALS[credential]
    if query:
        path += ("&" if "?" in path else "?") + query
    answer = call(service, method, path, headers)
    assert answer.status == 401, (credential, answer.body[:300])


def test_health_refuses_a_wrong_token_and_tells_the_anonymous_nothing_but_readiness(service) -> None:
    assert fetch(service.url + "api/health", token="x" * 40).status == 401
    assert fetch(service.url + f"api/health?token={TOKEN}", token=None).status == 401
    for url in (service.url, service.empty_url):
        anonymous = fetch(url + "api/health", token=None)
        assert set(anonymous.json()) == {"ready"}
        assert str(service.library.root) not in anonymous.body.decode() and "rows" not in anonymous.body.decode()
    assert fetch(service.empty_url + "api/health", token=None).status == 503  # not ready, reason not shown


def test_signing_in_sets_an_httponly_samesite_cookie_that_alone_opens_every_route(service) -> None:
    for token, reason in (("", "the token is empty"), ("  ", "the token is empty"), ("x" * 40, "wrong token"),
                          (TOKEN[:-1], "wrong token")):
        refused = sign_in(service.url, token)
        assert refused.status == 401 and refused.json()["error"] == reason and "set-cookie" not in refused.headers
    assert send(service.url + "api/login", "POST", b"not json", {"Content-Type": "application/json"}).status == 400
    answer = sign_in(service.url, TOKEN)
    assert answer.status == 200 and answer.json()["signed_in"] is True
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= attributes and "SameSite=Strict" in cookie and "Path=/;" in cookie
    assert "max-age" not in attributes and "expires" not in attributes  # ends with the browser session
    session = cookie.split(";")[0]
    assert TOKEN not in session  # an HMAC of the token, never the token
    for method, path in ROUTES:
        if path not in ("api/login",):
            assert call(service, method, path, {"Cookie": session}).status == 200, path
    part = fetch(service.url + "api/clip?video=synth_0000", {"Range": "bytes=0-99", "Cookie": session}, token=None)
    assert part.status == 206 and len(part.body) == 100  # what a <video> asks for, with the cookie only
    signed_out = call(service, "POST", "api/logout", {"Cookie": session})
    assert "Max-Age=0" in signed_out.headers["set-cookie"]


def test_a_form_without_javascript_signs_in_and_lands_on_the_page(service) -> None:
    answer = sign_in(service.empty_url, TOKEN, form=True)
    assert answer.status == 303 and answer.headers["location"] == "/empty/"
    assert "Path=/empty/;" in answer.headers["set-cookie"]  # the cookie of the app under /empty/ only
    session = answer.headers["set-cookie"].split(";")[0]
    assert fetch(service.empty_url, {"Cookie": session}, token=None).status == 200
    wrong = sign_in(service.empty_url, "y" * 40, form=True)
    assert wrong.status == 401 and b"Not signed in: wrong token" in wrong.body
    page = fetch(service.url.rstrip("/") + "/empty", token=None)  # the app's root without its slash
    assert page.status == 401 and b'action="/empty/api/login"' in page.body
    url_token = fetch(service.url + f"?token={TOKEN}", token=None)
    assert url_token.status == 401 and b"a token in the URL is refused" in url_token.body


# ---------------------------------------------------------------------------------------------------------- health
def test_health_says_ready_with_what_is_loaded(service) -> None:
    answer = api(service, "api/health")
    assert answer.status == 200 and answer.headers["content-type"].startswith("application/json")
    health = answer.json()
    assert health["ready"] is True and health["reason"] is None
    assert health["rows"] == Index(service.library.db).count() > 0
    assert health["videos"] == len(service.library.durations)
    assert health["video_root"] == str(service.library.videos.resolve())
    assert health["live"] is False and health["pid"] > 0


# ---------------------------------------------------------------------------------------------------------- search
def test_search_rows_carry_the_fields_of_jobs_search_json(service, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DRN_SERVE", raising=False)
    text = "the red square moves"
    assert search_job.main([text, "--db", service.library.db, "--json", "--k", "6"]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answer = api(service, "api/search", q=text, k=6)
    assert answer.status == 200
    body = answer.json()
    assert body["count"] == len(local) == 6 and body["query"] == text and body["live"] is False
    assert body["results"] == local


def test_search_filters_by_video_min_score_and_run(service) -> None:
    video = sorted(service.library.durations)[1]
    rows = api(service, "api/search", q="a circle grows", k=20, video=video).json()["results"]
    assert rows and {row["video_id"] for row in rows} == {video}
    rows = api(service, "api/search", q="a circle grows", k=20, min_score=0.8).json()["results"]
    assert rows and min(row["score"] for row in rows) >= 0.8
    assert api(service, "api/search", q="a circle grows", run="another-run").json()["results"] == []
    assert {row["run_id"] for row in api(service, "api/search", q="a circle grows", run=RUN_ID).json()["results"]} \
        == {RUN_ID}


def test_live_search_is_refused_without_a_retrieval_stage(service) -> None:
    answer = api(service, "api/search", q="a red square", live=1)
    assert answer.status == 409 and "no retrieval stage" in answer.json()["error"]


# ---------------------------------------------------------------------------------------------------------- videos
def test_videos_list_the_manifest_and_one_video_its_moments(service) -> None:
    listing = api(service, "api/videos").json()
    assert [v["video_id"] for v in listing["videos"]] == sorted(service.library.durations)
    assert all(v["available"] for v in listing["videos"])
    video = sorted(service.library.durations)[2]
    body = api(service, f"api/videos/{video}", limit=5).json()
    assert body["duration_s"] == pytest.approx(service.library.durations[video])
    assert body["moments_total"] == Index(service.library.db).count(video_id=video) > 5
    scores = [m["score"] for m in body["moments"]]
    assert body["count"] == len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert {m["video_id"] for m in body["moments"]} == {video}


# ---------------------------------------------------------------------------------------------------------- media
def test_frames_show_the_shape_of_the_moment(service) -> None:
    event = service.library.events[0]
    middle = (event["appear_s"] + event["vanish_s"]) / 2
    answer = api(service, "api/frames", video=event["video_id"], t=f"{middle:.3f}", width=96)
    assert answer.status == 200 and answer.headers["content-type"] == "image/jpeg"
    picture = np.asarray(Image.open(io.BytesIO(answer.body)).convert("RGB"))
    assert picture.shape == (72, 96, 3)
    assert colour_share(picture, event["color"]) > 0.02
    before = np.asarray(Image.open(io.BytesIO(api(service, "api/frames", video=event["video_id"], t=0).body)))
    assert before.shape == (120, 160, 3) and colour_share(before, event["color"]) < 0.001


def test_clip_answers_range_requests_with_the_files_bytes(service) -> None:
    video = sorted(service.library.durations)[0]
    data = (service.library.videos / f"{video}.mp4").read_bytes()
    whole = api(service, "api/clip", video=video)
    assert whole.status == 200 and whole.body == data and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    url = service.url + f"api/clip?video={video}"
    part = fetch(url, {"Range": "bytes=100-299"})
    assert part.status == 206 and part.body == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    tail = fetch(url, {"Range": "bytes=-64"})
    assert tail.status == 206 and tail.body == data[-64:]
    assert fetch(url, {"Range": f"bytes={len(data) + 10}-"}).status == 416


def test_clip_of_a_moment_is_a_short_playable_mp4(service) -> None:
    event = service.library.events[-1]
    start, end = event["appear_s"], event["vanish_s"]
    answer = api(service, "api/clip", video=event["video_id"], start=start, end=end)
    assert answer.status == 200 and answer.headers["content-type"] == "video/mp4"
    offset = float(answer.headers["x-clip-start-s"])
    assert offset <= start + 1e-6
    with av.open(io.BytesIO(answer.body)) as clip:
        times = [frame.time + offset for frame in clip.decode(clip.streams.video[0])]
    assert min(times) <= start + 0.05 and max(times) >= end - 0.05
    assert max(times) <= end + 0.1  # cut at the end of the moment
    assert len(answer.body) < (service.library.videos / f"{event['video_id']}.mp4").stat().st_size


# ---------------------------------------------------------------------------------------------------------- page
def test_page_and_static_files_are_served_and_nothing_else(service) -> None:
    page = fetch(service.url)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'id="q"' in page.body and b"static/app.js" in page.body and b"http" not in page.body.split(b"<body>")[0]
    script = fetch(service.url + "static/app.js")
    assert script.status == 200 and "javascript" in script.headers["content-type"] and b"api/search" in script.body
    assert fetch(service.url + "static/style.css").status == 200
    for path in ("static/index.html", "static/..%2Fservice.py", "static/../service.py", "nothing-here"):
        answer = fetch(service.url + path)
        assert answer.status == 404 and "error" in answer.json(), path


# ---------------------------------------------------------------------------------------------------------- bad input
LONG_QUERY = "a person opens the door " * 834  # 20,016 characters
BAD_REQUESTS = [
    ("api/search?q=", 400, "q is empty"),
    ("api/search", 400, "q is empty"),
    ("api/search?q=%20%20%20", 400, "q is empty"),
    ("api/search?q=%00%00", 400, "q is empty"),
    ("api/search?q=%07%1b%7f", 400, "q is empty"),
    ("api/search?q=door&k=ten", 400, "k must be a whole number"),
    ("api/search?q=door&k=1.5", 400, "k must be a whole number"),
    ("api/search?q=door&k=-3", 400, "k must be between 1 and"),
    ("api/search?q=door&k=0", 400, "k must be between 1 and"),
    ("api/search?q=door&k=1000000000000", 400, "k must be between 1 and"),
    ("api/search?q=door&min_score=high", 400, "min_score must be a number"),
    ("api/search?q=door&min_score=nan", 400, "min_score must be a finite number"),
    ("api/search?q=door&live=maybe", 400, "live must be 1 or 0"),
    ("api/search?q=door&video=no_such_video", 404, "unknown video"),
    (f"api/search?q={urllib.parse.quote(LONG_QUERY)}", 400, "20,016 characters"),
    ("api/videos/no_such_video", 404, "unknown video"),
    ("api/videos/..%2F..%2Fetc%2Fpasswd", 404, "unknown video"),
    ("api/videos/synth_0000?limit=lots", 400, "limit must be a whole number"),
    ("api/clip", 400, "video is missing"),
    ("api/clip?video=no_such_video", 404, "unknown video"),
    ("api/clip?video=../synth_0000", 404, "unknown video"),
    ("api/clip?video=..%2F..%2F..%2Fetc%2Fpasswd", 404, "unknown video"),
    ("api/clip?video=%2Fetc%2Fpasswd", 404, "unknown video"),
    ("api/clip?video=synth_0000%2F..%2Fsynth_0001", 404, "unknown video"),
    ("api/clip?video=synth_0000&start=abc&end=2", 400, "start must be a number"),
    ("api/clip?video=synth_0000&start=1&end=two", 400, "end must be a number"),
    ("api/clip?video=synth_0000&start=3&end=1", 400, "must come after start"),
    ("api/clip?video=synth_0000&start=2&end=2", 400, "must come after start"),
    ("api/clip?video=synth_0000&start=-1&end=2", 400, "start must not be negative"),
    ("api/clip?video=synth_0000&start=1", 400, "end is missing"),
    ("api/clip?video=synth_0000&start=inf&end=2", 400, "start must be a finite number"),
    ("api/clip?video=synth_0000&start=500&end=600", 400, "past the end of the video"),
    ("api/frames?video=synth_0000", 400, "t is missing"),
    ("api/frames?video=synth_0000&t=soon", 400, "t must be a number"),
    ("api/frames?video=synth_0000&t=999", 400, "past the end of the video"),
    ("api/frames?video=synth_0000&t=1&width=9999", 400, "width must be between"),
    ("api/frames?video=%2Fetc%2Fpasswd&t=1", 404, "unknown video"),
    ("api/frames?video=..%2Flibrary%2Fvideos%2Fsynth_0000.mp4&t=1", 404, "unknown video"),
]


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
@pytest.mark.parametrize(("path", "status", "message"), BAD_REQUESTS, ids=[case[0][:60] for case in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_json_message(service, path, status, message, with_token) -> None:
    answer = fetch(service.url + path, token=TOKEN if with_token else None)
    if not with_token:  # refused before the parameters are even read
        status, message = 401, "needs its token"
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    assert message in answer.json()["error"]


def test_the_service_keeps_serving_after_bad_requests(service) -> None:
    before = api(service, "api/health").json()["pid"]
    for path, _, _ in BAD_REQUESTS:
        assert fetch(service.url + path).status < 500
    assert api(service, "api/health").json()["pid"] == before  # the same replica, never restarted
    assert api(service, "api/search", q="a blue circle", k=3).json()["count"] == 3


# ---------------------------------------------------------------------------------------------------------- CLI
HEAVY_CHECK = (
    "import json, sys\n"
    "from jobs.search import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = ('torch', 'lancedb', 'sentence_transformers')\n"
    "print('LOADED', json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    "sys.exit(code)\n"
)


def run_cli(*args: str, serve_url: str, token_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """jobs.search in a process of its own; `token_env` (default: DRN_SERVE_TOKEN) says how it finds the token."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRN_SERVE")}
    env.update({"DRN_SERVE": serve_url, "PYTHONPATH": str(REPO),
                **({"DRN_SERVE_TOKEN": TOKEN} if token_env is None else token_env)})
    return subprocess.run([sys.executable, "-c", HEAVY_CHECK, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_jobs_search_asks_the_service_when_drn_serve_is_set(service, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DRN_SERVE", raising=False)
    text = "a green triangle"
    assert search_job.main([text, "--db", service.library.db, "--json", "--k", "4", "--min-score", "0.3"]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = run_cli(text, "--json", "--k", "4", "--min-score", "0.3", serve_url=service.url.rstrip("/"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "LOADED []"  # neither torch, nor lancedb, nor sentence-transformers
    assert [json.loads(line) for line in lines[:-1]] == local and len(local) == 4
    table = run_cli(text, "--k", "2", serve_url=service.url)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and lines[0].startswith(f'note: no grounded query matches "{text}"')  # as locally
    assert [line for line in lines if not line.startswith("note:")][0].split()[:3] == ["#", "query", "matched"]


def test_jobs_search_reads_the_token_from_a_file(service, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for args, env in ((("--token-file", str(token_file)), {}), ((), {"DRN_SERVE_TOKEN_FILE": str(token_file)})):
        done = run_cli("a green triangle", "--json", "--k", "2", *args, serve_url=service.url, token_env=env)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 3 and done.stdout.splitlines()[-1] == "LOADED []"


def test_jobs_search_reports_service_errors_in_one_line(service, tmp_path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    cases = [(("   ",), service.url, None, "the search service answered 400: q is empty"),
             (("a door", "--db", service.library.db), service.url, None, "unset DRN_SERVE"),
             (("a door",), f"http://127.0.0.1:{free_port()}", None, "cannot reach the search service"),
             (("a door",), service.url, {}, "answered 401: this service needs its token"),
             (("a door",), service.url, {}, "set DRN_SERVE_TOKEN, or DRN_SERVE_TOKEN_FILE"),
             (("a door",), service.url, {"DRN_SERVE_TOKEN": "z" * 43}, "answered 401: wrong token"),
             (("a door",), service.url, {"DRN_SERVE_TOKEN": ""}, "$DRN_SERVE_TOKEN is empty"),
             (("a door", "--token-file", str(short)), service.url, {}, "must have 16 to 512 characters"),
             (("a door", "--token-file", str(tmp_path / "none")), service.url, {}, "no such token file")]
    for args, url, token_env, message in cases:
        done = run_cli(*args, serve_url=url, token_env=token_env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert TOKEN not in done.stderr and "z" * 43 not in done.stderr


# ---------------------------------------------------------------------------------------------------------- readiness
def test_a_db_without_tables_is_not_ready_and_says_why_then_becomes_ready(service) -> None:
    assert fetch(service.url.rstrip("/") + "/empty").status == 200  # /empty redirects to /empty/, the page
    health = fetch(service.empty_url + "api/health")
    assert health.status == 503
    assert health.json()["ready"] is False and "no table 'segments'" in health.json()["reason"]
    search = fetch(service.empty_url + "api/search?q=door")
    assert search.status == 503 and "not ready" in search.json()["error"]
    assert fetch(service.empty_url + "api/search?q=").status == 400  # bad input is still bad input

    text = "a person opens the door"
    rows = segment_rows("late-run", "ckpt", "q0", text, "v0", np.array([[1.0, 2.0, 0.7, 0.8, 0.9]]))
    late = Index(service.empty_db)  # the grounding job finishes after the service started
    late.write_queries(query_rows("late-run", "ckpt", ["q0"], [text], embed_texts([text])))
    late.write_segments(rows)
    deadline = time.monotonic() + 120
    while (health := fetch(service.empty_url + "api/health")).status != 200 and time.monotonic() < deadline:
        time.sleep(1.0)
    assert health.json()["ready"] is True and health.json()["rows"] == 1
    assert fetch(service.empty_url + "api/search?q=door+opening").json()["results"][0]["video_id"] == "v0"
