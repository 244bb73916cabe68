"""Finding: a tenant's API key was forwarded in clear to peer workers whose URLs come from the
consumer group's metadata. Now a peer gets a token good for one id, one tenant, 30 seconds."""

import os

import pytest
from aiohttp import web

from api import internal
from api.auth import add_key
from api.views import install
from streams.errors import ConfigError
from streams.results import result_from_json
from streams.settings import Settings
from tests.test_api import EXAMPLE, InMemoryService

ID, OTHER_ID = "a" * 24, "b" * 24


@pytest.fixture
def tokens():
    now = [1_000_000.0]
    t = internal.InternalTokens(b"s" * 32, clock=lambda: now[0])
    t.now = now
    return t


def test_a_token_speaks_for_its_tenant_and_id_only(tokens):
    token = tokens.issue("acme", ID)
    assert tokens.verify(token, ID) == "acme"
    assert tokens.verify(token, OTHER_ID) is None
    assert tokens.verify(token.replace(":acme", ":globex"), ID) is None
    assert tokens.verify(token[:-1] + "x", ID) is None


def test_a_token_expires(tokens):
    token = tokens.issue("acme", ID)
    tokens.now[0] += internal.TOKEN_TTL_S + 2
    assert tokens.verify(token, ID) is None


def test_a_token_of_another_deployment_is_refused(tokens):
    other = internal.InternalTokens(b"t" * 32, clock=lambda: tokens.now[0])
    assert tokens.verify(other.issue("acme", ID), ID) is None


@pytest.mark.parametrize("token", ["", "v1", "v1:x:y:z:w", "v2:1:" + ID + ":00:acme", "::::"])
def test_garbage_is_no_token(tokens, token):
    assert tokens.verify(token, ID) is None


def test_the_secret_file_is_created_once_private_and_shared(tmp_path):
    path = tmp_path / "secret"
    first = internal.load_or_create_secret(path)
    assert internal.load_or_create_secret(path) == first and len(first) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        internal.load_or_create_secret(path)


class Peer(InMemoryService):
    """A worker for which another worker owns every id (so every lookup is forwarded)."""

    def __init__(self, settings, owner_url):
        super().__init__(settings)
        self._owner = owner_url

    def owner_url(self, clip_id):
        return self._owner


async def test_a_forwarded_lookup_carries_a_token_never_the_key(aiohttp_client, tmp_path):
    config = Settings(
        api_keys_file=tmp_path / "keys.json",
        internal_secret_file=tmp_path / "secret",
        upload_dir=tmp_path / "uploads",
        media_roots=(tmp_path / "media",),
    )
    key = add_key(config.api_keys_file, "acme")
    seen = []

    owner_service = InMemoryService(config)
    owner_service.results[ID] = result_from_json({**EXAMPLE, "id": ID, "tenant": "acme"})
    owner_app = web.Application()
    install(owner_app, owner_service, config)

    @web.middleware
    async def spy(request, handler):
        seen.append(dict(request.headers))
        return await handler(request)

    owner_app.middlewares.insert(0, spy)
    owner = await aiohttp_client(owner_app)

    front_service = Peer(config, str(owner.make_url("")).rstrip("/"))
    front_app = web.Application()
    install(front_app, front_service, config)
    front = await aiohttp_client(front_app)
    front_service.http = front.session

    response = await front.get(f"/api/result/{ID}", headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200 and (await response.json())["id"] == ID
    (headers,) = seen
    assert key not in str(headers) and "Authorization" not in headers
    assert internal.HEADER in headers

    # The token opens that one result, not another id, and no POST.
    token = {internal.HEADER: headers[internal.HEADER]}
    assert (await owner.get(f"/api/result/{ID}", headers=token)).status == 200
    assert (await owner.get(f"/api/result/{OTHER_ID}", headers=token)).status == 401
    assert (await owner.post("/api/classify", headers=token)).status == 401
