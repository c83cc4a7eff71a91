"""A small client of the search service (stdlib only): `jobs.search` uses it when `DRN_SERVE` is set.

It imports neither torch, nor lancedb, nor sentence-transformers, so a search from a shell costs one HTTP round
trip to a service that has everything loaded. The service's 4xx answers become `InputError`s with its message.
The service's access token, when it has one, comes from $DRN_SERVE_TOKEN or the file $DRN_SERVE_TOKEN_FILE (or
the file `jobs.search --token-file` names) and travels in an `Authorization: Bearer` header, never in the URL.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from drn.errors import InputError
from moments.serve.auth import TOKEN_ENV, TOKEN_FILE_ENV, ServiceToken, token_from

SERVE_ENV = "DRN_SERVE"
TIMEOUT_S = 120.0


def service_address() -> str | None:
    """The service's base URL from $DRN_SERVE (e.g. http://127.0.0.1:8000), or None when unset or empty."""
    value = os.environ.get(SERVE_ENV, "").strip()
    return value or None


def service_token(token_file: str | None = None) -> ServiceToken | None:
    """The token to send: `token_file`'s, else $DRN_SERVE_TOKEN's, else the file $DRN_SERVE_TOKEN_FILE's; or None."""
    return token_from(token_file)


def get_json(base_url: str, path: str, params: dict[str, Any] | None = None, timeout: float = TIMEOUT_S,
             token: ServiceToken | None = None) -> Any:
    """GET base_url/path?params as JSON, with the token when given; an error answer or an unreachable service is
    an InputError."""
    query = urllib.parse.urlencode({key: value for key, value in (params or {}).items() if value is not None})
    url = f"{base_url.rstrip('/')}/{path.lstrip('/')}" + (f"?{query}" if query else "")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"{SERVE_ENV} must be an http:// or https:// URL, not {base_url!r}")
    headers = {"Authorization": token.authorization()} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        hint = _token_hint(token) if error.code == 401 else ""
        raise InputError(f"the search service answered {error.code}: {_message(error)}{hint}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(f"cannot reach the search service at {base_url} ({SERVE_ENV}): {reason}; start it with "
                         f"python -m jobs.serve, or unset {SERVE_ENV} to search the index directly") from None
    except ValueError:
        raise InputError(f"the search service at {base_url} did not answer JSON") from None


def _token_hint(token: ServiceToken | None) -> str:
    if token is None:
        return f"; set {TOKEN_ENV}, or {TOKEN_FILE_ENV} to the file holding the service's token"
    return f"; the token sent (from {token.source}) is not the service's"


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("error") or error.reason)
    except (ValueError, AttributeError, OSError):
        return str(error.reason)


def remote_search(base_url: str, text: str, *, k: int = 10, video: str | None = None,
                  min_score: float | None = None, run_id: str | None = None, token: ServiceToken | None = None
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of GET /api/search (the fields `jobs.search --json` prints for a local search) and its notices."""
    answer = get_json(base_url, "api/search",
                      {"q": text, "k": k, "video": video, "min_score": min_score, "run": run_id}, token=token)
    return answer["results"], list(answer.get("notices") or [])
