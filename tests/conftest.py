"""Shared fixtures: one real local Ray for the session, the real data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3_server import S3Server, start_s3_server

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DRN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real annotations and videos in ../shared/data; tests that use them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with two CPUs, started once and shared by every test that asks for it."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh local Ray, never another one found running on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A real S3-compatible server (moto, plain HTTP on a free loopback port, credentials checked), for the
    session; stopped after. Point code at it with ``s3_env`` or by passing ``s3_server.env`` to a subprocess."""
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "server.log")
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The standard AWS variables set to the test server for one test (undone after it)."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "DRN_S3_"))]:
        monkeypatch.delenv(name)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
