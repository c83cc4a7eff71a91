"""A small client of the search service (stdlib only): `jobs.search` uses it when `DRN_SERVE` is set.

It imports neither torch, nor lancedb, nor sentence-transformers, so a search from a shell costs one HTTP round
trip to a service that has everything loaded. The service's 4xx answers become `InputError`s with its message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from drn.errors import InputError

SERVE_ENV = "DRN_SERVE"
TIMEOUT_S = 120.0


def service_address() -> str | None:
    """The service's base URL from $DRN_SERVE (e.g. http://127.0.0.1:8000), or None when unset or empty."""
    value = os.environ.get(SERVE_ENV, "").strip()
    return value or None


def get_json(base_url: str, path: str, params: dict[str, Any] | None = None, timeout: float = TIMEOUT_S) -> Any:
    """GET base_url/path?params as JSON; an error answer or an unreachable service is an InputError."""
    query = urllib.parse.urlencode({key: value for key, value in (params or {}).items() if value is not None})
    url = f"{base_url.rstrip('/')}/{path.lstrip('/')}" + (f"?{query}" if query else "")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"{SERVE_ENV} must be an http:// or https:// URL, not {base_url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise InputError(f"the search service answered {error.code}: {_message(error)}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(f"cannot reach the search service at {base_url} ({SERVE_ENV}): {reason}; start it with "
                         f"python -m jobs.serve, or unset {SERVE_ENV} to search the index directly") from None
    except ValueError:
        raise InputError(f"the search service at {base_url} did not answer JSON") from None


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("error") or error.reason)
    except (ValueError, AttributeError, OSError):
        return str(error.reason)


def remote_search(base_url: str, text: str, *, k: int = 10, video: str | None = None,
                  min_score: float | None = None, run_id: str | None = None
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of GET /api/search (the fields `jobs.search --json` prints for a local search) and its notices."""
    answer = get_json(base_url, "api/search",
                      {"q": text, "k": k, "video": video, "min_score": min_score, "run": run_id})
    return answer["results"], list(answer.get("notices") or [])
