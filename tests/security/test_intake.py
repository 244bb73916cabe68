"""HTTP intake as an attacker sends it: every bad input is a JSON 4xx, and nothing is kept.

Findings: a 500 for deeply nested JSON, a 5,000-digit `analyse_id` and a malformed URL that
was accepted and then never answered; a gzip body inflated behind the size check; uploads left
on disk by a failed request; no bound per tenant.
"""

import asyncio
import gzip
import json

import pytest
from aiohttp import FormData, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.auth import add_key
from api.errors import ERRORS
from api.views import install
from streams.settings import Settings
from tests.test_api import CLIP, InMemoryService

DOCUMENTED = {kind.status: kind.code for kind in ERRORS}


@pytest.fixture
def config(tmp_path):
    return Settings(
        api_keys_file=tmp_path / "keys.json",
        internal_secret_file=tmp_path / "internal-secret",
        upload_dir=tmp_path / "uploads",
        media_roots=(tmp_path / "media",),
        max_upload_bytes=2_000_000,
        tenant_upload_quota_bytes=3_000_000,
        tenant_sync_limit=2,
        sync_timeout_s=0.3,
        body_timeout_s=1.0,
    )


@pytest.fixture
async def client(aiohttp_client, config):
    key = add_key(config.api_keys_file, "acme")
    service = InMemoryService(config)
    app = web.Application(client_max_size=config.max_upload_bytes + 1_000_000)
    install(app, service, config)
    client = await aiohttp_client(app)
    client.service, client.headers_ = service, {"Authorization": f"Bearer {key}"}
    return client


def stored(config):
    return [p for p in config.upload_dir.rglob("*") if p.is_file()]


async def post_json(client, body: bytes):
    headers = {**client.headers_, "Content-Type": "application/json"}
    return await client.post("/api/classify", data=body, headers=headers)


async def assert_refused(response, status, field=None):
    assert response.status == status
    body = await response.json()
    assert body["error"] == DOCUMENTED[status]
    if field is not None:
        assert body["field"] == field


@pytest.mark.parametrize(
    "body",
    [
        b'{"video_url": "https://a/b.mp4", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 50_000 + b"]" * 50_000,
        b'{"video_url": "https://a/b.mp4", "analyse_id": ' + b"9" * 5000 + b"}",
        b'{"video_url": "https://a/b.mp4", "analyse_id": 1e999}',
        b'{"video_url": "https://a/b.mp4", "\xff": 1}',
        b"\xef\xbb\xbf{}",
    ],
    ids=["nested", "nested-array", "huge-int", "huge-float", "bad-utf8", "bom"],
)
async def test_json_that_breaks_a_parser_is_a_400(client, body):
    response = await post_json(client, body)
    assert response.status in (400, 413)
    assert client.service.submitted == []


async def test_a_huge_number_in_a_form_field_is_a_400(client, config):
    form = FormData()
    form.add_field("analyse_id", "9" * 5000)
    form.add_field("video", CLIP.read_bytes(), filename="a.mp4")
    response = await client.post("/api/classify", data=form, headers=client.headers_)
    await assert_refused(response, 400, "analyse_id")
    assert stored(config) == []


async def test_nested_metadata_in_a_form_is_a_400_and_the_upload_is_removed(client, config):
    form = FormData()
    form.add_field("video", CLIP.read_bytes(), filename="a.mp4")
    form.add_field("metadata", "[" * 100_000 + "]" * 100_000)
    response = await client.post("/api/classify", data=form, headers=client.headers_)
    assert response.status in (400, 413)
    assert stored(config) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/x.mp4",
        "http://[::1]x/y.mp4",
        "http://１２７.０.０.１/a.mp4",
        "http://127．0．0．1/a.mp4",
        "http://①②⑦.0.0.1/a.mp4",
        "http://user:pw@cams.example.com/a.mp4",
        "http:///a.mp4",
        "http://:80/a.mp4",
        "http://cams.example.com:99999/a.mp4",
        "https://exämple.com/a.mp4",
    ],
)
async def test_a_url_the_client_would_read_otherwise_is_refused_at_intake(client, url):
    response = await post_json(client, json.dumps({"video_url": url}).encode())
    await assert_refused(response, 400, "video_url")
    assert client.service.submitted == []


async def test_a_compressed_body_is_refused_before_it_is_inflated(client, config):
    form = FormData()
    form.add_field("video", b"\0" * 10_000_000, filename="a.mp4")
    raw = form()
    body = gzip.compress(b"".join([chunk async for chunk in _chunks(raw)]))
    assert len(body) < 100_000  # 10 MB of clip in under 100 KB on the wire
    headers = {**client.headers_, "Content-Type": raw.content_type, "Content-Encoding": "gzip"}
    response = await client.post("/api/classify", data=body, headers=headers)
    await assert_refused(response, 415)
    assert stored(config) == [] and client.service.submitted == []


async def _chunks(payload):
    class Sink:
        def __init__(self):
            self.parts = []

        async def write(self, data):
            self.parts.append(bytes(data))

    sink = Sink()
    await payload.write(sink)
    for part in sink.parts:
        yield part


async def test_an_upload_over_the_tenants_quota_is_429_and_not_kept(client, config):
    first = FormData()
    first.add_field("video", b"\1" * 1_900_000, filename="a.mp4")
    assert (await client.post("/api/classify", data=first, headers=client.headers_)).status == 202
    second = FormData()
    second.add_field("video", b"\2" * 1_900_000, filename="b.mp4")
    response = await client.post("/api/classify", data=second, headers=client.headers_)
    await assert_refused(response, 429, "video")
    assert len(stored(config)) == 1


async def test_a_tenant_cannot_hold_more_sync_requests_than_its_limit(client):
    client.service.finish_on_submit = False  # results never come: every sync call waits

    async def sync_call():
        form = FormData()
        form.add_field("video", CLIP.read_bytes(), filename="a.mp4")
        return await client.post("/api/classify?sync=true", data=form, headers=client.headers_)

    statuses = sorted([r.status for r in await asyncio.gather(*(sync_call() for _ in range(4)))])
    assert statuses.count(504) == 2 and statuses.count(429) == 2


async def test_a_body_that_never_finishes_is_a_408_and_nothing_is_kept(client, config):
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    boundary = "b0undary"
    head = (
        f"POST /api/classify HTTP/1.1\r\nHost: x\r\n{_auth_line(client)}"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 1000000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
    )
    writer.write(head.encode() + b"\0" * 1000)  # then nothing more, for ever
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=30)
    writer.close()
    assert b" 408 " in status_line
    assert stored(config) == []


def _auth_line(client):
    return f"Authorization: {client.headers_['Authorization']}\r\n"


async def test_sync_never_returns_a_result_under_another_tenants_name(client):
    service = client.service
    original = service.submit

    async def impostor_wins(request, pending):
        await original(request, pending)
        service.results[request["id"]] = {**service.results[request["id"]], "tenant": "globex"}

    service.submit = impostor_wins
    form = FormData()
    form.add_field("video", CLIP.read_bytes(), filename="a.mp4")
    response = await client.post("/api/classify?sync=true", data=form, headers=client.headers_)
    await assert_refused(response, 504)


# --- fuzz: whatever arrives, the answer is a documented JSON status, never a 500 ----------

field_names = st.sampled_from(
    ["video_url", "tenant", "metadata", "analyse_id", "camera_id", "parent_id", "videoname", "x"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.dictionaries(field_names, json_values, max_size=6), raw=st.binary(max_size=200))
async def test_fuzzed_json_bodies_get_documented_answers(client, body, raw):
    for data in (json.dumps(body).encode(), raw):
        response = await post_json(client, data)
        assert response.status in (202, *DOCUMENTED), await response.text()
        if response.status != 202:
            assert (await response.json())["error"] == DOCUMENTED[response.status]


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fields=st.dictionaries(field_names, st.text(max_size=40), max_size=5),
    filename=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40),
    content=st.binary(max_size=2000),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "x"]),
    content_type=st.sampled_from(
        ["multipart/form-data", "application/json", "text/plain", "video/mp4", ""]
    ),
)
async def test_fuzzed_forms_get_documented_answers(
    client, fields, filename, content, encoding, content_type
):
    form = FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("video", content, filename=filename or "a.mp4")
    headers = dict(client.headers_)
    if encoding:
        headers["Content-Encoding"] = encoding
    if content_type != "multipart/form-data":
        headers["Content-Type"] = content_type
    response = await client.post("/api/classify", data=form, headers=headers)
    assert response.status in (202, *DOCUMENTED), await response.text()
