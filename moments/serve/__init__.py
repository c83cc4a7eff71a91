"""The search service on Ray Serve, with the web page that plays the moments it finds (docs/serve.md).

- ``backend``: what the service answers, without the web framework (``SearchBackend``, ``ServiceSettings``):
  readiness, indexed and live (two-stage) search, a video's moments, clips and frames;
- ``app``: the Serve deployment and its routes (``start_service``; ``app_builder`` for ``serve run`` configs);
- ``params``: request parameters, each bad one a ``BadRequest``; ``media``: clips and frames; ``videos``: which
  video files may be served; ``web/``: the page;
- ``client``: a running service asked from ``jobs.search`` (``remote_search``), without torch or LanceDB.

Names load on first use (PEP 562), so that the client stays light.
"""

from __future__ import annotations

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.serve.backend": ("SearchBackend", "ServiceSettings", "NotReady"),
    "moments.serve.params": ("BadRequest",),
    "moments.serve.app": ("start_service", "app_builder"),
    "moments.serve.client": ("remote_search",),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
