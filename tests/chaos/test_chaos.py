"""Chaos: a real broker, two workers, clip requests of every kind, and faults while they flow.

`make test` runs the short version (about 60 requests, a worker's kill -9 and restart, a worker
frozen past its session timeout, a clean broker restart); `make chaos` the long one
(CHAOS=long: a few hundred requests, and a broker kill -9 and a decode child's kill -9 too).
Asserted, whatever the faults did:
- every accepted clip has a final result on the results topic, and every malformed record a
  dead letter: nothing lost;
- duplicates of a result (at-least-once delivery) say the same thing (timings aside);
- every worker alive at the end, and `GET /api/result/<id>` right on every worker for every id,
  moved partitions included.
It prints the longest gap without any result and how long output stopped after the kill.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer

from api.auth import add_key
from devtools import kafka_acl
from devtools.broker import Broker
from devtools.cluster import free_ports
from devtools.procs import children_of
from streams.codec import DEAD_LETTER, RESULT, default_codec
from streams.results import render_result
from tests import kafka_io
from tests.kafka_io import clip_request, produce, produce_requests
from tests.test_e2e import CLIPS, call
from tests.workers import Worker, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]
codec = default_codec()
LONG = os.environ.get("CHAOS") == "long"
GOOD, CORRUPT, MALFORMED = (240, 40, 20) if LONG else (40, 12, 8)
VOLATILE = ("timing", "duration", "duration_seconds", "started_at")  # differ between runs


@dataclass
class Watch:
    """Every result and dead letter as it arrives, with the time it arrived."""

    results: dict[bytes, list[bytes]] = field(default_factory=dict)
    letters: dict[bytes, list[bytes]] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)


async def watch(bootstrap, prefix, seen: Watch, stop: asyncio.Event):
    consumer = AIOKafkaConsumer(
        f"{prefix}.results",
        f"{prefix}.deadletter",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka_io.CLIENT,
    )
    while True:  # the broker may be down when the watcher starts or restarts: keep trying
        try:
            await consumer.start()
            break
        except Exception:
            await asyncio.sleep(1)
    try:
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=500)
            except Exception:  # the broker is being restarted: the consumer reconnects
                await asyncio.sleep(0.5)
                continue
            for tp, messages in batches.items():
                box = seen.results if tp.topic.endswith(".results") else seen.letters
                for message in messages:
                    box.setdefault(message.key, []).append(message.value)
                    if box is seen.results:
                        seen.arrivals.append(time.monotonic())
    finally:
        await consumer.stop()


def stable(value: bytes) -> dict:
    rendered = render_result(codec.parse(value, expect=RESULT))
    return {k: v for k, v in rendered.items() if k not in VOLATILE}


@pytest.fixture
def chaos_broker(tmp_path):
    port, controller_port = free_ports(2)
    broker = Broker(tmp_path / "kafka", port=port, controller_port=controller_port)
    broker.start()
    kafka_acl.add_users(broker, [kafka_acl.WORKER])
    everything = (kafka_acl.AclOperation.ALL,)
    kafka_acl.grant(
        broker,
        [
            kafka_acl.Grant(kafka_acl.WORKER, kafka_acl.ResourceType.TOPIC, "*", everything),
            kafka_acl.Grant(kafka_acl.WORKER, kafka_acl.ResourceType.GROUP, "*", everything),
        ],
    )
    saved = dict(kafka_io.CLIENT)
    kafka_io.CLIENT.clear()
    kafka_io.CLIENT.update(kafka_acl.aiokafka_options(broker))
    yield broker
    kafka_io.CLIENT.clear()
    kafka_io.CLIENT.update(saved)
    broker.stop()


def test_nothing_is_lost_and_every_worker_answers_right_through_faults(chaos_broker, tmp_path):
    asyncio.run(_chaos(chaos_broker, tmp_path))


async def _chaos(broker: Broker, tmp_path):
    bootstrap = broker.bootstrap
    prefix = f"chaos-{uuid.uuid4().hex[:10]}"
    key = add_key(tmp_path / "keys.json", "acme")
    media = tmp_path / "media"
    media.mkdir()
    for name in ("people_h264.mp4", "tree_h264.mp4", "people_mjpeg.avi"):
        shutil.copy(CLIPS / name, media / name)
    (media / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 4000)
    kafka = kafka_acl.worker_settings(broker)
    envs = [
        worker_env(bootstrap, prefix, tmp_path, name, store="rocksdb://", decode_workers="1")
        | kafka
        for name in ("w1", "w2")
    ]
    workers = [
        Worker(env, tmp_path / f"{n}.log") for env, n in zip(envs, ("w1", "w2"), strict=True)
    ]
    seen, stop = Watch(), asyncio.Event()
    watcher = asyncio.create_task(watch(bootstrap, prefix, seen, stop))
    try:
        for worker in workers:
            await asyncio.to_thread(worker.start)
        good = [
            clip_request(
                (media / ("people_h264.mp4", "tree_h264.mp4", "people_mjpeg.avi")[i % 3]).as_uri()
            )
            for i in range(GOOD)
        ]
        corrupt = [clip_request((media / "corrupt.mp4").as_uri()) for _ in range(CORRUPT)]
        malformed = [(f"junk-{i}".encode(), b"not avro at all %d" % i) for i in range(MALFORMED)]
        requests = good + corrupt
        topic = f"{prefix}.requests"
        half = len(requests) // 2
        await produce_requests(bootstrap, topic, requests[:half])
        await produce(bootstrap, topic, malformed)

        # Fault 1: kill -9 of a worker (and its decode children) while clips flow; restart it.
        await _wait_results(seen, 8)
        victim = workers[0]
        victim.remember_children()
        killed_at = time.monotonic()
        for pid in [victim.pid, *children_of(victim.pid)]:
            os.kill(pid, signal.SIGKILL)
        victim.proc.wait()
        await produce_requests(bootstrap, topic, requests[half:])
        workers[0] = Worker(envs[0], tmp_path / "w1-again.log")
        await asyncio.to_thread(workers[0].start)
        failover = _first_after(seen, killed_at) - killed_at

        # Fault 2: the other worker frozen past its session timeout, then thawed.
        frozen = workers[1]
        os.kill(frozen.pid, signal.SIGSTOP)
        await asyncio.sleep(15)
        os.kill(frozen.pid, signal.SIGCONT)

        # Fault 3: the broker stopped cleanly and started again.
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(broker.start)
        if LONG:  # Fault 4: the broker killed (-9) and started again.
            os.kill(int(broker.pid_file.read_text()), signal.SIGKILL)
            await asyncio.sleep(2)
            await asyncio.to_thread(broker.start)

        ids = {r["id"].encode() for r in requests}
        junk = {k for k, _ in malformed}
        deadline = time.monotonic() + (900 if LONG else 400)
        while time.monotonic() < deadline:
            finals = {k for k, vs in seen.results.items() if _final(vs[-1])}
            if ids <= finals and junk <= set(seen.letters):
                break
            await asyncio.sleep(1)
    except BaseException:
        stop.set()
        await watcher
        for worker in workers:
            worker.stop()
        raise

    try:
        lost = ids - {k for k, vs in seen.results.items() if any(_final(v) for v in vs)}
        assert not lost, f"{len(lost)} accepted clips without a final result"
        assert junk <= set(seen.letters), "malformed records without a dead letter"
        for k in junk:
            assert codec.parse(seen.letters[k][0], expect=DEAD_LETTER)["stage"] == "intake"
        duplicates = 0
        for k in ids:
            finals = [stable(v) for v in seen.results[k] if _final(v)]
            duplicates += len(finals) - 1
            done = [f for f in finals if f["status"]["classify"] == "done"]
            assert all(f == done[0] for f in done), f"duplicates of {k!r} disagree"
        for worker in workers:
            assert worker.exit_code() is None, f"{worker.url} died:\n{worker.log_tail()}"
        # The watcher keeps reading: a clip answered at its deadline may still finish, and
        # then its real result replaces the deadline's (the table's store rule).
        await asyncio.to_thread(_every_worker_serves_every_id, workers, key, seen, ids)
    finally:
        stop.set()
        await watcher
        for worker in workers:
            worker.stop()
    gaps = [b - a for a, b in zip(seen.arrivals, seen.arrivals[1:], strict=False)]
    print(
        f"\nchaos ({'long' if LONG else 'short'}): produced {len(requests)} + {MALFORMED} malformed,"
        f" results {sum(len(v) for v in seen.results.values())}, lost 0, duplicates {duplicates},"
        f" longest gap {max(gaps, default=0):.1f} s, output after the kill -9 in {failover:.1f} s"
    )


def _final(value: bytes) -> bool:
    return codec.parse(value, expect=RESULT)["status"]["classify"] != "pending"


async def _wait_results(seen: Watch, count: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while len(seen.results) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


def _first_after(seen: Watch, moment: float) -> float:
    later = [t for t in seen.arrivals if t > moment]
    return later[0] if later else float("nan")


def _every_worker_serves_every_id(workers, key, seen, ids) -> None:
    def expected(k):
        finals = [v for v in list(seen.results[k]) if _final(v)]
        done = [v for v in finals if codec.parse(v, expect=RESULT)["status"]["classify"] == "done"]
        return stable((done or finals)[-1])

    for worker in workers:
        deadline = time.monotonic() + 120
        for k in ids:
            clip_id = k.decode()
            while True:
                status, got = call(f"{worker.url}/api/result/{clip_id}", key)
                got = {k: v for k, v in got.items() if k not in VOLATILE} if status == 200 else got
                if status == 200 and got == expected(k):
                    break
                if time.monotonic() > deadline:  # a rebalance settles within the deadline
                    raise AssertionError(f"{worker.url} serves {clip_id} as {status} {got}")
                time.sleep(0.5)
