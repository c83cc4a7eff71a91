"""The search service's access token without a running service: where it comes from, how requests are judged,
sessions, and `jobs.serve` refusing to listen beyond loopback without one (before Ray starts).

The service's routes answering 401/200 run against a real Serve app in tests/test_service.py (access section) and
in Chromium in tests/test_web_page.py.
"""

from __future__ import annotations

import argparse
import os
import pickle
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drn.errors import InputError
from jobs import search as search_job
from jobs import serve as serve_job
from moments.serve import auth
from moments.serve.auth import COOKIE, Access, ServiceToken, Verdict, decide

REPO = Path(__file__).resolve().parents[1]
TOKEN = "k" * 30 + "-Secret_9"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch) -> None:
    for name in (auth.TOKEN_ENV, auth.TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)


def token_file(folder: Path, text: str, name: str = "token") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------- tokens
def test_a_token_hides_itself_and_compares_exactly() -> None:
    token = ServiceToken(f"  {TOKEN}\n", "the test's token")
    assert TOKEN not in repr(token) and "the test's token" in repr(token)
    assert token.matches(TOKEN) and not token.matches(TOKEN[:-1]) and not token.matches(TOKEN + "x")
    assert not token.matches("") and not token.matches(TOKEN.upper())
    assert token.authorization() == f"Bearer {TOKEN}"
    assert pickle.loads(pickle.dumps(token)).matches(TOKEN)  # travels to the replicas whole
    assert ServiceToken.generate().authorization() != ServiceToken.generate().authorization()


@pytest.mark.parametrize(("secret", "message"), [
    ("", "is empty"), ("   \n", "is empty"), ("short", "must have 16 to 512 characters"),
    ("x" * 600, "must have 16 to 512 characters"), ("two words in a token", "one word of printable ASCII"),
    ("ünïcödé-token-of-length", "one word of printable ASCII"),
])
def test_unusable_tokens_are_refused_without_showing_them(secret, message) -> None:
    with pytest.raises(InputError, match=message) as caught:
        ServiceToken(secret, "the token file /x")
    assert str(caught.value).startswith("the token file /x") and (not secret.strip() or secret not in str(caught.value))


def test_the_token_comes_from_a_file_then_the_environment(tmp_path) -> None:
    file = token_file(tmp_path, TOKEN + "\n")
    other = token_file(tmp_path, "o" * 24, "other")
    assert auth.token_from(None, {}) is None
    assert auth.token_from(file, {auth.TOKEN_ENV: "e" * 20}).matches(TOKEN)  # --token-file first
    assert auth.token_from(None, {auth.TOKEN_ENV: "e" * 20, auth.TOKEN_FILE_ENV: str(other)}).matches("e" * 20)
    assert auth.token_from(None, {auth.TOKEN_FILE_ENV: str(other)}).matches("o" * 24)
    with pytest.raises(InputError, match=r"\$DRN_SERVE_TOKEN is empty"):
        auth.token_from(None, {auth.TOKEN_ENV: ""})
    with pytest.raises(InputError, match="no such token file"):
        auth.token_from(tmp_path / "missing", {})
    with pytest.raises(InputError, match="is empty"):
        auth.token_from(token_file(tmp_path, "\n", "empty"), {})


def test_a_generated_token_file_is_private_and_never_overwrites_another_file(tmp_path) -> None:
    token, path = auth.generate_token_file(tmp_path / "new" / "token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert auth.read_token_file(path).authorization() == token.authorization()
    again, _ = auth.generate_token_file(path)  # a new token replaces the old one
    assert again.authorization() != token.authorization() and auth.read_token_file(path).matches(
        again.authorization().removeprefix("Bearer "))
    notes = token_file(tmp_path, "line one\nline two\n", "notes.txt")
    with pytest.raises(InputError, match="is not a token file"):
        auth.generate_token_file(notes)
    assert notes.read_text() == "line one\nline two\n"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["token"]  # no partial files left


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert auth.is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.5", "10.0.0.1", "example.org", "my-laptop"):
        assert not auth.is_loopback(host), host


def test_beyond_loopback_a_token_is_required_unless_insecure_is_said() -> None:
    Access().check_host("127.0.0.1")
    Access(ServiceToken(TOKEN)).check_host("0.0.0.0")
    Access(insecure_no_token=True).check_host("0.0.0.0")
    for host in ("0.0.0.0", "192.168.1.5", None):
        with pytest.raises(InputError, match="listens beyond this machine, so the service needs a token") as caught:
            Access().check_host(host)
        assert "--insecure-no-token" in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------------- requests
def test_requests_are_judged_by_header_then_session_and_never_by_url() -> None:
    token = ServiceToken(TOKEN)
    access = Access(token)
    live = f"{COOKIE}={token.session_value(int(time.time()) + 60)}"

    def verdict(headers=None, query=(), cookie=None) -> Verdict:
        return decide(access, headers or {}, set(query), cookie).verdict

    assert decide(Access(), {}, set(), None).verdict is Verdict.AUTHENTICATED  # no token configured
    assert verdict({"authorization": f"Bearer {TOKEN}"}) is Verdict.AUTHENTICATED
    assert verdict({"authorization": f"bearer   {TOKEN} "}) is Verdict.AUTHENTICATED
    assert verdict(cookie=f"other=1; {live}; x=2") is Verdict.AUTHENTICATED
    assert verdict() is Verdict.ANONYMOUS
    assert verdict(cookie=f"{COOKIE}={TOKEN}") is Verdict.ANONYMOUS  # the raw token is no session
    refused = [
        verdict({"authorization": "Bearer " + "w" * 39}), verdict({"authorization": "Bearer "}),
        verdict({"authorization": ""}), verdict({"authorization": f"Basic {TOKEN}"}),
        verdict(query=("token",)), verdict(query=("access_token", "q")),
        verdict({"authorization": f"Bearer {TOKEN}"}, query=("token",)),
        verdict({"authorization": "Bearer " + "w" * 39}, cookie=live),  # a wrong header is not rescued
    ]
    assert refused == [Verdict.REFUSED] * len(refused)
    assert "in the URL is refused" in decide(access, {}, {"token"}, None).reason
    assert decide(access, {"authorization": "Bearer  "}, set(), None).reason == "the token is empty"


def test_sessions_expire_and_die_with_the_token() -> None:
    token, other = ServiceToken(TOKEN), ServiceToken("o" * 30)
    now = 1_800_000_000
    value = token.session_value(now + 100)
    assert token.session_valid(value, now) and not token.session_valid(value, now + 100)
    assert not other.session_valid(value, now)  # a new token ends every session
    expires, mac = value.split(".")[1:]
    for forged in (f"v1.{int(expires) + 10_000}.{mac}", f"v1.{expires}.{mac[:-1]}0", f"v2.{expires}.{mac}",
                   f"v1.{expires}", "", "v1..", f"v1.-5.{mac}", "v1.99999999999999999999.x"):
        assert not token.session_valid(forged, now), forged
    cookie = auth.session_cookie(token, "/app/", secure=False, now=now)
    assert cookie.startswith(f"{COOKIE}=v1.{now + auth.SESSION_S}.") and TOKEN not in cookie
    assert cookie.endswith("; Path=/app/; HttpOnly; SameSite=Strict")
    assert auth.session_cookie(token, "/", secure=True).endswith("; Secure")
    assert "Max-Age=0" in auth.cleared_cookie("/", secure=False)
    assert auth.cookie_values(f'a=1; {COOKIE}=x; {COOKIE}="y"; b', COOKIE) == ["x", "y"]


# ---------------------------------------------------------------------------------------------------------- jobs.serve
def serve_args(*argv: str) -> argparse.Namespace:
    return serve_job.build_parser().parse_args(["--db", "db", *argv])


def test_jobs_serve_takes_the_token_from_a_file_the_environment_or_makes_one(tmp_path, monkeypatch, capsys) -> None:
    file = token_file(tmp_path, TOKEN)
    assert serve_job.access_from(serve_args("--token-file", str(file), "--host", "0.0.0.0")).token.matches(TOKEN)
    assert serve_job.access_from(serve_args()).token is None  # loopback: optional
    monkeypatch.setenv(auth.TOKEN_ENV, "e" * 20)
    assert serve_job.access_from(serve_args("--host", "0.0.0.0")).token.matches("e" * 20)
    monkeypatch.delenv(auth.TOKEN_ENV)
    made = serve_job.access_from(serve_args("--generate-token", "--token-file", str(tmp_path / "made")))
    assert f"new access token written to {tmp_path / 'made'} (mode 0600)" in capsys.readouterr().out
    assert auth.read_token_file(tmp_path / "made").authorization() == made.token.authorization()
    assert serve_job.access_from(serve_args("--host", "0.0.0.0", "--insecure-no-token")).insecure_no_token
    notes = serve_job.access_notes(made, "0.0.0.0")
    assert notes[0].startswith(f"access: token required, from the token file {tmp_path / 'made'}")
    assert "plain HTTP" in notes[1]
    assert "without a token" in serve_job.access_notes(Access(insecure_no_token=True), "0.0.0.0")[0]
    assert serve_job.access_notes(Access(), "127.0.0.1") == []


@pytest.mark.parametrize("parser", [serve_job.build_parser, search_job.build_parser], ids=["serve", "search"])
def test_the_token_is_never_a_command_line_value(parser, capsys) -> None:
    text = parser().format_help()
    assert "--token-file" in text and "--token " not in text
    for argv in (["--token", TOKEN], [f"--token={TOKEN}"], ["--tok", TOKEN]):
        with pytest.raises(SystemExit) as caught:
            parser().parse_args(["--db", "db", *argv] if parser is serve_job.build_parser else ["door", *argv])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and TOKEN not in err, err
        assert "--token" in err


def test_jobs_serve_refuses_to_listen_beyond_loopback_without_a_token_before_starting_ray(tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRN_SERVE")}
    env.update(PYTHONPATH=str(REPO), RAY_ADDRESS="local")
    cases = [
        (["--host", "0.0.0.0"], "error: host 0.0.0.0 listens beyond this machine, so the service needs a token"),
        (["--host", "192.168.1.5", "--port", "8123"], "error: host 192.168.1.5 listens beyond this machine"),
        (["--host", "0.0.0.0", "--token-file", str(tmp_path / "none")], "no such token file"),
        (["--host", "0.0.0.0", "--token-file", str(token_file(tmp_path, "\n", "empty"))], "is empty"),
    ]
    for flags, message in cases:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "jobs.serve", "--db", str(tmp_path / "db"), *flags], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stdout == "" and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert "Ray" not in done.stderr and time.monotonic() - started < 60  # nothing was started
    assert not (tmp_path / "db").exists()
