"""The worker's Prometheus metrics (streams/metrics.py) without Kafka: what each recording does
to the samples, what the exposition never shows, and that the dashboard and the alert rules
name only metrics that exist. The last section checks the wiring into the pipeline, the decode
pool and the views (tests/test_metrics_e2e.py: the same on a real worker)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from streams.codec import REQUEST, RESULT, default_codec
from streams.errors import ClipError, ConfigError, ErrorCode
from streams.metrics import (
    LATENCY_BUCKETS,
    STAGES,
    ConsumerLag,
    Metrics,
    MetricsSensor,
    consumed_topics,
    record_output,
    refresh_consumer,
    serve,
)
from streams.pipeline import Origin, Out, dead_letter, error_outputs
from streams.results import DONE, base_result, error_result, finish_timing, iso_timestamp
from streams.settings import Settings
from streams.topics import Topic
from tests.kafka_io import clip_request

DOCS = Path(__file__).resolve().parent.parent / "docs"
codec = default_codec()
CLIP_ID = "65f1a2b3c4d5e6f7a8b9c0d1"
CAMERA = "134188-VI08"


def value(metrics: Metrics, sample: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(sample, labels)


def done_result(tenant: str = "acme", risk: str = "intrusion", age_s: float = 2.0):
    request = clip_request(
        "upload://x.mp4",
        tenant=tenant,
        id=CLIP_ID,
        camera_id=CAMERA,
        metadata={"site": "north-gate"},
        created_at=iso_timestamp(_moment(time.time() - age_s)),
    )
    result = base_result(request, started_at=iso_timestamp())
    result["status"] = {"classify": DONE, "video": DONE}
    result["risk"] = risk
    finish_timing(result, {"fetch": 12.0, "decode": 340.0, "encode": 25.0, "classify": 900.0})
    return result


def failed_result(code: ErrorCode = ErrorCode.INVALID_VIDEO, tenant: str = "acme"):
    request = clip_request("upload://x.mp4", tenant=tenant, id=CLIP_ID, camera_id=CAMERA)
    return error_result(request, code, f"clip {CLIP_ID}: bad", started_at="", timing={"fetch": 3})


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).astimezone()


# --- recording ---------------------------------------------------------------------------


def test_a_classified_clip_counts_as_finished_with_its_latency_and_stage_times():
    metrics = Metrics()
    result = done_result(age_s=2.0)
    metrics.result_produced(result, time.time())
    assert value(metrics, "clipguard_clips_finished_total", tenant="acme", risk="intrusion") == 1
    assert value(metrics, "clipguard_clip_latency_seconds_count") == 1
    assert 1.9 < value(metrics, "clipguard_clip_latency_seconds_sum") < 3.0
    assert value(metrics, "clipguard_clip_latency_seconds_bucket", le="1.0") == 0
    assert value(metrics, "clipguard_clip_latency_seconds_bucket", le="3.0") == 1
    assert value(metrics, "clipguard_stage_seconds_sum", stage="decode") == pytest.approx(0.34)
    assert value(metrics, "clipguard_stage_seconds_sum", stage="classify") == pytest.approx(0.9)
    assert value(metrics, "clipguard_stage_seconds_count", stage="encode") == 1
    assert value(metrics, "clipguard_clips_failed_total", tenant="acme", error_code="0") is None


def test_an_error_result_counts_as_failed_by_code_and_its_latency_too():
    metrics = Metrics()
    metrics.result_produced(failed_result(ErrorCode.INVALID_VIDEO), time.time())
    metrics.result_produced(failed_result(ErrorCode.DEADLINE_EXCEEDED), time.time())
    assert value(metrics, "clipguard_clips_failed_total", tenant="acme", error_code="201") == 1
    assert value(metrics, "clipguard_clips_failed_total", tenant="acme", error_code="502") == 1
    assert value(metrics, "clipguard_clip_latency_seconds_count") == 2
    assert value(metrics, "clipguard_stage_seconds_count", stage="fetch") == 2
    assert value(metrics, "clipguard_stage_seconds_count", stage="decode") == 0  # never reached


def test_a_pending_record_is_no_result():
    metrics = Metrics()
    metrics.result_produced(base_result(clip_request("upload://x"), started_at=""), time.time())
    assert value(metrics, "clipguard_clip_latency_seconds_count") == 0


def test_a_clock_ahead_of_ours_or_an_unreadable_created_at_do_not_break_the_latency():
    metrics = Metrics()
    metrics.result_produced(done_result(age_s=-30), time.time())  # a VMS clock 30 s ahead
    garbled = done_result()
    garbled["created_at"] = "yesterday"
    metrics.result_produced(garbled, time.time())
    assert value(metrics, "clipguard_clip_latency_seconds_count") == 1
    assert value(metrics, "clipguard_clip_latency_seconds_sum") == 0
    assert value(metrics, "clipguard_clips_finished_total", tenant="acme", risk="intrusion") == 2


def test_only_the_known_stages_of_a_timing_become_series():
    metrics = Metrics()
    result = done_result()
    result["timing"]["rogue-stage"] = 5.0  # "total" is there too
    metrics.result_produced(result, time.time())
    stages = {
        s.labels["stage"]
        for family in metrics.registry.collect()
        if family.name == "clipguard_stage_seconds"
        for s in family.samples
    }
    assert stages == set(STAGES)


def test_received_dead_letters_sync_and_the_model_pack():
    metrics = Metrics()
    metrics.clip_received("acme")
    metrics.clip_received("acme")
    metrics.clip_received("globex")
    metrics.dead_letter("decode", ErrorCode.INVALID_VIDEO)
    metrics.sync_started()
    metrics.sync_started()
    metrics.sync_finished()
    metrics.sync_timed_out()
    metrics.model_pack_loaded("clipguard-pack", "2024.1")
    metrics.rebalanced()
    metrics.decode_child_restarted("hung")
    assert value(metrics, "clipguard_clips_received_total", tenant="acme") == 2
    assert value(metrics, "clipguard_clips_received_total", tenant="globex") == 1
    assert value(metrics, "clipguard_dead_letters_total", stage="decode", error_code="201") == 1
    assert value(metrics, "clipguard_sync_requests_in_flight") == 1
    assert value(metrics, "clipguard_sync_timeouts_total") == 1
    pack = {"name": "clipguard-pack", "version": "2024.1"}
    assert value(metrics, "clipguard_model_pack_info", **pack) == 1
    assert value(metrics, "clipguard_rebalances_total") == 1
    assert value(metrics, "clipguard_decode_child_restarts_total", reason="hung") == 1
    assert value(metrics, "clipguard_decode_child_restarts_total", reason="crashed") == 0


def test_gauges_read_at_scrape_time():
    metrics = Metrics()
    busy, reachable = [0], [False]
    metrics.watch_decode_pool(lambda: busy[0], 2)
    metrics.watch_kafka(lambda: reachable[0])
    assert value(metrics, "clipguard_decode_slots") == 2
    assert value(metrics, "clipguard_decode_slots_busy") == 0
    assert value(metrics, "clipguard_kafka_reachable") == 0
    busy[0], reachable[0] = 2, True
    assert value(metrics, "clipguard_decode_slots_busy") == 2
    assert value(metrics, "clipguard_kafka_reachable") == 1


def test_two_metrics_objects_in_one_process_do_not_share_anything():
    one, two = Metrics(), Metrics()
    one.clip_received("acme")
    assert value(one, "clipguard_clips_received_total", tenant="acme") == 1
    assert value(two, "clipguard_clips_received_total", tenant="acme") is None


def test_outputs_kafka_accepted_are_counted_from_their_bytes_and_headers():
    metrics = Metrics()
    request = clip_request("upload://x.mp4", id=CLIP_ID)
    result = failed_result()
    origin = Origin("clipguard.requests", 1, 7, CLIP_ID.encode())
    for out in error_outputs(codec, request, result, b"raw", origin, "decode"):
        record_output(metrics, codec, out, time.time())
    record_output(metrics, codec, Out(Topic.DECODED, b"k", b"frames"), time.time())
    record_output(metrics, codec, Out(Topic.RESULTS, b"k", b"not avro"), time.time())
    letter = dead_letter(
        codec,
        origin,
        b"raw",
        stage="intake",
        code=ErrorCode.MALFORMED_MESSAGE,
        message="x",
        clip_id=None,
    )
    record_output(metrics, codec, letter, time.time())
    assert value(metrics, "clipguard_clips_failed_total", tenant="acme", error_code="201") == 1
    assert value(metrics, "clipguard_dead_letters_total", stage="decode", error_code="201") == 1
    assert value(metrics, "clipguard_dead_letters_total", stage="intake", error_code="401") == 1
    assert value(metrics, "clipguard_clip_latency_seconds_count") == 1


def test_no_clip_id_camera_id_or_metadata_ever_reaches_the_exposition():
    metrics = Metrics()
    done = done_result()
    metrics.result_produced(done, time.time())
    metrics.result_produced(failed_result(), time.time())
    record_output(
        metrics, codec, Out(Topic.RESULTS, CLIP_ID.encode(), codec.serialize(RESULT, done)), 0
    )
    origin = Origin("clipguard.requests", 1, 7, CLIP_ID.encode())
    letter = dead_letter(
        codec,
        origin,
        b"raw",
        stage="decode",
        code=ErrorCode.INVALID_VIDEO,
        message=f"clip {CLIP_ID} from {CAMERA}",
        clip_id=CLIP_ID,
    )
    record_output(metrics, codec, letter, time.time())
    text = generate_latest(metrics.registry).decode()
    assert "acme" in text
    for secret in (CLIP_ID, CAMERA, "north-gate", "upload://", "x.mp4"):
        assert secret not in text


# --- consumer lag ------------------------------------------------------------------------


def test_lag_counts_from_the_oldest_message_in_progress():
    lag = ConsumerLag()
    lag.message_in("t", 0, 10, 100.0)
    lag.message_in("t", 0, 11, 101.0)
    assert lag.behind("t", 0, end=15, position=None, now=130.0) == (5, 30.0)
    lag.message_out("t", 0, 11, 101.0)  # concurrent agents ack out of order
    assert lag.behind("t", 0, end=15, position=None, now=130.0) == (5, 30.0)
    lag.message_out("t", 0, 10, 100.0)
    records, seconds = lag.behind("t", 0, end=15, position=None, now=130.0)
    assert records == 3 and seconds == pytest.approx(29.0)  # next: 12, produced after 101.0
    lag.message_in("t", 0, 12, 120.0)
    assert lag.behind("t", 0, end=15, position=None, now=130.0) == (3, 10.0)


def test_a_caught_up_partition_is_zero_and_bounds_the_age_of_what_comes_next():
    lag = ConsumerLag()
    lag.message_in("t", 1, 4, 50.0)
    lag.message_out("t", 1, 4, 50.0)
    assert lag.behind("t", 1, end=5, position=None, now=200.0) == (0, 0.0)
    # A new message nobody has taken yet: younger than the moment we were caught up.
    assert lag.behind("t", 1, end=6, position=None, now=203.0) == (1, 3.0)


def test_an_unseen_partition_counts_from_the_consumers_position():
    lag = ConsumerLag()
    assert not lag.known("t", 2)
    assert lag.behind("t", 2, end=40, position=30, now=10.0) == (10, 0.0)
    assert lag.behind("t", 2, end=40, position=30, now=25.0) == (10, 15.0)
    assert lag.behind("t", 2, end=40, position=None, now=25.0)[0] == 0


def test_a_rebalance_forgets_what_was_in_progress():
    lag = ConsumerLag()
    lag.message_in("t", 0, 10, 100.0)  # dropped by the rebalance, never acked
    lag.reset()
    assert not lag.known("t", 0)
    assert lag.behind("t", 0, end=12, position=11, now=130.0) == (1, 0.0)


def test_partitions_that_are_no_longer_assigned_lose_their_series():
    metrics = Metrics()
    metrics.consumer_state(9, {("t", 0): (3, 1.5), ("t", 1): (0, 0.0)}, False, 42)
    assert value(metrics, "clipguard_consumer_lag_records", topic="t", partition="0") == 3
    assert value(metrics, "clipguard_consumer_lag_seconds", topic="t", partition="0") == 1.5
    assert value(metrics, "clipguard_table_recovery_remaining_records") == 42
    metrics.consumer_state(4, {("t", 1): (2, 0.5)}, True, 0)
    assert value(metrics, "clipguard_consumer_lag_records", topic="t", partition="0") is None
    assert value(metrics, "clipguard_consumer_lag_records", topic="t", partition="1") == 2
    assert value(metrics, "clipguard_assigned_partitions") == 4
    assert value(metrics, "clipguard_table_recovered") == 1


class FakeConsumer:
    def __init__(self, assigned, ends, positions, fail=False):
        self.assigned, self.ends, self.positions, self.fail = assigned, ends, positions, fail
        self.position_calls = []

    def assignment(self):
        return set(self.assigned)

    async def highwaters(self, *tps):
        if self.fail:
            raise RuntimeError("rebalancing")
        return {tp: self.ends[tp] for tp in tps}

    async def position(self, tp):
        self.position_calls.append(tp)
        return self.positions[tp]


class TP(tuple):  # hashable and sortable like Faust's TP namedtuple
    topic = property(lambda self: self[0])
    partition = property(lambda self: self[1])


async def test_the_timer_reads_end_offsets_lag_assignment_and_recovery():
    settings = Settings(kafka_tenants=("acme",))
    topics = consumed_topics(settings)
    assert topics == [
        "clipguard.requests",
        "clipguard.decoded",
        "clipguard.results",
        "clipguard.progress",
        "clipguard.intake.acme",
    ]
    requests0, requests1 = TP(("clipguard.requests", 0)), TP(("clipguard.requests", 1))
    changelog = TP(("clipguard-results-changelog", 0))
    consumer = FakeConsumer(
        [requests0, requests1, changelog], {requests0: 8, requests1: 3}, {requests1: 3}
    )
    recovery = SimpleNamespace(completed=asyncio.Event(), active_remaining_total=lambda: 17)
    app = SimpleNamespace(consumer=consumer, tables=SimpleNamespace(recovery=recovery))
    metrics = Metrics()
    metrics.lag.message_in("clipguard.requests", 0, 5, time.time() - 4)
    await refresh_consumer(metrics, app, topics)
    assert consumer.position_calls == [requests1]  # partition 0's progress is known
    assert (
        value(metrics, "clipguard_consumer_lag_records", topic="clipguard.requests", partition="0")
        == 3
    )
    seconds = value(
        metrics, "clipguard_consumer_lag_seconds", topic="clipguard.requests", partition="0"
    )
    assert 3.5 < seconds < 10
    assert (
        value(metrics, "clipguard_consumer_lag_records", topic="clipguard.requests", partition="1")
        == 0
    )
    assert (
        value(metrics, "clipguard_consumer_lag_records", topic=changelog.topic, partition="0")
        is None
    )
    assert value(metrics, "clipguard_assigned_partitions") == 3
    assert value(metrics, "clipguard_table_recovered") == 0
    assert value(metrics, "clipguard_table_recovery_remaining_records") == 17
    recovery.completed.set()
    consumer.fail = True  # a reading that fails changes nothing
    await refresh_consumer(metrics, app, topics)
    assert value(metrics, "clipguard_table_recovered") == 0
    consumer.fail = False
    await refresh_consumer(metrics, app, topics)
    assert value(metrics, "clipguard_table_recovered") == 1


async def test_a_consumer_not_started_yet_is_skipped():
    class NotStarted:
        def assignment(self):
            raise RuntimeError("Consumer thread not yet started")

    metrics = Metrics()
    await refresh_consumer(metrics, SimpleNamespace(consumer=NotStarted()), ["t"])
    assert value(metrics, "clipguard_assigned_partitions") == 0


def test_the_faust_sensor_feeds_the_lag_of_consumed_topics_only_and_counts_rebalances():
    metrics = Metrics()
    sensor = MetricsSensor(metrics, ["clipguard.requests"])
    message = SimpleNamespace(timestamp=time.time() - 5)
    sensor.on_message_in(TP(("clipguard.requests", 0)), 3, message)
    sensor.on_message_in(TP(("clipguard-results-changelog", 0)), 9, message)
    assert metrics.lag.known("clipguard.requests", 0)
    assert not metrics.lag.known("clipguard-results-changelog", 0)
    sensor.on_message_out(TP(("clipguard.requests", 0)), 3, message)
    assert metrics.lag.behind("clipguard.requests", 0, 4, None, time.time()) == (0, 0.0)
    state = sensor.on_rebalance_start(SimpleNamespace())
    assert "time_start" in state
    assert value(metrics, "clipguard_rebalances_total") == 1
    assert not metrics.lag.known("clipguard.requests", 0)


# --- serving -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_metrics_port_serves_the_text_format_without_a_key():
    metrics = Metrics()
    metrics.clip_received("acme")
    port = free_port()
    assert serve(metrics.registry, port, "127.0.0.1") is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = response.read().decode()
    assert 'clipguard_clips_received_total{tenant="acme"} 1.0' in body
    with pytest.raises(ConfigError, match="CLIPGUARD_METRICS_PORT"):
        serve(Metrics().registry, port, "127.0.0.1")  # taken
    assert serve(metrics.registry, 0, "127.0.0.1") is None


def test_the_buckets_span_50_ms_to_60_s():
    assert LATENCY_BUCKETS[0] == 0.05 and LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


# --- the dashboard and the alert rules -----------------------------------------------------

METRIC_NAME = re.compile(r"\bclipguard_[a-z_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def exposed_names() -> dict[str, str]:
    """Every sample name a worker's registry can expose -> the family it belongs to."""
    names = {}
    for family in Metrics().registry.collect():
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_every_metric_the_dashboard_and_the_alerts_name_exists(where):
    exprs = dashboard_exprs() if where == "dashboard" else [r["expr"] for r in alert_rules()]
    assert exprs
    names = exposed_names()
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used, "no clipguard_ metric named"
    assert sorted(used - set(names)) == []


def test_the_dashboard_shows_every_metric():
    names = exposed_names()
    shown = {names[n] for e in dashboard_exprs() for n in METRIC_NAME.findall(e) if n in names}
    assert sorted(set(names.values()) - shown) == []


def test_the_dashboard_is_a_grafana_model():
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel)
        for target in panel.get("targets", []):
            assert target["refId"] and target["datasource"]["type"] == "prometheus"


def test_the_alerts_the_issue_asks_for_are_there():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    lag = rules["ClipGuardConsumerLagHigh"]
    assert "clipguard_consumer_lag_seconds" in lag["expr"] and lag["for"] == "5m"
    failed = rules["ClipGuardFailedShareHigh"]
    assert "> 0.05" in failed["expr"] and failed["for"] == "10m"
    quiet = rules["ClipGuardNoResults"]["expr"]
    assert "[5m]" in quiet
    assert {"clipguard_clips_received_total", "clipguard_clips_finished_total"} <= set(
        METRIC_NAME.findall(quiet)
    )


# --- the wiring (streams/app.py, streams/pipeline.py, streams/stages/pool.py, api/views.py) --


async def test_the_decode_step_tells_of_every_valid_request(tmp_path):
    from streams.pipeline import DecodeStep
    from streams.stages.uploads import UploadStore

    settings = Settings(media_roots=(tmp_path / "media",), upload_dir=tmp_path / "uploads")
    seen: list[str] = []
    step = DecodeStep(
        settings,
        codec,
        None,
        UploadStore(settings.upload_dir),
        on_request=lambda request: seen.append(request["tenant"]),
    )
    request = clip_request((tmp_path / "media" / "missing.mp4").as_uri())
    origin = Origin("clipguard.requests", 0, 1, request["id"].encode())
    outs = await step(codec.serialize(REQUEST, request), origin)
    assert [o.topic for o in outs] == [Topic.RESULTS, Topic.DEADLETTER]
    await step(b"not avro", origin)
    assert seen == ["acme"]


async def test_runtime_send_counts_what_kafka_took():
    from tests.test_delivery import runtime

    rt = runtime()
    request = clip_request("upload://x.mp4", id=CLIP_ID)
    origin = Origin("clipguard.requests", 1, 7, CLIP_ID.encode())
    await rt.send(error_outputs(codec, request, failed_result(), b"raw", origin, "decode"))
    metrics = rt.metrics
    assert value(metrics, "clipguard_clips_failed_total", tenant="acme", error_code="201") == 1
    assert value(metrics, "clipguard_dead_letters_total", stage="decode", error_code="201") == 1


async def test_the_decode_pool_says_why_it_replaced_a_child():
    from streams.stages.pool import DecodePool
    from tests.test_pool import GOOD, decode_or_misbehave

    quick = Settings(decode_timeout_s=2.0)
    reasons: list[str] = []
    pool = DecodePool(quick, decode_fn=decode_or_misbehave, on_restart=reasons.append)
    try:
        assert pool.busy == 0 and pool.size == 1
        for how in ("segfault", "bug", "hang"):
            with pytest.raises(ClipError):
                await pool.decode(Path(how), quick)
        task = asyncio.ensure_future(pool.decode(GOOD, quick))
        await asyncio.sleep(0.05)
        assert pool.busy == 1
        await task
        assert pool.busy == 0
    finally:
        pool.close()
    assert reasons == ["crashed", "failed", "hung"]


async def test_the_views_count_sync_requests_in_flight_and_timed_out(aiohttp_client, tmp_path):
    from aiohttp import web

    from api.auth import add_key
    from api.views import install
    from tests.test_api import InMemoryService, upload

    settings = Settings(
        api_keys_file=tmp_path / "keys.json",
        internal_secret_file=tmp_path / "internal-secret",
        upload_dir=tmp_path / "uploads",
        media_roots=(tmp_path / "media",),
        sync_timeout_s=0.3,
    )
    key = add_key(settings.api_keys_file, "acme")
    metrics = Metrics()
    seen_in_flight = []

    class Service(InMemoryService):
        async def wait_local(self, clip_id, timeout):
            seen_in_flight.append(value(metrics, "clipguard_sync_requests_in_flight"))
            return await super().wait_local(clip_id, timeout)

    service = Service(settings)
    app = web.Application(client_max_size=10_000_000)
    install(app, service, settings, metrics=metrics)
    client = await aiohttp_client(app)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.post("/api/classify?sync=true", data=upload(), headers=headers)).ok
    service.finish_on_submit = False
    response = await client.post("/api/classify?sync=true", data=upload(), headers=headers)
    assert response.status == 504
    assert (await client.get("/metrics")).status == 404  # never on the API's port
    assert seen_in_flight and set(seen_in_flight) == {1.0}
    assert value(metrics, "clipguard_sync_requests_in_flight") == 0
    assert value(metrics, "clipguard_sync_timeouts_total") == 1


def test_a_worker_has_its_metrics_and_sensor(tmp_path):
    from api.auth import add_key
    from streams.app import runtime_of
    from streams.wiring import create_worker

    settings = Settings(
        kafka_security_protocol="PLAINTEXT",
        data_dir=tmp_path / "data",
        api_keys_file=tmp_path / "keys.json",
        internal_secret_file=tmp_path / "internal-secret",
        upload_dir=tmp_path / "uploads",
        media_roots=(tmp_path / "media",),
    )
    add_key(settings.api_keys_file, "acme")
    app = create_worker(settings)
    runtime = runtime_of(app)
    assert any(isinstance(s, MetricsSensor) for s in app.sensors)
    assert value(runtime.metrics, "clipguard_kafka_reachable") == 0  # no check has passed yet
    assert Settings().metrics_port == 6068
