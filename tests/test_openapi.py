"""api/openapi.yaml stays true: schemathesis drives the real aiohttp views from it.

The views run on a real HTTP server over the in-memory ClipService of tests/test_api.py;
schemathesis generates requests from the document (valid and not) and checks every answer's
status code, content type and body against it, and that nothing answers 5xx unexpectedly.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from api.auth import add_key
from api.views import install
from devtools.cluster import free_ports
from streams.settings import Settings
from tests.test_api import InMemoryService

SPEC = Path(__file__).resolve().parent.parent / "api" / "openapi.yaml"
schema = schemathesis.openapi.from_path(str(SPEC))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    config = Settings(
        api_keys_file=tmp / "keys.json",
        internal_secret_file=tmp / "internal-secret",
        upload_dir=tmp / "uploads",
        media_roots=(tmp / "media",),
        max_upload_bytes=200_000,
        sync_timeout_s=0.2,
    )
    key = add_key(config.api_keys_file, "acme")
    (port,) = free_ports(1)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box = {}

    async def serve():
        app = web.Application(client_max_size=config.max_upload_bytes + 100_000)
        install(app, InMemoryService(config), config)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box["runner"] = runner
        started.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}", key
    asyncio.run_coroutine_threadsafe(runner_box["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@schema.parametrize()
# derandomize: the same examples on every run, so CI never flakes on a newly found case;
# run with --hypothesis-seed=random to explore further.
@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case, server):
    base_url, key = server
    headers = {"Authorization": f"Bearer {key}"} if case.path != "/health" else {}
    case.call_and_validate(base_url=base_url, headers=headers)
