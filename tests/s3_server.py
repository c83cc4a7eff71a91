"""A real S3-compatible server for tests: moto's server mode over plain HTTP on a free loopback port.

The server checks credentials (moto's IAM authentication is switched on once a user and its access key exist),
so wrong keys are refused as by a real store. ``S3Server.env`` holds the standard AWS variables that point a
process at it; tests hand them to subprocesses or set them with ``monkeypatch`` (never globally).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto server and the credentials of its one IAM user."""

    process: subprocess.Popen
    endpoint: str
    access_key: str
    secret_key: str
    buckets: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points the project (pyarrow, LanceDB, Ray workers) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION)

    def new_bucket(self, prefix: str = "t") -> str:
        """A fresh, empty bucket (its name is unique in the session)."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def upload_folder(self, folder: str | Path, bucket: str, prefix: str) -> str:
        """Copy a local folder (recursively) under ``s3://bucket/prefix``; returns that URI."""
        client = self.client()
        root = Path(folder)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
        return f"s3://{bucket}/{prefix}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


def start_s3_server(log_path: str | Path | None = None) -> S3Server:
    """Start moto on a free port, create an IAM user allowed everything, switch authentication on."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (the server keeps it)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.2)
    bootstrap = {"endpoint_url": endpoint, "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap",
                 "region_name": REGION}
    iam = boto3.client("iam", **bootstrap)
    iam.create_user(UserName="drn-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="drn-tests", PolicyName="everything", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="drn-tests")["AccessKey"]
    _post(f"{endpoint}/moto-api/reset-auth", b"0")  # from now on every request must be signed by a known key
    return S3Server(process, endpoint, key["AccessKeyId"], key["SecretAccessKey"])
