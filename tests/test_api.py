"""HTTP API through the real aiohttp app, over an in-process ClipService.

The service here is a small in-memory stand-in for the worker (no Kafka): what these tests check
is the HTTP contract (auth, validation, status codes, the published JSON). The same views on the
real broker and real workers are exercised in tests/test_e2e.py.
"""

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import FormData, web

from api.auth import add_key
from api.views import install
from streams.codec import default_codec
from streams.errors import QueueUnavailable
from streams.results import DONE, result_from_json
from streams.settings import Settings

EXAMPLE = json.loads((Path(__file__).parent / "fixtures" / "result-example.json").read_text())
CLIP = Path(__file__).parent / "fixtures" / "clips" / "people_h264.mp4"


class InMemoryService:
    """Answers like a worker that owns every id and finishes a clip when told to."""

    def __init__(self, settings):
        self.settings = settings
        self.codec = default_codec()
        self.http = None
        self.results = {}
        self.submitted = []
        self.finish_on_submit = True

    async def submit(self, request, pending):
        self.submitted.append(request)
        self.results[request["id"]] = pending
        if self.finish_on_submit:
            done = result_from_json({**EXAMPLE, "id": request["id"], "tenant": request["tenant"]})
            self.results[request["id"]] = done

    def owner_url(self, clip_id):
        return None

    def local(self, clip_id):
        return self.results.get(clip_id)

    async def wait_local(self, clip_id, timeout):
        record = self.results.get(clip_id)
        if record and record["status"]["classify"] == DONE:
            return record
        await asyncio.sleep(timeout)
        return None

    def readiness(self):
        return {"broker": True, "table_recovered": True, "model_loaded": True}


@pytest.fixture
def settings(tmp_path):
    return Settings(
        api_keys_file=tmp_path / "keys.json",
        internal_secret_file=tmp_path / "internal-secret",
        upload_dir=tmp_path / "uploads",
        media_roots=(tmp_path / "media",),
        max_upload_bytes=2_000_000,
        sync_timeout_s=0.3,
    )


@pytest.fixture
def keys(settings):
    return {
        "acme": add_key(settings.api_keys_file, "acme"),
        "globex": add_key(settings.api_keys_file, "globex"),
    }


@pytest.fixture
async def client(aiohttp_client, settings, keys):
    service = InMemoryService(settings)
    app = web.Application(client_max_size=settings.max_upload_bytes + 1_000_000)
    install(app, service, settings)
    client = await aiohttp_client(app)
    client.service = service
    return client


def stored_files(settings):
    return [p for p in settings.upload_dir.rglob("*") if p.is_file()]


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def upload(**fields):
    form = FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("video", CLIP.read_bytes(), filename="cam1.mp4", content_type="video/mp4")
    return form


async def test_sync_post_returns_the_full_published_result(client, keys):
    response = await client.post(
        "/api/classify?sync=true", data=upload(camera_id="134188-VI08"), headers=auth(keys["acme"])
    )
    assert response.status == 200
    body = await response.json()
    assert list(body) == list(EXAMPLE)
    assert body["tenant"] == "acme"
    request = client.service.submitted[0]
    assert request["camera_id"] == "134188-VI08"
    assert request["video_uri"].startswith("upload://") and request["videoname"] == "cam1.mp4"
    stored = client.service.settings.upload_dir / "acme" / request["video_uri"][9:]
    assert stored.read_bytes() == CLIP.read_bytes()

    again = await client.get(f"/api/result/{body['id']}", headers=auth(keys["acme"]))
    assert again.status == 200 and await again.json() == body


async def test_async_post_gives_id_and_where_to_poll(client, keys):
    client.service.finish_on_submit = False
    response = await client.post("/api/classify", data=upload(), headers=auth(keys["acme"]))
    assert response.status == 202
    body = await response.json()
    assert body["status"] == {"classify": "pending", "video": "pending"}
    polled = await client.get(body["poll"], headers=auth(keys["acme"]))
    assert polled.status == 200
    assert (await polled.json())["status"] == {"classify": "pending", "video": "pending"}


async def test_sync_post_times_out_with_504_and_the_id(client, keys):
    client.service.finish_on_submit = False
    response = await client.post(
        "/api/classify?sync=true", data=upload(), headers=auth(keys["acme"])
    )
    assert response.status == 504
    body = await response.json()
    assert body["poll"] == f"/api/result/{body['id']}"


async def test_other_tenants_result_is_not_found(client, keys):
    response = await client.post(
        "/api/classify?sync=true", data=upload(), headers=auth(keys["acme"])
    )
    clip_id = (await response.json())["id"]
    other = await client.get(f"/api/result/{clip_id}", headers=auth(keys["globex"]))
    unknown = await client.get(f"/api/result/{'0' * 23}1", headers=auth(keys["globex"]))
    assert other.status == unknown.status == 404
    assert (await other.json())["error"] == "not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": ""}])
async def test_requests_without_a_valid_key_are_refused(client, headers):
    assert (await client.get(f"/api/result/{'a' * 24}", headers=headers)).status == 401
    assert (await client.post("/api/classify", data=upload(), headers=headers)).status == 401


async def test_body_tenant_must_match_the_key(client, keys, settings):
    response = await client.post(
        "/api/classify", data=upload(tenant="globex"), headers=auth(keys["acme"])
    )
    assert response.status == 403
    assert (await response.json())["field"] == "tenant"
    assert client.service.submitted == []
    assert stored_files(settings) == []  # the refused upload is not kept


async def test_a_clip_that_cannot_be_queued_is_503_and_its_upload_removed(client, keys, settings):
    async def broken_submit(request, pending):
        raise QueueUnavailable("broker down", clip_id=request["id"])

    client.service.submit = broken_submit
    response = await client.post("/api/classify", data=upload(), headers=auth(keys["acme"]))
    assert response.status == 503
    assert (await response.json())["error"] == "unavailable"
    assert stored_files(settings) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"metadata": "not json"}, "metadata"),
        ({"metadata": '{"a": 1}'}, "metadata"),
        ({"analyse_id": "abc"}, "analyse_id"),
        ({"parent_id": "xyz"}, "parent_id"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_invalid_fields_are_400_naming_the_field(client, keys, settings, fields, field):
    response = await client.post("/api/classify", data=upload(**fields), headers=auth(keys["acme"]))
    assert response.status == 400
    assert (await response.json())["field"] == field
    assert client.service.submitted == []
    assert stored_files(settings) == []


async def test_missing_video_is_400(client, keys):
    form = FormData(default_to_multipart=True)
    form.add_field("camera_id", "c1")
    response = await client.post("/api/classify", data=form, headers=auth(keys["acme"]))
    assert response.status == 400 and (await response.json())["field"] == "video"


async def test_oversize_upload_is_413_and_nothing_is_kept(client, keys, settings):
    form = FormData()
    form.add_field("video", b"\0" * (settings.max_upload_bytes + 10), filename="big.mp4")
    response = await client.post("/api/classify", data=form, headers=auth(keys["acme"]))
    assert response.status == 413
    assert client.service.submitted == []
    assert stored_files(settings) == []


async def test_unsupported_media_type_is_415(client, keys):
    response = await client.post(
        "/api/classify", data=b"raw", headers={**auth(keys["acme"]), "Content-Type": "video/mp4"}
    )
    assert response.status == 415


async def test_json_body_references_a_url(client, keys):
    response = await client.post(
        "/api/classify",
        json={
            "video_url": "https://vms.example/clip.mp4",
            "camera_id": "c1",
            "metadata": {"site": "north"},
        },
        headers=auth(keys["acme"]),
    )
    assert response.status == 202
    request = client.service.submitted[0]
    assert request["video_uri"] == "https://vms.example/clip.mp4"
    assert request["metadata"] == {"site": "north"}


@pytest.mark.parametrize(
    "url", ["ftp://x/y.mp4", "", "gopher://a", None, "file:///srv/media/uploads/other.mp4"]
)
async def test_json_body_with_a_bad_url_is_400(client, keys, url):
    response = await client.post(
        "/api/classify", json={"video_url": url}, headers=auth(keys["acme"])
    )
    assert response.status == 400 and (await response.json())["field"] == "video_url"


async def test_health_and_ready(client):
    assert (await client.get("/health")).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200 and (await ready.json())["ready"] is True
