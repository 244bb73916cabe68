"""OpenTelemetry traces of each clip (docs/tracing.md): optional, off unless `OTEL_*` asks.

One trace per clip, across topics: the HTTP submit starts it (`Tracing.submitting`), or, for a
request a VMS published on Kafka without a `traceparent`, the decode step does. Each step's span
(`Tracing.traced`, around the Kafka-free steps of streams/pipeline.py) is the child of the
context its input message carried in its Kafka record headers (`Origin.headers`), and every
output of the step carries the step's span onward in the same headers, named as W3C Trace
Context names them (`traceparent`, `tracestate`). The steps stay free of Kafka and of
OpenTelemetry.

The stages inside a step (fetch, video decode, JPEG encode; inference) become child spans
after the step has run, from the durations the step measured in its `timing` anyway: their
lengths are measured, where they start inside the step is laid out (see `STAGE_SPANS`).

Off (the default), `traced` returns the step itself and `submitting` yields no header: nothing
is recorded, parsed or propagated, and the OpenTelemetry SDK is not even imported. On
(`tracing_from_env`: `OTEL_TRACES_EXPORTER` or `OTEL_EXPORTER_OTLP_ENDPOINT` set, and
`OTEL_SDK_DISABLED` not true), the SDK's TracerProvider, sampler, batch processor and exporter
read the rest of the standard `OTEL_*` variables themselves.

Span attributes are the clip id, the tenant, the outcome (risk, error code) and where the input
was read (topic, partition, offset): never a clip URL (it may carry a signed query string), a
camera id, metadata or an API key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.codec import DECODED, RESULT, AvroCodec
from streams.errors import CodecError, ConfigError
from streams.pipeline import HEADER_CLIP_ID, HEADER_ERROR_CODE, HEADER_STAGE, Headers, Origin, Out
from streams.topics import Topic

if TYPE_CHECKING:
    from streams.records import ClipRequest

log = logging.getLogger(__name__)

Step = Callable[[bytes, Origin], Awaitable[list[Out]]]
Attributes = dict[str, str | int | bool]

TRACER_NAME = "clipguard"
SERVICE_NAME = "clipguard"  # the resource's service.name unless OTEL_SERVICE_NAME says another
SUBMIT_SPAN = "clipguard.submit"
# What OTEL_TRACES_EXPORTER may name here (the SDK's own names); "none": no exporter, no tracing.
EXPORTERS = ("otlp", "console")
OTLP_PROTOCOL = "http/protobuf"  # the one OTLP exporter installed (pyproject.toml)


@dataclass(frozen=True)
class Stages:
    """The stage spans of one step: (timing key, span name) in the order the step runs them.

    `from_end`: the stages end where the step ends (the step's other work, parsing its input,
    comes first), else they start where the step starts (its other work, serializing its
    outputs, comes last). Either way the error in where a stage starts is that other work.
    """

    spans: tuple[tuple[str, str], ...]
    from_end: bool = False


STAGE_SPANS: dict[str, Stages] = {
    # In the worker's decode pool the child encodes each frame to JPEG as it decodes it, so
    # video_decode and jpeg_encode are the split of that time, laid one after the other.
    "decode": Stages(
        (
            ("fetch", "clipguard.fetch"),
            ("decode", "clipguard.video_decode"),
            ("encode", "clipguard.jpeg_encode"),
        )
    ),
    # Frames from JPEG, the model pack, motion heuristics and the policy: one call, one span.
    "classify": Stages((("classify", "clipguard.inference"),), from_end=True),
    "results": Stages(()),
}


class _HeadersGetter(Getter[Sequence[tuple[str, bytes]]]):
    """Reads a context from Kafka record headers: (name, bytes) pairs."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("utf-8", errors="replace") for n, v in carrier if n.lower() == key]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in carrier]


class _HeadersSetter(Setter[list[tuple[str, bytes]]]):
    """Writes a context as Kafka record headers."""

    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("utf-8")))


HEADERS_GETTER = _HeadersGetter()
HEADERS_SETTER = _HeadersSetter()


class Tracing:
    """The worker's tracing: a tracer and a propagator, or nothing at all (the default).

    `provider`: an OpenTelemetry TracerProvider (the SDK's; tests give one with an in-memory
    exporter); None: tracing is off. `propagator`: how a context is written into headers;
    by default the one OTEL_PROPAGATORS names (W3C Trace Context and Baggage unless it says
    otherwise), read only when tracing is on.
    """

    def __init__(
        self,
        provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = (
            trace.NoOpTracer() if provider is None else provider.get_tracer(TRACER_NAME)
        )
        if propagator is None and provider is not None:
            from opentelemetry import propagate  # reads OTEL_PROPAGATORS when imported

            propagator = propagate.get_global_textmap()
        self.propagator = propagator or TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        """Export what is left and stop (the SDK's provider also does it at interpreter exit)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # --- the HTTP submit: where a clip's trace starts ------------------------------------

    @contextlib.contextmanager
    def submitting(self, request: ClipRequest) -> Iterator[Headers]:
        """A span around publishing a clip's pending status and request (streams/service.py);
        yields the headers both messages carry (none when tracing is off)."""
        if not self.enabled:
            yield ()
            return
        attributes: Attributes = {
            **_clip_attributes(request["id"], request["tenant"]),
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
        }
        with self.tracer.start_as_current_span(
            SUBMIT_SPAN, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            yield self.headers(span)

    # --- the steps --------------------------------------------------------------------

    def traced(self, stage: str, step: Step, codec: AvroCodec) -> Step:
        """`step` in a span named `clipguard.<stage>` (the agent's name); off: `step` itself."""
        if not self.enabled:
            return step

        async def run(value: bytes, origin: Origin) -> list[Out]:
            return await self._run(stage, step, codec, value, origin)

        return run

    async def _run(
        self, stage: str, step: Step, codec: AvroCodec, value: bytes, origin: Origin
    ) -> list[Out]:
        parent = self.propagator.extract(origin.headers, context=Context(), getter=HEADERS_GETTER)
        start = time.time_ns()
        span = self.tracer.start_span(
            f"clipguard.{stage}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_origin_attributes(origin),
            start_time=start,
        )
        try:
            with trace.use_span(span, end_on_exit=False):  # records an exception, sets ERROR
                outs = await step(value, origin)
        except BaseException:
            span.end()
            raise
        end = time.time_ns()
        if span.is_recording():  # not when the sampler left this clip out: no parsing then
            try:
                timing = _describe(span, codec, stage, value, origin, outs)
                self._stage_spans(span, STAGE_SPANS.get(stage, Stages(())), timing, start, end)
            except Exception:  # a bug here must not turn a step's good outputs into a failure
                log.exception("%s: describing the %s span failed; its outputs go on", origin, stage)
        span.end(end_time=end)
        return self.carry(outs, span)

    def _stage_spans(
        self, span: Span, stages: Stages, timing: Mapping[str, float], start: int, end: int
    ) -> None:
        measured = [(name, int(timing[key] * 1e6)) for key, name in stages.spans if key in timing]
        if not measured:
            return
        parent = trace.set_span_in_context(span, Context())
        at = end - sum(ns for _, ns in measured) if stages.from_end else start
        for name, ns in measured:
            begin = min(max(at, start), end)
            child = self.tracer.start_span(
                name, context=parent, start_time=begin, attributes={"clipguard.from_timing": True}
            )
            child.end(end_time=min(max(at + ns, begin), end))
            at += ns

    # --- headers ----------------------------------------------------------------------

    def headers(self, span: Span) -> Headers:
        """The Kafka record headers that carry `span`'s context (none for an invalid span)."""
        carrier: list[tuple[str, bytes]] = []
        self.propagator.inject(
            carrier, context=trace.set_span_in_context(span, Context()), setter=HEADERS_SETTER
        )
        return tuple(carrier)

    def carry(self, outs: list[Out], span: Span) -> list[Out]:
        """`outs` with `span`'s context in their headers (replacing any context they had)."""
        if not outs:
            return outs
        context = self.headers(span)
        if not context:
            return outs
        names = {name for name, _ in context} | set(self.propagator.fields)
        return [
            replace(out, headers=(*(h for h in out.headers if h[0] not in names), *context))
            for out in outs
        ]


def _clip_attributes(clip_id: str, tenant: str | None) -> Attributes:
    attributes: Attributes = {"clipguard.clip_id": clip_id}
    if tenant:
        attributes["clipguard.tenant"] = tenant
    return attributes


def _origin_attributes(origin: Origin) -> Attributes:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": origin.topic,
        "messaging.destination.partition.id": str(origin.partition),
        "messaging.kafka.offset": origin.offset,
    }


def _describe(
    span: Span, codec: AvroCodec, stage: str, value: bytes, origin: Origin, outs: list[Out]
) -> dict[str, float]:
    """Puts the clip and the outcome on a step's span; returns the timing its stages took.

    Read from the step's small outputs (results, progress), the large decoded clip only for the
    decode step's timing, and a dead letter's headers: the step's own work is not redone.
    """
    clip_id: str | None = None
    tenant: str | None = None
    timing: dict[str, float] = {}
    failure: str | None = None
    wants_timing = bool(STAGE_SPANS.get(stage, Stages(())).spans)
    # (output, whether the step produced it): the results step produces nothing but dead
    # letters, so what it was given (a small result) tells the clip.
    readable = [(out, True) for out in outs]
    if stage == "results":
        readable.insert(0, (Out(Topic.RESULTS, origin.key or b"", value), False))
    for out, produced in readable:
        try:
            if out.topic in (Topic.RESULTS, Topic.PROGRESS):
                result = codec.parse(out.value, expect=RESULT)
                clip_id, tenant = result["id"], result["tenant"]
                if produced and result["error_code"]:
                    failure = f"error result {result['error_code']}"
                    span.set_attribute("clipguard.error_code", result["error_code"])
                elif produced and out.topic is Topic.RESULTS:
                    span.set_attribute("clipguard.risk", result["risk"])
                timing = dict(result["timing"]) or timing
            elif out.topic is Topic.DECODED and wants_timing:
                decoded = codec.parse(out.value, expect=DECODED)
                clip_id, tenant = decoded["request"]["id"], decoded["request"]["tenant"]
                timing = dict(decoded["timing"])
        except CodecError:  # not ours to judge here: the step already answered it
            continue
        if out.topic is Topic.DEADLETTER:
            headers = dict(out.headers)
            failure = failure or (
                f"dead letter at {headers.get(HEADER_STAGE, b'').decode(errors='replace')}"
            )
            code = headers.get(HEADER_ERROR_CODE)
            if code is not None and code.isdigit():
                span.set_attribute("clipguard.error_code", int(code))
            if clip_id is None and HEADER_CLIP_ID in headers:
                clip_id = headers[HEADER_CLIP_ID].decode(errors="replace")
    if clip_id is not None:
        span.set_attributes(_clip_attributes(clip_id, tenant))
    if failure is not None:
        span.set_status(Status(StatusCode.ERROR, failure))
    return timing


# --- set up at worker start ---------------------------------------------------------------


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the standard variables ask for; none: tracing stays off."""
    if _is_true(environ.get("OTEL_SDK_DISABLED")):
        return []
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    if not names and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    unknown = [name for name in names if name not in (*EXPORTERS, "none")]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: ClipGuard exports spans with "
            f"{', '.join(EXPORTERS)} (or none); docs/tracing.md"
        )
    return [name for name in names if name != "none"]


def tracing_from_env(environ: Mapping[str, str] = os.environ) -> Tracing:
    """The worker's tracing, as the standard OTEL_* variables ask (docs/tracing.md); off by
    default. A variable ClipGuard cannot honour is a ConfigError, before Kafka is touched."""
    names = exporter_names(environ)
    if not names:
        return Tracing()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(name, environ) for name in names]
    resource_keys = {
        item.split("=", 1)[0].strip()
        for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    }
    named = bool(environ.get("OTEL_SERVICE_NAME")) or "service.name" in resource_keys
    # The sampler (OTEL_TRACES_SAMPLER) and the batch sizes (OTEL_BSP_*) come from the variables.
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": SERVICE_NAME})
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    try:
        tracing = Tracing(provider)
    except ValueError as exc:  # OTEL_PROPAGATORS names a propagator that is not installed
        provider.shutdown()
        raise ConfigError(f"OTEL_PROPAGATORS: {exc}") from exc
    log.info("tracing on: spans exported with %s (docs/tracing.md)", ", ".join(names))
    return tracing


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or OTLP_PROTOCOL
    )
    if protocol.strip().lower() != OTLP_PROTOCOL:
        raise ConfigError(
            f"OTLP protocol {protocol!r} (OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL): ClipGuard "
            f"exports traces with {OTLP_PROTOCOL} only; docs/tracing.md"
        )
    # Endpoint, headers, timeout, compression, certificates: OTEL_EXPORTER_OTLP_* itself.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
