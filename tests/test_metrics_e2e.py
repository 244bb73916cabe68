"""GET /metrics of a real `clipguard worker` on the real broker, after clips went through it.

Good clips and a corrupt one over HTTP (sync=true); then the worker's metrics port, without a
key, must count them all, and show no clip id or camera id.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.auth import add_key
from tests.test_e2e import CLIPS, call, multipart
from tests.workers import Worker, running, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CAMERA = "cam-134188-VI08"
SITE = "metrics-site-north"


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics")
    (workdir / "junk.mp4").write_bytes(b"\x00junk" * 1000)
    key = add_key(workdir / "keys.json", "acme")
    prefix = f"metrics-{uuid.uuid4().hex[:10]}"
    env = worker_env(kafka_bootstrap, prefix, workdir, "w1")
    worker = Worker(env, workdir / "w1.log")
    with running(worker):
        yield {
            "worker": worker,
            "key": key,
            "prefix": prefix,
            "workdir": workdir,
            "metrics_url": f"http://127.0.0.1:{env['CLIPGUARD_METRICS_PORT']}/metrics",
        }


def scrape(url: str) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def total(samples: dict[Any, float], sample: str, /, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == sample and wanted <= lab)


def wait_for(what: str, check: Callable[[], bool], worker: Worker, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout_s} s:\n{worker.log_tail()}")


def test_metrics_count_every_clip_and_show_no_clip(deployment):
    worker, key, url = deployment["worker"], deployment["key"], deployment["metrics_url"]
    clips = [CLIPS / "people_h264.mp4", CLIPS / "tree_h264.mp4", deployment["workdir"] / "junk.mp4"]
    results = []
    for path in clips:
        body, headers = multipart(path, camera_id=CAMERA, metadata=json.dumps({"site": SITE}))
        status, result = call(f"{worker.url}/api/classify?sync=true", key, body, headers)
        assert status == 200, result
        results.append(result)
    assert [r["error_code"] for r in results] == [0, 0, 201]
    n = len(results)

    # The classify agent counts a result once Kafka has it; the HTTP answer may come first.
    def counted() -> bool:
        _, s = scrape(url)
        done = total(s, "clipguard_clips_finished_total") + total(s, "clipguard_clips_failed_total")
        return done >= n

    wait_for("every result counted", counted, worker)
    text, samples = scrape(url)  # no key: the metrics port needs none

    assert total(samples, "clipguard_clips_received_total", tenant="acme") == n
    finished = total(samples, "clipguard_clips_finished_total", tenant="acme")
    failed = total(samples, "clipguard_clips_failed_total", tenant="acme")
    assert finished == 2 and finished + failed == n
    assert total(samples, "clipguard_clips_failed_total", tenant="acme", error_code="201") == 1
    for result in results[:2]:
        assert total(samples, "clipguard_clips_finished_total", risk=result["risk"]) >= 1
    assert total(samples, "clipguard_clip_latency_seconds_count") == n
    assert 0 < total(samples, "clipguard_clip_latency_seconds_sum") < n * 60
    assert total(samples, "clipguard_stage_seconds_count", stage="decode") == 2
    assert total(samples, "clipguard_stage_seconds_count", stage="classify") == 2
    assert total(samples, "clipguard_dead_letters_total", stage="decode", error_code="201") == 1
    pack = {"name": results[0]["model"], "version": results[0]["version"]}
    assert total(samples, "clipguard_model_pack_info", **pack) == 1
    assert total(samples, "clipguard_sync_requests_in_flight") == 0
    assert total(samples, "clipguard_sync_timeouts_total") == 0
    assert total(samples, "clipguard_kafka_reachable") == 1
    assert total(samples, "clipguard_decode_slots") >= 1
    assert total(samples, "clipguard_decode_child_restarts_total") == 0

    for result in results:
        assert result["id"] not in text
    for secret in (CAMERA, SITE, "upload://"):
        assert secret not in text

    # The API's own port has no /metrics, with or without a key (tests/security/).
    for with_key in (None, key):
        status, body = call(f"{worker.url}/metrics", with_key)
        assert status == 404 and body["error"] == "not_found"


def test_consumer_lag_assignment_and_recovery_come_from_the_timer(deployment):
    worker, url = deployment["worker"], deployment["metrics_url"]
    requests = f"{deployment['prefix']}.requests"

    def read() -> dict[Any, float]:
        return scrape(url)[1]

    def caught_up() -> bool:
        s = read()
        partitions = {
            dict(lab)["partition"]
            for (name, lab), _ in s.items()
            if name == "clipguard_consumer_lag_records" and dict(lab)["topic"] == requests
        }
        return partitions == {"0", "1", "2", "3"} and (
            total(s, "clipguard_consumer_lag_records") == 0
        )

    wait_for("lag series for the 4 request partitions, all caught up", caught_up, worker)
    samples = read()
    assert total(samples, "clipguard_consumer_lag_seconds") == 0
    assert total(samples, "clipguard_assigned_partitions") >= 4 * 4
    assert total(samples, "clipguard_table_recovered") == 1
    assert total(samples, "clipguard_table_recovery_remaining_records") == 0
    assert total(samples, "clipguard_rebalances_total") >= 1
    topics = {
        dict(lab)["topic"] for (name, lab) in samples if name.startswith("clipguard_consumer")
    }
    assert not any(t.endswith("-changelog") for t in topics)


def test_the_metrics_port_answers_any_path_with_metrics_only(deployment):
    base = deployment["metrics_url"].removesuffix("/metrics")
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:
        assert b"clipguard_clips_received_total" in response.read()
    request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=10)
