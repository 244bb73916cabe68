"""The `clipguard worker` processes that a benchmark run or a test starts, and stops for sure.

Everything listens on 127.0.0.1, on ports free at start, with data in the run's own temporary
directory and topics under a prefix no other run uses. Workers run in their own session, so a
Ctrl-C in the terminal reaches the benchmark or test runner only, which stops them in order.
"""

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
from collections.abc import Mapping
from pathlib import Path

from devtools.procs import children_of
from streams.settings import PROJECT_ROOT


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nothing listens on now (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_env(
    bootstrap: str,
    prefix: str,
    workdir: Path,
    name: str,
    kafka: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The shipped defaults (decode_workers, inference_threads...) plus this run's wiring;
    `kafka`: the CLIPGUARD_KAFKA_* settings of the worker's principal (kafka_acl.worker_settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGUARD_")}
    port, metrics_port = free_ports(2)
    env.update(
        {
            "CLIPGUARD_KAFKA_BOOTSTRAP": bootstrap,
            "CLIPGUARD_APP_ID": prefix,
            "CLIPGUARD_TOPIC_PREFIX": prefix,
            "CLIPGUARD_STORE": "memory://",
            "CLIPGUARD_DATA_DIR": str(workdir / name),
            "CLIPGUARD_WEB_HOST": "127.0.0.1",
            "CLIPGUARD_WEB_PORT": str(port),
            "CLIPGUARD_METRICS_PORT": str(metrics_port),
            "CLIPGUARD_API_KEYS_FILE": str(workdir / "keys.json"),
            "CLIPGUARD_INTERNAL_SECRET_FILE": str(workdir / "internal-secret"),
            "CLIPGUARD_MEDIA_ROOTS": str(workdir / "media"),
            "CLIPGUARD_UPLOAD_DIR": str(workdir / "uploads"),
            "CLIPGUARD_SYNC_TIMEOUT_S": "120",
        }
    )
    env.update(kafka or {"CLIPGUARD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    return env


class WorkerProcess:
    """One `clipguard worker` (pipeline + HTTP API) in its own session."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['CLIPGUARD_WEB_PORT']}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen_children: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"worker exited ({self.exit_code()}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                return bool(response.status == 200 and json.loads(response.read())["ready"])
        except (OSError, ValueError):
            return False

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def remember_children(self) -> None:
        """Note the decode children now, so stop() can reap them even if the worker dies first."""
        if self.proc is not None and self.proc.poll() is None:
            self._seen_children.update(children_of(self.proc.pid))

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is None:
            return
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Decode children normally go with the worker; any left behind are ours to end.
        for pid in self._seen_children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def wait_ready(workers: list[WorkerProcess], timeout_s: float) -> float:
    """Seconds until every worker answers /ready with 200; RuntimeError past the timeout."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if all(w.ready() for w in workers):
            return time.monotonic() - started
        time.sleep(0.5)
    tails = "\n\n".join(f"{w.url}:\n{w.log_tail()}" for w in workers)
    raise RuntimeError(f"workers not ready after {timeout_s:.0f} s:\n{tails}")
