"""Real Ray nodes as separate processes on this machine: a head and worker nodes, each its own `ray start
--block` (raylet, object store, agents) in its own process group, with its own ports and resources, so a
test can kill a whole node. The suite's own Ray instance keeps the default ports; these never touch it."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
# every listening port its own: the suite's Ray instance holds the defaults (the dashboard agent's 52365 among them)
PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port", "object-manager-port", "node-manager-port")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalNodes:
    """`head()` then `add(...)` worker nodes; `kill(node)` SIGKILLs a node's whole process group;
    `stop()` kills them all."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {k: v for k, v in (env or os.environ).items() if k != "RAY_ADDRESS"}
        # token authentication on, with this cluster's own token: every node, driver and CLI call gets it
        self.env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        self.env.update({"RAY_AUTH_MODE": "token","PATH": f"{BIN}:{self.env.get('PATH', '')}", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
                         "WANDB_MODE": "offline", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
        self.temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.nodes: list[subprocess.Popen] = []
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str]) -> subprocess.Popen:
        ports = [f"--{flag}={free_port()}" for flag in PORT_FLAGS]
        node = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *ports, *args], env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes.append(node)
        return node

    def head(self, cpus: int = 1, labels: str = "", dashboard: bool = True) -> subprocess.Popen:
        args = ["--head", f"--port={self.gcs_port}", f"--num-cpus={cpus}", f"--temp-dir={self.temp_dir}",
                f"--ray-client-server-port={free_port()}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--include-dashboard={str(dashboard).lower()}"]
        node = self._start(args + ([f"--labels={labels}"] if labels else []))
        self.wait_for(1)
        return node

    def add(self, cpus: int, labels: str = "", resources: str = "") -> subprocess.Popen:
        # its own temp dir, as a separate machine has: nodes sharing one would share (and clean up) each
        # other's unpacked job packages, deleting a running job's working directory
        args = [f"--address={self.gcs_address}", f"--num-cpus={cpus}",
                f"--temp-dir={tempfile.mkdtemp(prefix='n', dir=self.temp_dir)}"]
        args += [f"--labels={labels}"] if labels else []
        args += [f"--resources={resources}"] if resources else []
        node = self._start(args)
        self.wait_for(len(self.alive()) + 1)
        return node

    def alive(self) -> list[dict]:
        """The cluster's alive nodes, as `ray list nodes` reports them (from the GCS)."""
        import json

        out = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", self.dashboard_address, "--format",
                              "json", "--filter", "state=ALIVE"], env=self.env, capture_output=True, text=True)
        text = out.stdout.strip()
        return json.loads(text) if out.returncode == 0 and text.startswith("[") else []  # or "No resource in the cluster"

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while len(self.alive()) < count:
            assert all(n.poll() is None for n in self.nodes), "a Ray node exited while starting"
            assert time.time() < deadline, f"fewer than {count} Ray nodes came up in {timeout:.0f} s"
            time.sleep(1)

    def kill(self, node: subprocess.Popen) -> None:
        """The whole node at once: its raylet, object store, agents and every worker process on it."""
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()
        if node in self.nodes:
            self.nodes.remove(node)  # gone on purpose: not "a node that exited while starting"

    def stop(self) -> None:
        for node in reversed(list(self.nodes)):
            self.kill(node)
        subprocess.run(["pkill", "-9", "-f", self.temp_dir], check=False)  # anything left of that session
        shutil.rmtree(self.temp_dir, ignore_errors=True)
