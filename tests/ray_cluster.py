"""A multi-node local Ray cluster for tests, run in a process of its own.

``ray.cluster_utils.Cluster`` starts a head and worker nodes (each its own raylet with its own resources) on this
machine. It lives in a separate harness process (``python tests/ray_cluster.py``), never in the pytest process:
that one keeps its own local Ray (the ``ray_session`` fixture), and a process cannot start or join a second
cluster while connected to one. Jobs reach the cluster as they would a real one: as subprocesses with
``RAY_ADDRESS``, or through ``ray job submit`` to its dashboard. The test drives the harness over a pipe (add a
node, remove a node, which node hosts an actor) with :class:`LocalCluster`.

Every node inherits the harness's environment, so the AWS variables of the test S3 server reach every worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """The test's handle on a harness process and its cluster."""

    def __init__(self, env: dict[str, str], head_cpus: float = 0, log_dir: str | Path | None = None) -> None:
        # Short (Ray's socket paths must stay short) and private: Ray's default folder /tmp/ray is shared by every
        # Ray on the machine, and its "current cluster" file there is how a job's driver finds its cluster.
        # With RAY_TMPDIR=<base> that file is <base>/ray/ray_current_cluster, inside the nodes' own temp_dir.
        self.base_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
        self.temp_dir = os.path.join(self.base_dir, "ray")
        full_env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO),
                    "RAY_DEDUP_LOGS": "0", "RAY_TMPDIR": self.base_dir}
        log = open(Path(log_dir or self.base_dir) / "harness.log", "ab")  # noqa: SIM115 (the harness keeps it)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), self.temp_dir, str(head_cpus)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=full_env, text=True, cwd=str(REPO))
        started = self._read(timeout=180)
        self.address, self.dashboard = started["address"], started["dashboard"]
        self.env = {**full_env, "RAY_ADDRESS": self.address}  # what a job needs to join this cluster

    def _read(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"cluster harness: {reply['error']}")
                return reply
            if self.process.poll() is not None:
                break
        raise RuntimeError(f"cluster harness gave no answer (exit {self.process.poll()}); see {self.temp_dir}")

    def call(self, timeout: float = 120, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read(timeout)

    def add_node(self, name: str, num_cpus: float) -> str:
        """A worker node with ``num_cpus`` CPUs; returns its node id."""
        return self.call(op="add", name=name, num_cpus=num_cpus)["node_id"]

    def remove_node(self, name: str) -> None:
        """Kill every process of the node at once (no graceful shutdown), as when a machine dies."""
        self.call(op="remove", name=name)

    def nodes(self) -> dict[str, str]:
        """Node name -> node id of the nodes still up."""
        return self.call(op="nodes")["nodes"]

    def nodes_hosting(self, class_substring: str) -> list[str]:
        """Names of the nodes with an alive actor whose class name contains ``class_substring``."""
        return self.call(op="hosting", cls=class_substring)["names"]

    def shutdown(self) -> None:
        if self.process.poll() is None:
            try:
                self.call(op="shutdown", timeout=120)
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        shutil.rmtree(self.base_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- the harness process
def _serve(temp_dir: str, head_cpus: float) -> None:
    from ray.cluster_utils import Cluster

    def reply(**fields) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    dashboard_port = _free_port()
    from ray._common.utils import get_default_ray_temp_dir

    assert get_default_ray_temp_dir() == temp_dir, "RAY_TMPDIR must make the nodes' temp_dir Ray's default folder"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "temp_dir": temp_dir, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port, "dashboard_agent_listen_port": _free_port(),
        "object_store_memory": 200 * 1024 * 1024})
    nodes = {"head": cluster.head_node}
    url = f"http://127.0.0.1:{dashboard_port}"
    reply(address=cluster.address, dashboard=url)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                op = command["op"]
                if op == "add":
                    node = cluster.add_node(num_cpus=command["num_cpus"], temp_dir=temp_dir,
                                            object_store_memory=200 * 1024 * 1024)
                    nodes[command["name"]] = node
                    reply(node_id=node.node_id)
                elif op == "remove":
                    cluster.remove_node(nodes.pop(command["name"]), allow_graceful=False)
                    reply(ok=True)
                elif op == "nodes":
                    reply(nodes={name: node.node_id for name, node in nodes.items()})
                elif op == "hosting":
                    from ray.util.state import list_actors

                    alive = list_actors(address=url, filters=[("state", "=", "ALIVE")], limit=1000)
                    ids = {actor.node_id for actor in alive if command["cls"] in (actor.class_name or "")}
                    reply(names=sorted(name for name, node in nodes.items() if node.node_id in ids),
                          classes=sorted({actor.class_name or "" for actor in alive}))
                elif op == "shutdown":
                    break
                else:
                    reply(error=f"unknown op {op!r}")
            except Exception as error:  # the test sees it
                reply(error=f"{type(error).__name__}: {error}")
    finally:
        cluster.shutdown()
        reply(ok=True)


if __name__ == "__main__":
    _serve(sys.argv[1], float(sys.argv[2]))
