"""The search service: `python -m jobs.serve --db D [--features S --videos ROOT] [--host 127.0.0.1 --port 8000]`.

Starts a Ray Serve application (moments.serve.app) that loads the index and the sentence model once and serves a
JSON API and a web page that plays the moments it finds. It binds to 127.0.0.1 unless --host says otherwise, and
runs until Ctrl-C (or SIGTERM). Beyond loopback it needs an access token (--token-file, $DRN_SERVE_TOKEN,
$DRN_SERVE_TOKEN_FILE or --generate-token) and refuses to start without one unless --insecure-no-token
(moments.serve.auth). On a cluster, `serve deploy configs/serve/moments.yaml` deploys the same application
(docs/serve.md, docs/cluster.md).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from drn.errors import InputError
from drn.store.object_store import is_uri
from jobs.cli import job_main
from moments.serve.auth import (
    DEFAULT_TOKEN_FILE,
    INSECURE_FLAG,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    Access,
    ServiceToken,
    generate_token_file,
    is_loopback,
    refuse_token_values,
    token_from,
)

if TYPE_CHECKING:
    from moments.serve.backend import ServiceSettings


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `python -m jobs.serve`."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.serve",
        description="Serve search over a LanceDB index as a JSON API and a web page that plays the moments found "
        "(Ray Serve). The index and the sentence model are loaded once.",
        epilog="example: python -m jobs.serve --db demo_output/lancedb --features demo_output/features "
        "--videos demo_output/library/videos --port 8000",
    )
    parser.add_argument("--db", required=True, help="LanceDB URI of the index (a folder or s3://...)")
    parser.add_argument("--table", default="segments", help="table name (default: segments)")
    parser.add_argument("--features", default=None, metavar="S",
                        help="feature store whose videos/ table lists the videos that may be played")
    parser.add_argument("--videos", default=None, metavar="ROOT",
                        help="folder holding the video files (default: where extraction found them)")
    parser.add_argument("--checkpoint", default=None, metavar="C",
                        help="DRN checkpoint for live search, a local file: the one the cells table was built with "
                        "(default: where the table records it)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of the service (default: 1)")
    parser.add_argument("--num-cpus", type=float, default=1.0,
                        help="CPUs reserved per replica (default: 1); live search runs DRN on as many threads, so "
                        "a service alone on its machine answers live searches faster with all of its cores")
    access = parser.add_argument_group(
        "access (a token is required beyond loopback; the page asks for it once, programs send Authorization: "
        "Bearer)")
    access.add_argument("--token-file", default=None, metavar="PATH",
                        help=f"file holding the access token, one line (default: ${TOKEN_ENV}, else the file "
                        f"${TOKEN_FILE_ENV}); never give the token itself on the command line")
    access.add_argument("--generate-token", action="store_true",
                        help=f"make a new random token at start-up and write it to --token-file (default "
                        f"{DEFAULT_TOKEN_FILE}) with mode 0600, replacing the token it held")
    access.add_argument(INSECURE_FLAG, action="store_true",
                        help="listen beyond loopback without a token: anyone who can connect can search and "
                        "watch every video")
    refuse_token_values(parser)
    parser.add_argument("--detach", action="store_true",
                        help="return once the app is up, leaving it on the Ray cluster (RAY_ADDRESS); a local Ray "
                        "started by this command stops with it")
    return parser


def check_paths(args: argparse.Namespace) -> None:
    """Local paths that must exist before anything starts (the db may not exist yet: it reports not ready)."""
    for flag, value in (("--features", args.features), ("--videos", args.videos), ("--checkpoint", args.checkpoint)):
        if value and not is_uri(value) and not Path(value).exists():
            raise InputError(f"{flag}: no such file or folder", path=value)
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, not {args.port}")
    if args.replicas < 1:
        raise InputError(f"--replicas must be at least 1, not {args.replicas}")
    if args.num_cpus < 0:
        raise InputError(f"--num-cpus must not be negative, not {args.num_cpus}")


def access_from(args: argparse.Namespace) -> Access:
    """The service's Access from the flags and the environment; refused (InputError) before anything starts when
    the service would listen beyond loopback without a token."""
    if args.generate_token:
        token, path = generate_token_file(args.token_file)
        print(f"new access token written to {path} (mode 0600)", flush=True)
    else:
        token = token_from(args.token_file)
    access = Access(token, insecure_no_token=args.insecure_no_token)
    access.check_host(args.host)
    return access


def health(url: str, token: ServiceToken | None = None) -> dict:
    """The service's /api/health answer (ready or not; with the token, what is loaded)."""
    headers = {"Authorization": token.authorization()} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "api/health", headers=headers),
                                    timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read() or b"{}")


def serve_and_wait(settings: ServiceSettings, host: str, port: int, *, access: Access | None = None,
                   replicas: int = 1, num_cpus: float = 1.0, detach: bool = False) -> str:
    """Start the service (Ray is joined or started by ``pipeline.ray_runtime.start_ray``), print its URL and
    state, and wait for Ctrl-C (or return at once with `detach`). Returns the URL.

    `access` None: the token of the environment ($DRN_SERVE_TOKEN, $DRN_SERVE_TOKEN_FILE), if any."""
    from ray import serve

    from moments.serve.app import check_port_free, start_service
    from pipeline.ray_runtime import start_ray

    access = access if access is not None else Access(token_from())
    access.check_host(host)
    check_port_free(host, port)
    start_ray()
    url = start_service(settings, host, port, access=access, num_replicas=replicas, num_cpus=num_cpus)
    state = health(url, access.token)
    if state.get("ready"):
        print(f"ready: {state.get('rows')} segments, {state.get('videos') or 0} playable videos", flush=True)
    else:
        print(f"not ready yet: {state.get('reason')} (it checks again on each request)", flush=True)
    for line in access_notes(access, host):
        print(line, flush=True)
    print(f"search service at {url}  (DRN_SERVE={url.rstrip('/')} makes jobs.search use it)", flush=True)
    if detach:
        return url
    print("open it in a browser; press Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the service", flush=True)
        serve.shutdown()
    return url


def access_notes(access: Access, host: str) -> list[str]:
    """What the user must know about access: where the token is, and the risks of this listener."""
    notes = []
    if access.token is not None:
        notes.append(f"access: token required, from {access.token.source}; the page asks for it once, and "
                     f"jobs.search sends it from ${TOKEN_ENV} or the file ${TOKEN_FILE_ENV}")
    if not is_loopback(host):
        notes.append(f"warning: listening on {host} without a token ({INSECURE_FLAG}): anyone who can reach this "
                     "machine can search and watch the videos" if access.token is None else
                     f"warning: listening on {host} over plain HTTP: the token crosses the network in clear unless "
                     "a TLS proxy is in front")
    return notes


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_paths(args)
    access = access_from(args)  # before Ray starts: no token beyond loopback ends here
    from moments.serve.backend import ServiceSettings

    settings = ServiceSettings(db=args.db, table=args.table, features=args.features, videos=args.videos,
                               checkpoint=args.checkpoint)
    serve_and_wait(settings, args.host, args.port, access=access, replicas=args.replicas, num_cpus=args.num_cpus,
                   detach=args.detach)
    return 0


if __name__ == "__main__":
    sys.exit(main())
