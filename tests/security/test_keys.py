"""API keys as an attacker sees them: the key file, and whatever bytes a client puts in the key
headers of a request to the real aiohttp app (raw HTTP over a socket, so that bytes no HTTP
client would send, such as invalid UTF-8, reach the server as they are).

The server's own HTTP parser refuses some bytes (controls, over-long lines) with a plain 400
before the app sees the request; every value it lets through must give a JSON 401 (or pass with a
valid key). Nothing may give a 5xx.
"""

import asyncio
import hashlib
import json
import re
import socket
import threading
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.auth import KEYS, add_key, create_key
from api.views import install
from streams import cli
from streams.settings import Settings
from tests.test_api import InMemoryService

RESULT_URL = b"/api/result/" + b"a" * 24  # with a valid key: 404 not_found (no such result)
# What aiohttp's parser lets through in a header value (leading and trailing blanks stripped):
# tab, visible ASCII and space, and the bytes 0x80-0xff; anything else is its 400.
PASSES_PARSER = re.compile(rb"[\t\x20-\x7e\x80-\xff]{0,8000}")


class Server:
    def __init__(self, root: Path):
        self.settings = Settings(
            api_keys_file=root / "keys.json",
            upload_dir=root / "uploads",
            media_roots=(root / "media",),
        )
        self.key = add_key(self.settings.api_keys_file, "acme")
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        install(app, InMemoryService(self.settings), self.settings)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def get(self, *header_lines: bytes) -> tuple[int, bytes]:
        """Status and body of a GET of RESULT_URL with these raw header lines."""
        request = b"GET " + RESULT_URL + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        request += b"".join(line + b"\r\n" for line in header_lines) + b"\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        response = b"".join(chunks)
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("keys-security"))
    yield server
    server.stop()


def assert_refused_or_parser_400(server, name: bytes, value: bytes):
    status, body = server.get(name + b": " + value)
    assert status < 500, (name, value, status, body)
    if PASSES_PARSER.fullmatch(value):
        assert status == 401, (name, value, status, body)
        assert json.loads(body)["error"] == "unauthorized"
    else:
        assert status in (400, 401), (name, value, status, body)


# --- the key file ---------------------------------------------------------------------------


def test_the_key_file_holds_no_key_or_secret(tmp_path, monkeypatch, capsys):
    path = tmp_path / "keys.json"
    keys = [add_key(path, "acme"), create_key(path, "globex").key]
    monkeypatch.setenv("CLIPGUARD_API_KEYS_FILE", str(path))
    assert cli.main(["keys", "add", "initech"]) == 0
    keys.append(capsys.readouterr().out.strip())
    raw = path.read_bytes()
    for key in keys:
        secret = key.split("_", 2)[2]
        assert key.encode() not in raw
        # not even a part of the secret long enough to matter
        assert not any(secret[i : i + 12].encode() in raw for i in range(len(secret) - 11))
    assert cli.main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    for key in keys:
        assert key.split("_", 2)[2] not in listed
        assert hashlib.sha256(key.encode()).hexdigest() not in listed


def test_no_one_but_the_owner_may_read_the_file(tmp_path):
    path = tmp_path / "keys.json"
    add_key(path, "acme")
    assert path.stat().st_mode & 0o077 == 0


# --- key headers ------------------------------------------------------------------------------


def test_the_valid_key_passes(server):
    for line in (
        b"Authorization: Bearer " + server.key.encode(),
        b"Authorization: bearer " + server.key.encode(),
        b"Authorization: BEARER \t  " + server.key.encode(),
        b"Authorization: Bearer\t" + server.key.encode(),
        b"X-API-Key: " + server.key.encode(),
    ):
        status, body = server.get(line)
        assert status == 404 and json.loads(body)["error"] == "not_found", (line, body)


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer \xff\xfe",
        b"Bearer \xe9t\xe9",  # latin-1
        b"Bearer \xed\xa0\x80",  # a UTF-8 encoded surrogate
        b"Bearer \xc3\xa9",  # valid UTF-8, not ASCII
        b"\x80",
        b"Bearer ",
        b"Bearer",
        b"bearer",
        b"Bearer    ",
        b"Bearer \t",
        b"Bearer a b",
        b"Bearer\x00",
        b"Bearer a\x00b",
        b"Bearer \x7f",
        b"Basic dXNlcjpwYXNz",
        b"Bearer " + b"a" * 201,
        b"Bearer cg_" + b"a" * 5000,
        b"Bearer " + b"\xff" * 7000,
        b"Bearer " + b"a" * 9000,  # over aiohttp's line limit: its 400
    ],
)
@pytest.mark.parametrize("name", [b"Authorization", b"X-API-Key"])
def test_odd_key_headers_are_401_json_never_500(server, name, value):
    assert_refused_or_parser_400(server, name, value)


def test_the_valid_key_with_extra_bytes_is_refused(server):
    key = server.key.encode()
    for value in (key + b"\xff", b"\xff" + key, key + b"x", key[:-1], key + b" " + key):
        assert_refused_or_parser_400(server, b"X-API-Key", value)
        assert_refused_or_parser_400(server, b"Authorization", b"Bearer " + value)


def test_a_key_header_with_non_ascii_bytes_refuses_the_request(server):
    """Junk in one key header and the valid key in the other: refused, not let through with
    bytes that the worker would fail on when it forwards the headers to another worker."""
    status, body = server.get(b"Authorization: Bearer \xff", b"X-API-Key: " + server.key.encode())
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    status, _ = server.get(
        b"Authorization: Basic dXNlcjpwYXNz", b"X-API-Key: " + server.key.encode()
    )
    assert status == 404  # an ASCII Authorization of another scheme does not hide X-API-Key


header_bytes = st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b)
header_values = st.one_of(
    header_bytes,
    header_bytes.map(lambda b: b"Bearer " + b),
    st.text(max_size=100).map(lambda t: b"Bearer " + t.encode("utf-8", "surrogatepass")),
    st.text(max_size=100).map(lambda t: t.encode("latin-1", "replace")),
).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from([b"Authorization", b"X-API-Key"]), value=header_values)
def test_any_key_header_bytes_are_never_a_500(server, name, value):
    assert_refused_or_parser_400(server, name, value)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=header_values, second=header_values)
def test_any_pair_of_key_headers_is_never_a_500(server, first, second):
    status, body = server.get(b"Authorization: " + first, b"X-API-Key: " + second)
    assert status < 500, (first, second, status, body)
    if status != 400:
        assert status == 401 and json.loads(body)["error"] == "unauthorized"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.one_of(st.text(max_size=300), st.binary(max_size=50), st.none(), st.integers()))
def test_tenant_of_anything_is_none_never_an_exception(server, key):
    assert server.runner.app[KEYS].tenant_of(key) is None
