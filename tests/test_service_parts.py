"""The search service's parts that need no running service: parameters, the video manifest, the Serve config,
and `jobs.serve`'s checks before it starts anything."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from drn.errors import InputError
from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord
from jobs import serve as serve_job
from moments.serve import params
from moments.serve.params import BadRequest
from moments.serve.videos import VideoLibrary

REPO = Path(__file__).resolve().parents[1]


def test_parameters_parse_or_name_the_problem() -> None:
    assert params.query_text("  a door  ") == "a door"
    assert params.k_value(None) == params.DEFAULT_K and params.k_value(" 7 ") == 7
    assert params.min_score("") is None and params.min_score("0.25") == 0.25
    assert params.flag("1", "live") and not params.flag(None, "live") and not params.flag("no", "live")
    assert params.clip_span(None, None, 10.0) is None
    assert params.clip_span("1.5", "20", 10.0) == (1.5, 10.0)  # the end is clipped to the video
    assert params.frame_time("10", 10.0) == 10.0 and params.frame_width(None) == params.DEFAULT_FRAME_WIDTH
    cases = [
        (lambda: params.query_text("x" * 20_000), "q", "20,000 characters"),
        (lambda: params.k_value("1e3"), "k", "whole number"),
        (lambda: params.k_value(str(params.MAX_K + 1)), "k", "between 1 and"),
        (lambda: params.min_score("-inf"), "min_score", "finite"),
        (lambda: params.clip_span("1", None, 10.0), "end", "end is missing"),
        (lambda: params.clip_span("0", "700", 900.0), "end", "at most"),
        (lambda: params.name("v" * 600, "video"), "video", "at most"),
    ]
    for call, parameter, message in cases:
        with pytest.raises(BadRequest, match=message) as caught:
            call()
        assert caught.value.parameter == parameter and 400 <= caught.value.status < 500
        assert caught.value.to_json()["parameter"] == parameter


def _store(path: Path, uris: dict[str, str], failed: tuple[str, ...] = ()) -> str:
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=4,
                         dtype="float32")
    with FeatureStoreWriter(path, meta) as writer:
        for video_id, uri in uris.items():
            if video_id in failed:
                writer.finish_video(VideoRecord(video_id, uri, status="failed", error="broken"))
                continue
            writer.add_clips(video_id, np.zeros((2, 4), np.float32), np.array([0.0, 1.0]), np.array([2.0, 3.0]))
            writer.finish_video(VideoRecord(video_id, uri, duration_s=3.0, num_clips=2))
    return str(path)


def test_video_library_maps_manifest_ids_to_files_under_the_root(tmp_path) -> None:
    old = tmp_path / "old"
    for relative in ("a/one.mp4", "b/two.mp4", "b/bad.mp4"):
        (old / relative).parent.mkdir(parents=True, exist_ok=True)
        (old / relative).write_bytes(b"video")
    uris = {"one": str(old / "a/one.mp4"), "two": f"file://{old / 'b/two.mp4'}", "bad": str(old / "b/bad.mp4")}
    store = _store(tmp_path / "features", uris, failed=("bad",))

    library = VideoLibrary.from_store(store)  # no root: where extraction found the videos
    assert library.root == old.resolve() and library.ids() == ["one", "two"] and "bad" not in library
    assert library.file_of("one") == old / "a/one.mp4" and library.file_of("two") == old / "b/two.mp4"
    for request in ("../old/a/one.mp4", str(old / "a/one.mp4"), "a/one.mp4", "bad", ""):
        assert library.file_of(request) is None  # only manifest ids, never paths

    moved = tmp_path / "moved"
    shutil.copytree(old / "a", moved / "a")
    (moved / "two.mp4").write_bytes(b"video")  # copied flat
    library = VideoLibrary.from_store(store, moved)
    assert library.file_of("one") == moved / "a/one.mp4" and library.file_of("two") == moved / "two.mp4"
    (moved / "a/one.mp4").unlink()
    assert library.file_of("one") is None and "one" in library

    remote = _store(tmp_path / "remote", {"x": "s3://bucket/videos/x.mp4"})
    assert VideoLibrary.from_store(remote).file_of("x") is None  # object storage needs a local --videos root
    (moved / "x.mp4").write_bytes(b"video")
    assert VideoLibrary.from_store(remote, moved).file_of("x") == moved / "x.mp4"


def test_serve_config_is_valid_and_builds_the_app(tmp_path, monkeypatch) -> None:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from moments.serve.app import MomentsService, access_from_args, app_builder, settings_from_args

    for name in ("DRN_SERVE_TOKEN", "DRN_SERVE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "configs" / "serve" / "moments.yaml").read_text()))
    assert config.http_options.host == "127.0.0.1"
    app = config.applications[0]
    assert app.import_path == "moments.serve.app:app_builder" and app.deployments[0].name == MomentsService.name
    scaling = app.deployments[0].autoscaling_config
    assert scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    assert isinstance(app_builder({**app.args, "db": str(tmp_path / "db")}), serve.Application)
    monkeypatch.chdir(tmp_path)  # relative paths are taken from where `serve run` runs
    settings = settings_from_args({**app.args, "db": "s3://bucket/db"})
    assert settings.db == "s3://bucket/db" and settings.features == str(tmp_path / "demo_output" / "features")
    assert settings.videos == str(tmp_path / "demo_output" / "library" / "videos")
    with pytest.raises(ValueError, match="unknown"):
        app_builder({"db": "x", "colour": "red"})

    assert access_from_args(app.args).token is None  # loopback: no token needed
    (tmp_path / "token").write_text("t" * 32 + "\n")
    access = access_from_args({**app.args, "token_file": "token"})  # relative: from the current folder
    assert access.token.matches("t" * 32) and not access.insecure_no_token
    assert isinstance(app_builder({**app.args, "token_file": "token", "insecure_no_token": False}), serve.Application)
    monkeypatch.setenv("DRN_SERVE_TOKEN_FILE", str(tmp_path / "token"))  # runtime_env: env_vars
    assert access_from_args(app.args).token.matches("t" * 32)
    with pytest.raises(ValueError, match="insecure_no_token must be true or false"):
        access_from_args({"insecure_no_token": "yes"})
    with pytest.raises(InputError, match="no such token file"):
        app_builder({**app.args, "token_file": "missing"})


def test_jobs_serve_refuses_bad_settings_before_starting_anything(tmp_path, capsys, monkeypatch) -> None:
    for name in ("DRN_SERVE_TOKEN", "DRN_SERVE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "short").write_text("abc")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--db", str(tmp_path), "--port", str(port)], "cannot listen on 127.0.0.1:"),
            (["--db", str(tmp_path), "--features", str(tmp_path / "none")], "--features: no such file"),
            (["--db", str(tmp_path), "--port", "70000"], "--port must be between"),
            (["--db", str(tmp_path), "--replicas", "0"], "--replicas must be at least 1"),
            (["--db", str(tmp_path), "--host", "0.0.0.0"], "listens beyond this machine, so the service needs a token"),
            (["--db", str(tmp_path), "--host", "::"], "needs a token"),
            (["--db", str(tmp_path), "--token-file", str(tmp_path / "none")], "no such token file"),
            (["--db", str(tmp_path), "--token-file", str(tmp_path / "short")], "must have 16 to 512 characters"),
        ]
        for argv, message in cases:
            assert serve_job.main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and message in err and err.count("\n") == 1
    text = serve_job.build_parser().format_help()
    for option in ("--db", "--features", "--videos", "--checkpoint", "--host", "--port", "--replicas", "--token-file",
                   "--generate-token", "--insecure-no-token"):
        assert option in text
    assert "127.0.0.1" in text


def test_the_demo_says_how_to_watch_its_results_and_checks_the_port_first(tmp_path, capsys) -> None:
    from jobs import demo as demo_cli
    from moments.demo.report import where_things_are
    from moments.demo.settings import DemoPaths

    paths = DemoPaths(tmp_path / "demo")
    note = where_things_are(paths)
    assert f"python -m jobs.serve --db {paths.db} --features {paths.features} --videos {paths.videos}" in note
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert demo_cli.main(["--out", str(tmp_path / "out"), "--serve", "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_pages_files_ship_as_package_data() -> None:
    import fnmatch
    import re

    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    globs = re.findall(r'"([^"]+)"', re.search(r'^"moments\.serve" = \[(.*?)\]', section, re.M).group(1))
    package = REPO / "moments" / "serve"
    files = sorted(path.relative_to(package).as_posix() for path in (package / "web").iterdir())
    assert files == ["web/app.js", "web/index.html", "web/login.html", "web/style.css"]
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in globs) for name in files)


def test_a_replica_runs_drn_on_the_cpus_ray_reserved_for_it(ray_session) -> None:
    from moments.serve.backend import replica_torch_threads

    @ray_session.remote
    class Replica:
        def threads(self) -> int:
            return replica_torch_threads()

    def threads_with(cpus: float) -> int:
        replica = Replica.options(num_cpus=cpus).remote()
        try:
            return ray_session.get(replica.threads.remote())
        finally:
            ray_session.kill(replica)  # give the shared session's CPUs back

    assert [threads_with(cpus) for cpus in (2, 1, 0.5)] == [2, 1, 1]
    assert replica_torch_threads() == 1  # the driver: no CPUs reserved for it
