"""Real ClipGuard worker processes for end-to-end tests (the `clipguard worker` command).

The process handling is devtools/cluster.py (the benchmark uses it too); tests add a blocking start and a
context manager that always stops what it started.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.cluster import WorkerProcess, wait_ready
from devtools.cluster import worker_env as bench_worker_env
from tests import kafka_io


class Worker(WorkerProcess):
    def start(self, timeout_s: float = 180) -> None:  # type: ignore[override]
        super().start()
        wait_ready([self], timeout_s)


def worker_env(
    bootstrap: str, prefix: str, workdir: Path, name: str, **extra: str
) -> dict[str, str]:
    """The benchmark's worker environment, with `extra` settings (field=value) on top."""
    env = bench_worker_env(bootstrap, prefix, workdir, name, kafka_io.WORKER_SETTINGS)
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
