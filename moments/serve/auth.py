"""Who may use the search service: one shared secret token, checked on every request (docs/serve.md).

- **When.** A token is required whenever the service listens beyond loopback; without one it refuses to start,
  unless told `insecure_no_token` (`--insecure-no-token`). On loopback it is optional; once configured, it is
  enforced there too.
- **Where from.** A file (`--token-file PATH`, or `DRN_SERVE_TOKEN_FILE`) or the environment (`DRN_SERVE_TOKEN`),
  never a command-line value. `generate_token_file` makes one (mode 0600), as Jupyter does.
- **How presented.** Programs send `Authorization: Bearer <token>`. The page signs in once (`POST api/login`
  with the token in the body), which sets an HttpOnly, SameSite=Strict cookie for its `<video>` and `<img>`
  elements. The cookie holds `v1.<expiry>.<HMAC-SHA256 of the expiry, keyed by the token>`, never the token: it
  lasts `SESSION_S` at most, and a new token ends every session. A token in the URL (`?token=`), an empty token
  or a wrong one is refused. Comparisons take constant time (`hmac.compare_digest`).

Standard library only: `moments.serve.client` (and so `jobs.search`) reads tokens with it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from drn.errors import InputError

TOKEN_ENV = "DRN_SERVE_TOKEN"
TOKEN_FILE_ENV = "DRN_SERVE_TOKEN_FILE"
DEFAULT_TOKEN_FILE = Path("~/.config/drn-moments/serve_token")
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
COOKIE = "drn_moments_session"
SESSION_S = 12 * 3600
URL_TOKEN_NAMES = ("token", "access_token")
INSECURE_FLAG = "--insecure-no-token"


class ServiceToken:
    """The secret, and where it came from (`source`, for messages); its repr never shows the secret, so it stays
    out of logs and tracebacks."""

    __slots__ = ("_secret", "source")

    def __init__(self, secret: str, source: str = "the token") -> None:
        self._secret = checked_token(secret, source)
        self.source = source

    def __repr__(self) -> str:
        return f"ServiceToken(<hidden>, from {self.source})"

    def __reduce__(self) -> tuple:  # travels to the replicas whole
        return (ServiceToken, (self._secret, self.source))

    @classmethod
    def generate(cls, source: str = "a new token") -> ServiceToken:
        """A new random token: 256 bits, URL-safe text."""
        return cls(secrets.token_urlsafe(32), source)

    def matches(self, presented: str) -> bool:
        """Whether `presented` is the token, in constant time (digests of equal length: not even the token's
        length leaks)."""
        return hmac.compare_digest(_digest(presented), _digest(self._secret))

    def authorization(self) -> str:
        """The `Authorization` header value that presents it."""
        return f"Bearer {self._secret}"

    def session_value(self, expires: int) -> str:
        """A session cookie's value, valid until `expires` (Unix seconds)."""
        return f"v1.{expires}.{self._mac(expires)}"

    def session_valid(self, value: str, now: float | None = None) -> bool:
        """Whether a session cookie's value was made with this token and has not expired."""
        version, _, rest = value.partition(".")
        expires_text, _, mac = rest.partition(".")
        if version != "v1" or not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        if expires <= (time.time() if now is None else now):
            return False
        return hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(expires).encode("ascii"))

    def write(self, path: Path) -> None:
        """Write the token to `path` with mode 0600 (its folder 0700 when made here), replacing what it held."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self._secret + "\n")
        os.replace(partial, path)

    def _mac(self, expires: int) -> str:
        message = f"drn-moments-session.v1.{expires}".encode()
        return hmac.new(self._secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def checked_token(secret: str, source: str) -> str:
    """The token without surrounding whitespace; an InputError naming `source` (never the value) when unusable."""
    secret = secret.strip()
    if not secret:
        raise InputError(f"{source} is empty")
    if len(secret) < MIN_TOKEN_CHARS or len(secret) > MAX_TOKEN_CHARS:
        raise InputError(f"{source} must have {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters, not {len(secret)}; "
                         "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not all("!" <= char <= "~" for char in secret):
        raise InputError(f"{source} must be one word of printable ASCII (it travels in an HTTP header)")
    return secret


def read_token_file(path: str | os.PathLike) -> ServiceToken:
    """The token held by a file (its only line)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such token file", path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the token file ({getattr(error, 'strerror', None) or error})",
                         path=path) from None
    return ServiceToken(text, f"the token file {file}")


def token_from(token_file: str | os.PathLike | None = None,
               environ: Mapping[str, str] | None = None) -> ServiceToken | None:
    """The configured token: `token_file`, else $DRN_SERVE_TOKEN, else the file $DRN_SERVE_TOKEN_FILE; or None."""
    environ = os.environ if environ is None else environ
    if token_file:
        return read_token_file(token_file)
    if environ.get(TOKEN_ENV) is not None:
        return ServiceToken(environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if environ.get(TOKEN_FILE_ENV):
        return read_token_file(environ[TOKEN_FILE_ENV])
    return None


class _RefuseTokenValue(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string}: a token is never given on the command line (process lists and shell "
                     f"histories show it); use --token-file PATH or ${TOKEN_ENV}")


def refuse_token_values(parser: argparse.ArgumentParser) -> None:
    """A hidden `--token` that refuses its value without showing it (and keeps `--token` from abbreviating
    `--token-file`, which would take the token for a file name)."""
    parser.add_argument("--token", nargs="?", action=_RefuseTokenValue, help=argparse.SUPPRESS)


def generate_token_file(path: str | os.PathLike | None = None) -> tuple[ServiceToken, Path]:
    """A new token written to `path` (default DEFAULT_TOKEN_FILE) with mode 0600; an existing file is replaced
    only when it looks like a token file (one short line), so a mistyped path never overwrites anything else."""
    file = Path(path or DEFAULT_TOKEN_FILE).expanduser()
    if file.exists() and not _looks_like_token_file(file):
        raise InputError("exists and is not a token file (one line); not replacing it", path=file)
    token = ServiceToken.generate(f"the token file {file}")
    token.write(file)
    return token, file


def _looks_like_token_file(file: Path) -> bool:
    try:
        return file.is_file() and file.stat().st_size <= MAX_TOKEN_CHARS + 2 and \
            len(file.read_text(encoding="utf-8").strip().splitlines()) <= 1
    except (OSError, UnicodeDecodeError):
        return False


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or nothing: assume the network can reach it


@dataclass(frozen=True)
class Access:
    """Who may use the service: `token` (None: anyone who can connect), and whether a listener beyond loopback
    may run without one."""

    token: ServiceToken | None = None
    insecure_no_token: bool = False

    def check_host(self, host: str | None) -> None:
        """InputError when the service would listen on `host` (None: unknown) beyond loopback without a token."""
        if self.token is not None or self.insecure_no_token or (host is not None and is_loopback(host)):
            return
        where = f"host {host}" if host is not None else "an unknown host"
        raise InputError(f"{where} listens beyond this machine, so the service needs a token: give --token-file "
                         f"PATH (token_file in a Serve config), set {TOKEN_ENV} or {TOKEN_FILE_ENV}, or "
                         f"--generate-token; {INSECURE_FLAG} serves anyone who can connect")


class Verdict(Enum):
    """What a request's credentials say: the token (or a live session), none at all, or a refusal."""

    AUTHENTICATED = "authenticated"
    ANONYMOUS = "anonymous"
    REFUSED = "refused"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


def decide(access: Access, headers: Mapping[str, str], query_names: set[str], cookie_header: str | None,
           now: float | None = None) -> Decision:
    """Judge a request: `headers` with lower-case names, the names in its query string, its Cookie header.

    A token in the URL is refused whatever else comes with it; an `Authorization` header, when sent, decides
    alone (a wrong or empty one is refused, never rescued by a cookie); else a live session cookie signs in."""
    if access.token is None:
        return Decision(Verdict.AUTHENTICATED)
    if query_names & set(URL_TOKEN_NAMES):
        return Decision(Verdict.REFUSED, "a token in the URL is refused (URLs end up in logs and histories); send "
                                         "it in an Authorization: Bearer header")
    header = headers.get("authorization")
    if header is not None:
        return _judge_header(access.token, header)
    if any(access.token.session_valid(value, now) for value in cookie_values(cookie_header, COOKIE)):
        return Decision(Verdict.AUTHENTICATED)
    return Decision(Verdict.ANONYMOUS, "this service needs its token: send Authorization: Bearer <token>, or sign "
                                       "in on the page")


def _judge_header(token: ServiceToken, header: str) -> Decision:
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return Decision(Verdict.REFUSED, "the Authorization header must be: Bearer <token>")
    presented = presented.strip()
    if not presented:
        return Decision(Verdict.REFUSED, "the token is empty")
    if not token.matches(presented):
        return Decision(Verdict.REFUSED, "wrong token")
    return Decision(Verdict.AUTHENTICATED)


def cookie_values(header: str | None, name: str) -> list[str]:
    """Every value of cookie `name` in a Cookie header (one per path it was set for)."""
    values = []
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            values.append(value.strip().strip('"'))
    return values


def session_cookie(token: ServiceToken, path: str, *, secure: bool, now: float | None = None) -> str:
    """The Set-Cookie value that signs a browser in for SESSION_S (a browser-session cookie: no Max-Age)."""
    expires = int(time.time() if now is None else now) + SESSION_S
    return (f"{COOKIE}={token.session_value(expires)}; Path={path}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def cleared_cookie(path: str, *, secure: bool) -> str:
    """The Set-Cookie value that signs a browser out."""
    return f"{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
