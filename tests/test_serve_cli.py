"""`python -m jobs.serve` as a user runs it: its own Ray, a token made at start-up, a URL printed, not-ready on an
empty db, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
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
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRN_SERVE")}
    env.update(PYTHONPATH=str(REPO), RAY_ADDRESS="local")  # a Ray of its own, not the tests'
    token_file = tmp_path / "secret" / "token"
    command = [sys.executable, "-m", "jobs.serve", "--db", str(tmp_path / "db"), "--port", str(port),
               "--num-cpus", "0", "--generate-token", "--token-file", str(token_file)]
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
        assert "not ready yet: " in output and "no table 'segments'" in output  # asked with the new token
        assert f"new access token written to {token_file} (mode 0600)" in output
        assert f"access: token required, from the token file {token_file}" in output
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token not in output  # the token itself is never printed
        assert answer(port, "api/health") == (503, {"ready": False})  # readiness only, without the token
        assert answer(port, "api/search?q=door")[0] == 401
        status, body = answer(port, "api/search?q=door", token)
        assert status == 503 and "no table 'segments'" in body["error"]
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        assert process.returncode == 0, rest[-3000:]
        assert "stopping the service" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def answer(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
