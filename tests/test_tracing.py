"""OpenTelemetry traces of one clip (streams/tracing.py, docs/tracing.md), without Kafka.

The real steps run one real clip as tests/test_pipeline.py runs them; each output's headers
become the next step's `Origin.headers`, as Kafka would carry them. The SDK's in-memory
exporter then holds the clip's spans.
"""

import asyncio
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from streams.app import _origin
from streams.codec import REQUEST, default_codec
from streams.errors import ConfigError, ErrorCode
from streams.ledger import Ledger
from streams.pipeline import HEADER_STAGE, ClassifyStep, DecodeStep, Origin, Out, ResultsStep
from streams.results import base_result
from streams.service import WorkerService
from streams.settings import PROJECT_ROOT, Settings
from streams.stages.models import ModelPack
from streams.stages.policy import PolicyBook
from streams.stages.pool import DecodePool, decode_to_jpeg
from streams.stages.uploads import UploadStore
from streams.topics import Topic
from streams.tracing import Tracing, exporter_names, tracing_from_env
from tests.kafka_io import clip_request

CLIPS = Path(__file__).parent / "fixtures" / "clips"
codec = default_codec()
OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_PROPAGATORS",
)
# Every attribute a ClipGuard span may have: no URL, camera id, metadata or key among them.
ALLOWED_ATTRIBUTES = {
    "clipguard.clip_id",
    "clipguard.tenant",
    "clipguard.risk",
    "clipguard.error_code",
    "clipguard.from_timing",
    "messaging.system",
    "messaging.operation.type",
    "messaging.destination.name",
    "messaging.destination.partition.id",
    "messaging.kafka.offset",
}


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch):
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def settings(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(CLIPS / "people_h264.mp4", media / "people.mp4")
    (media / "junk.mp4").write_bytes(b"\x00junk" * 1000)
    (tmp_path / "uploads").mkdir()
    return Settings(media_roots=(media,), upload_dir=tmp_path / "uploads")


@pytest.fixture(scope="module")
def pack():
    return ModelPack.load(PROJECT_ROOT / "models", threads=1)


@pytest.fixture
def steps(settings, pack):
    pool = DecodePool(settings, decode_fn=decode_to_jpeg)
    executor = ThreadPoolExecutor(max_workers=1)
    ledger = Ledger(deadline_s=60.0, retention_s=3600.0)
    yield SimpleNamespace(
        decode=DecodeStep(settings, codec, pool, UploadStore(settings.upload_dir)),
        classify=ClassifyStep(codec, pack, PolicyBook(), executor),
        results=ResultsStep(codec, {}, ledger, on_final=lambda key, value: None),
    )
    pool.close()
    executor.shutdown()


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider)
    provider.shutdown()


class FakeTopic:
    """What WorkerService.submit sends to, keeping each message's headers."""

    def __init__(self):
        self.sent = []

    async def send(self, key, value, headers=None):
        self.sent.append((key, value, tuple(headers or ())))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def header(headers, name):
    values = [value for key, value in headers if key == name]
    assert len(values) <= 1
    return values[0].decode() if values else None


def trace_id_of(headers):
    """The trace id (hex) a `traceparent` header carries."""
    return header(headers, "traceparent").split("-")[1]


class Clip:
    """One clip through submit, decode, classify and results, outputs' headers passed on."""

    def __init__(self, tracing, steps, uri):
        self.tracing, self.steps = tracing, steps
        self.request = clip_request(uri)
        self.key = self.request["id"].encode()
        self.outs = {}

    async def submit(self):
        topics = {Topic.PROGRESS: FakeTopic(), Topic.REQUESTS: FakeTopic()}
        runtime = SimpleNamespace(
            settings=Settings(), codec=codec, topics=topics, tracing=self.tracing
        )
        await WorkerService(runtime).submit(self.request, base_result(self.request, started_at=""))
        ((_, value, request_headers),) = topics[Topic.REQUESTS].sent
        ((_, progress, progress_headers),) = topics[Topic.PROGRESS].sent
        self.outs["submit"] = {
            Topic.REQUESTS: (value, request_headers),
            Topic.PROGRESS: (progress, progress_headers),
        }
        return value, request_headers

    async def run(self, stage, topic, value, headers, offset=0):
        step = self.tracing.traced(stage, getattr(self.steps, stage), codec)
        origin = Origin(f"clipguard.{topic}", 0, offset, self.key, tuple(headers))
        outs = await step(value, origin)
        self.outs[stage] = {out.topic: (out.value, out.headers) for out in outs}
        return self.outs[stage]

    async def through(self, value, headers):
        """decode -> classify -> results, and every progress message to results too."""
        decoded = await self.run("decode", "requests", value, headers)
        results = await self.run("classify", "decoded", *decoded[Topic.DECODED])
        progress = [self.outs.get("submit", {}).get(Topic.PROGRESS), decoded[Topic.PROGRESS]]
        for message in [*filter(None, progress), results[Topic.RESULTS]]:
            assert await self.run("results", "results", *message) == {}


def spans_by_name(exporter):
    spans = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    return spans


def parent_of(span):
    return None if span.parent is None else span.parent.span_id


async def test_one_clip_is_one_trace_with_a_span_per_stage(tracing, exporter, steps, settings):
    clip = Clip(tracing, steps, (settings.media_roots[0] / "people.mp4").as_uri())
    await clip.through(*await clip.submit())

    spans = spans_by_name(exporter)
    assert {name: len(found) for name, found in spans.items()} == {
        "clipguard.submit": 1,
        "clipguard.decode": 1,
        "clipguard.fetch": 1,
        "clipguard.video_decode": 1,
        "clipguard.jpeg_encode": 1,
        "clipguard.classify": 1,
        "clipguard.inference": 1,
        "clipguard.results": 3,  # the pending status, the decode step's progress, the result
    }
    everything = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in everything}) == 1
    (submit,) = spans["clipguard.submit"]
    (decode,) = spans["clipguard.decode"]
    (classify,) = spans["clipguard.classify"]
    assert parent_of(submit) is None and submit.kind is SpanKind.PRODUCER
    assert parent_of(decode) == submit.context.span_id and decode.kind is SpanKind.CONSUMER
    for stage in ("clipguard.fetch", "clipguard.video_decode", "clipguard.jpeg_encode"):
        (span,) = spans[stage]
        assert parent_of(span) == decode.context.span_id
        assert decode.start_time <= span.start_time <= span.end_time <= decode.end_time
    fetch, video, jpeg = (
        spans[n][0] for n in ("clipguard.fetch", "clipguard.video_decode", "clipguard.jpeg_encode")
    )
    assert fetch.end_time <= video.start_time and video.end_time <= jpeg.start_time
    assert parent_of(classify) == decode.context.span_id
    (inference,) = spans["clipguard.inference"]
    assert parent_of(inference) == classify.context.span_id
    assert classify.start_time <= inference.start_time <= inference.end_time == classify.end_time
    # The pending status is the submit's child, the progress the decode's, the result the
    # classify's.
    assert sorted(parent_of(span) for span in spans["clipguard.results"]) == sorted(
        [submit.context.span_id, decode.context.span_id, classify.context.span_id]
    )

    trace_id = format(submit.context.trace_id, "032x")
    for stage, outs in clip.outs.items():
        for topic, (_, headers) in outs.items():
            assert trace_id_of(headers) == trace_id, (stage, topic)

    for span in everything:
        assert set(span.attributes) <= ALLOWED_ATTRIBUTES, span.name
        for value in span.attributes.values():
            assert "://" not in str(value) and "cg_" not in str(value), span.name
    for span in (submit, decode, classify, *spans["clipguard.results"]):
        assert span.attributes["clipguard.clip_id"] == clip.request["id"], span.name
        assert span.attributes["clipguard.tenant"] == "acme", span.name
        assert span.status.status_code is not StatusCode.ERROR, span.name
    assert classify.attributes["clipguard.risk"] == "intrusion"
    assert decode.attributes["messaging.destination.name"] == "clipguard.requests"
    assert classify.attributes["messaging.destination.name"] == "clipguard.decoded"


async def test_a_request_published_without_a_traceparent_starts_its_trace_at_decode(
    tracing, exporter, steps, settings
):
    clip = Clip(tracing, steps, (settings.media_roots[0] / "people.mp4").as_uri())
    await clip.through(codec.serialize(REQUEST, clip.request), ())
    spans = spans_by_name(exporter)
    assert "clipguard.submit" not in spans
    (decode,) = spans["clipguard.decode"]
    assert parent_of(decode) is None
    assert len({span.context.trace_id for span in exporter.get_finished_spans()}) == 1
    assert len(spans["clipguard.results"]) == 2


async def test_a_vms_traceparent_is_the_parent_of_the_decode_step(
    tracing, exporter, steps, settings
):
    vms_trace, vms_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = (("traceparent", f"00-{vms_trace}-{vms_span}-01".encode()),)
    clip = Clip(tracing, steps, (settings.media_roots[0] / "people.mp4").as_uri())
    outs = await clip.run("decode", "intake.acme", codec.serialize(REQUEST, clip.request), headers)
    (decode,) = spans_by_name(exporter)["clipguard.decode"]
    assert format(decode.context.trace_id, "032x") == vms_trace
    assert format(parent_of(decode), "016x") == vms_span
    assert trace_id_of(outs[Topic.DECODED][1]) == vms_trace


async def test_a_clip_that_fails_to_decode_has_an_error_span_and_a_traced_dead_letter(
    tracing, exporter, steps, settings
):
    clip = Clip(tracing, steps, (settings.media_roots[0] / "junk.mp4").as_uri())
    outs = await clip.run("decode", "requests", *await clip.submit())
    assert set(outs) == {Topic.RESULTS, Topic.DEADLETTER}
    (decode,) = spans_by_name(exporter)["clipguard.decode"]
    assert decode.status.status_code is StatusCode.ERROR
    assert decode.attributes["clipguard.error_code"] == ErrorCode.INVALID_VIDEO
    assert decode.attributes["clipguard.clip_id"] == clip.request["id"]
    letter_headers = outs[Topic.DEADLETTER][1]
    assert header(letter_headers, HEADER_STAGE) == "decode"  # its own headers are kept
    assert trace_id_of(letter_headers) == format(decode.context.trace_id, "032x")


async def test_a_step_that_raises_records_it_and_the_exception_goes_on(tracing, exporter):
    async def broken(value, origin):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await tracing.traced("classify", broken, codec)(b"x", Origin("t", 0, 0, b"k"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "clipguard.classify" and span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


async def test_with_tracing_off_nothing_is_recorded_and_no_header_is_added(
    exporter, steps, settings
):
    off = tracing_from_env({})
    assert not off.enabled
    assert off.traced("decode", steps.decode, codec) is steps.decode  # no wrapper at all
    clip = Clip(off, steps, (settings.media_roots[0] / "people.mp4").as_uri())
    await clip.through(*await clip.submit())
    for stage, outs in clip.outs.items():
        for topic, (_, headers) in outs.items():
            assert header(headers, "traceparent") is None, (stage, topic)
            assert header(headers, "tracestate") is None, (stage, topic)
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_SERVICE_NAME": "clipguard-eu"},  # no exporter named: still off
    ],
)
def test_tracing_is_off_unless_an_exporter_is_asked_for(environ):
    assert exporter_names(environ) == []
    assert not tracing_from_env(environ).enabled


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        (
            {"OTEL_TRACES_EXPORTER": "console, otlp", "OTEL_SDK_DISABLED": "false"},
            ["console", "otlp"],
        ),
    ],
)
def test_the_standard_variables_turn_tracing_on(monkeypatch, environ, names):
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    assert exporter_names(environ) == names
    tracing = tracing_from_env(environ)
    try:
        assert tracing.enabled
        provider = cast(Any, tracing.provider)
        assert provider.resource.attributes["service.name"] == "clipguard"
    finally:
        tracing.shutdown()


def test_otel_service_name_names_the_service(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "clipguard-eu")
    tracing = tracing_from_env()
    try:
        assert cast(Any, tracing.provider).resource.attributes["service.name"] == "clipguard-eu"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "jaeger"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "http/json",
        ),
    ],
)
def test_what_clipguard_cannot_honour_stops_the_worker(environ, message):
    with pytest.raises(ConfigError, match=message):
        tracing_from_env(environ)


def test_otel_variables_are_no_clipguard_settings(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    Settings.from_env()  # unknown CLIPGUARD_* variables are refused, OTEL_* ones are not ours


@pytest.mark.parametrize(
    "raw",
    [
        [("traceparent", b"00-ab-cd-01"), ("empty", None)],
        {"traceparent": b"00-ab-cd-01", "empty": None},
    ],
)
def test_the_agents_origin_keeps_the_record_headers(raw):
    message = SimpleNamespace(
        topic="clipguard.decoded", partition=1, offset=7, key=b"k", headers=raw
    )
    origin = _origin(cast(Any, SimpleNamespace(message=message)))
    assert origin == Origin(
        "clipguard.decoded", 1, 7, b"k", (("traceparent", b"00-ab-cd-01"), ("empty", b""))
    )
    message.headers = None
    assert _origin(cast(Any, SimpleNamespace(message=message))).headers == ()


async def test_a_clip_the_sampler_leaves_out_passes_its_context_on_and_records_nothing(exporter):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)

    async def step(value, origin):
        return [Out(Topic.RESULTS, b"k", b"not even avro")]  # never parsed: not recorded

    (out,) = await tracing.traced("classify", step, codec)(b"x", Origin("t", 0, 0, b"k"))
    flags = header(out.headers, "traceparent").split("-")[3]
    assert int(flags, 16) & 1 == 0  # a valid context, not sampled
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_with_tracing_off_the_sdk_is_not_even_imported():
    code = (
        "import sys, streams.wiring\n"
        "from streams.tracing import tracing_from_env\n"
        "assert not tracing_from_env({}).enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


async def test_a_failure_of_tracing_itself_never_fails_the_step(tracing, exporter, monkeypatch):
    import streams.tracing

    def broken(*args):
        raise KeyError("timing")

    monkeypatch.setattr(streams.tracing, "_describe", broken)

    async def step(value, origin):
        return [Out(Topic.RESULTS, b"k", b"v")]

    (out,) = await tracing.traced("results", step, codec)(b"x", Origin("t", 0, 0, b"k"))
    assert out.value == b"v" and header(out.headers, "traceparent") is not None
    assert [span.name for span in exporter.get_finished_spans()] == ["clipguard.results"]
