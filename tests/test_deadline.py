"""Every accepted clip gets a final answer within the deadline, also across a worker's kill -9.

The clip here references a server that accepts the connection and never answers, so its fetch
hangs far past the deadline (the read timeout is set to 10 minutes): only the deadline can
answer it. The answer must also come after the worker is killed and started again: the pending
clip is known from the recovered table, not from the dead worker's memory.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid

import pytest

from api.auth import add_key
from streams.errors import ErrorCode
from tests.test_e2e import call
from tests.workers import Worker, running, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def silent_server():
    """Accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def poll_final(url, key, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = call(url, key)
        if status == 200 and body["status"]["classify"] != "pending":
            return body
        time.sleep(0.5)
    raise AssertionError(f"no final result at {url} within {timeout_s} s")


def test_a_clip_nothing_can_finish_is_answered_at_its_deadline_even_after_a_kill(
    kafka_bootstrap, tmp_path, silent_server
):
    key = add_key(tmp_path / "keys.json", "acme")
    env = worker_env(
        kafka_bootstrap,
        f"deadline-{uuid.uuid4().hex[:10]}",
        tmp_path,
        "w1",
        clip_deadline_s="6",
        http_allow_hosts="127.0.0.1",
        http_read_timeout_s="600",
        store="rocksdb://",
    )
    body = json.dumps({"video_url": f"http://127.0.0.1:{silent_server}/hangs.mp4"}).encode()
    headers = {"Content-Type": "application/json"}

    # 1. The deadline answers a clip whose processing hangs: sync=true gets that answer.
    with running(Worker(env, tmp_path / "w1.log")) as (worker,):
        status, result = call(f"{worker.url}/api/classify?sync=true", key, body, headers)
        assert status == 200, result
        assert result["error_code"] == ErrorCode.DEADLINE_EXCEEDED
        assert result["risk"] == "danger" and result["status"]["classify"] == "error"

        # 2. Another one, then the worker dies at once (kill -9) while it hangs.
        status, accepted = call(f"{worker.url}/api/classify", key, body, headers)
        assert status == 202
        worker.remember_children()
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()

    # 3. A new worker recovers the table, and the clip still gets its answer.
    with running(Worker(env, tmp_path / "w1-again.log")) as (again,):
        late = poll_final(f"{again.url}{accepted['poll']}", key)
        assert late["error_code"] == ErrorCode.DEADLINE_EXCEEDED and late["risk"] == "danger"
