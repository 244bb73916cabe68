"""Two workers in one consumer group, and a restart: results stay reachable from any worker."""

from __future__ import annotations

import uuid

import pytest

from api.auth import add_key
from tests.test_e2e import CLIPS, call, multipart
from tests.workers import Worker, running, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
VOLATILE = ("timing", "duration", "duration_seconds", "started_at")


def test_any_worker_serves_any_result_and_results_survive_a_restart(kafka_bootstrap, tmp_path):
    keys = {t: add_key(tmp_path / "keys.json", t) for t in ("acme", "globex")}
    prefix = f"cluster-{uuid.uuid4().hex[:10]}"
    # rocksdb: what production uses; the restarted worker also recovers from the changelog.
    envs = [
        worker_env(kafka_bootstrap, prefix, tmp_path, name, store="rocksdb://")
        for name in ("w1", "w2")
    ]
    workers = [Worker(env, tmp_path / f"w{i}.log") for i, env in enumerate(envs, 1)]
    clips = [CLIPS / "people_h264.mp4", CLIPS / "tree_h264.mp4"]
    results = {}
    with running(*workers):
        # Enough clips that both workers own some of them (4 partitions, random ids).
        for i in range(6):
            via = workers[i % 2]
            status, result = call(
                f"{via.url}/api/classify?sync=true", keys["acme"], *multipart(clips[i % 2])
            )
            assert status == 200, result
            assert result["error_code"] == 0
            results[result["id"]] = result
        for clip_id, result in results.items():
            for worker in workers:
                status, got = call(f"{worker.url}/api/result/{clip_id}", keys["acme"])
                assert status == 200 and got == result, worker.url
                status, _ = call(f"{worker.url}/api/result/{clip_id}", keys["globex"])
                assert status == 404

    # At-least-once: a clip whose offset was not committed when w1 stopped is classified again
    # by the worker that takes its partition. The answer is the same; the measurements of the
    # second run (timing, duration, started_at) are its own.
    restarted = Worker(envs[0], tmp_path / "w1-again.log")
    with running(restarted):
        for clip_id, result in results.items():
            status, got = call(f"{restarted.url}/api/result/{clip_id}", keys["acme"])
            assert status == 200 and answer(got) == answer(result)


def answer(result):
    return {k: v for k, v in result.items() if k not in VOLATILE}
