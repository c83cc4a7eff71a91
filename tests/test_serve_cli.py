"""`python -m jobs.serve` as a user runs it: its own Ray, a URL printed, not-ready on an empty db, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_jobs_serve_starts_reports_not_ready_and_stops_on_sigterm(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "local"}  # a Ray of its own, not the tests'
    command = [sys.executable, "-m", "jobs.serve", "--db", str(tmp_path / "db"), "--port", str(port),
               "--num-cpus", "0"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "press Ctrl-C to stop" in line:
                break
        output = "".join(lines)
        assert f"search service at http://127.0.0.1:{port}/" in output, output[-3000:]
        assert "not ready yet: " in output and "no table 'segments'" in output
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=30)
            raise AssertionError("an empty db must not be ready")
        except urllib.error.HTTPError as error:
            assert error.code == 503 and json.loads(error.read())["ready"] is False
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        assert process.returncode == 0, rest[-3000:]
        assert "stopping the service" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
