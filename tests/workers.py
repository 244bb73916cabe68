"""Real ClipGuard worker processes for end-to-end tests (the `clipguard worker` command)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.cluster import worker_env as bench_worker_env

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["CLIPGUARD_WEB_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def worker_env(
    bootstrap: str, prefix: str, workdir: Path, name: str, **extra: str
) -> dict[str, str]:
    """The benchmark's worker environment, with `extra` settings (field=value) on top."""
    env = bench_worker_env(bootstrap, prefix, workdir, name)
    env["CLIPGUARD_PARTITIONS"] = "4"
    env.update({f"CLIPGUARD_{k.upper()}": v for k, v in extra.items()})
    return env


@contextmanager
def running(*workers: Worker) -> Iterator[tuple[Worker, ...]]:
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
