"""SSRF through http(s) video URLs: every spelling of a non-public address is refused.

Each case runs fetch() with the default Settings (nothing allow-listed) against real aiohttp
servers on loopback that record every connection and request: a refusal counts only when the
code is SOURCE_FORBIDDEN *and* nothing reached the server, not even a TCP connection. The
messages must not tell what a name resolves to, nor whether a port is open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

import streams.stages.fetch as fetch_mod
from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages.fetch import fetch

ServerFactory = Callable[..., Awaitable[TestServer]]

DEFAULT = Settings(http_connect_timeout_s=2.0, http_read_timeout_s=2.0)
# Only the front server's address is allow-listed: what it redirects to must still be checked.
FRONT_ALLOWED = Settings(
    http_allow_hosts=("127.0.0.1",), http_connect_timeout_s=2.0, http_read_timeout_s=2.0
)
# Address texts a message may show only when the user typed them.
ADDRESS_TEXTS = ("127.0.0.1", "127.0.0.2", "::1", "7f00", "2130706433", "localhost")


@dataclass
class Victim:
    """An aiohttp server that answers anything with a tiny "clip" and records who came."""

    server: TestServer
    requests: list[str] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def untouched(self) -> bool:
        return not self.requests and not self.connections

    def seen(self) -> str:
        return f"{len(self.connections)} connection(s), requests {self.requests}"


async def start_victim(factory: ServerFactory, host: str) -> Victim:
    victim: Victim

    async def anything(request: web.Request) -> web.StreamResponse:
        victim.requests.append(request.path_qs)
        if request.path == "/redirect":
            # Not web.HTTPFound: that normalises the Location with yarl, a hostile server won't.
            return web.Response(status=302, headers={"Location": request.query["to"]})
        return web.Response(body=b"\0" * 64, content_type="video/mp4")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await factory(app, host=host)
    victim = Victim(server)
    manager = server.runner.server
    assert manager is not None
    original = manager.connection_made

    def counting(handler: Any, transport: asyncio.Transport) -> None:
        victim.connections.append(transport.get_extra_info("peername"))
        original(handler, transport)

    manager.connection_made = counting  # type: ignore[method-assign]
    return victim


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
async def victim(aiohttp_server: ServerFactory) -> Victim:
    return await start_victim(aiohttp_server, "127.0.0.1")


@pytest.fixture
async def victim2(aiohttp_server: ServerFactory) -> Victim:
    """A second loopback server, on 127.0.0.2: not allow-listed even in FRONT_ALLOWED."""
    return await start_victim(aiohttp_server, "127.0.0.2")


@pytest.fixture
async def victim6(aiohttp_server: ServerFactory) -> Victim:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    return await start_victim(aiohttp_server, "::1")


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Names answered from this dict instead of DNS (what a hostile DNS server could say)."""
    answers: dict[str, list[str]] = {}
    real = aiohttp.ThreadedResolver.resolve

    async def resolve(
        self: aiohttp.ThreadedResolver,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[Any]:
        if host not in answers:
            return await real(self, host, port, family)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in answers[host]
        ]

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", resolve)
    yield answers


async def refused(uri: str, settings: Settings, tmp_path: Path) -> ClipError:
    try:
        got = await fetch(uri, settings, tmp_path / "dl")
    except ClipError as error:
        return error
    pytest.fail(f"{uri} was fetched: {got}")


def assert_safe_message(message: str, typed: str) -> None:
    lowered = message.lower()
    assert "refused" not in lowered, message
    assert "connection" not in lowered, message
    for text in ADDRESS_TEXTS:
        if text in message:
            assert text in typed.split("?", 1)[0], f"{text!r} in {message!r}"
    assert "?" not in message.split("://", 1)[-1], message


# --- the first URL ------------------------------------------------------------------------------

LOOPBACK_FORMS = [
    "http://１２７.０.０.１:{port}/a.mp4",  # full-width digits
    "http://127．0．0．1:{port}/a.mp4",  # full-width dots
    "http://127。0。0。1:{port}/a.mp4",  # ideographic full stops
    "http://①②⑦.0.0.1:{port}/a.mp4",  # circled digits
    "http://ｌｏｃａｌｈｏｓｔ:{port}/a.mp4",  # full-width letters
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{port}/a.mp4",  # circled letters
    "http://127.0.0.1:{port}/a.mp4",
    "http://127.0.0.1.:{port}/a.mp4",
    "http://2130706433:{port}/a.mp4",  # decimal
    "http://0x7f000001:{port}/a.mp4",  # hex
    "http://0x7f.0.0.1:{port}/a.mp4",
    "http://0177.0.0.1:{port}/a.mp4",  # octal
    "http://127.1:{port}/a.mp4",
    "http://0.0.0.0:{port}/a.mp4",  # reaches loopback on Linux
    "http://0:{port}/a.mp4",
    "http://[::ffff:127.0.0.1]:{port}/a.mp4",  # IPv4-mapped IPv6
    "http://[0:0:0:0:0:ffff:7f00:1]:{port}/a.mp4",
    "http://user:pw@127.0.0.1:{port}/a.mp4",
    "http://127.0.0.1:pw@cams.example.com:{port}/a.mp4",
    "http://localhost:{port}/a.mp4",
    "http://LOCALHOST:{port}/a.mp4",
    "http://localhost.:{port}/a.mp4",
    "http://xn--localhost-.example:{port}/",  # IDNA that does not round-trip
    "http://%31%32%37.0.0.1:{port}/a.mp4",  # percent-encoded host
    "http://127.0.0.1:{port}\\@cams.example.com/a.mp4",  # parsers disagree on the host
    "http://127.0.0.1:８０/a.mp4",  # full-width port
]


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
async def test_loopback_spellings_are_refused_before_connecting(
    victim: Victim, tmp_path: Path, form: str
) -> None:
    uri = form.format(port=victim.port)
    error = await refused(uri, DEFAULT, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN, str(error)
    assert victim.untouched(), victim.seen()
    assert_safe_message(str(error), uri)


@pytest.mark.parametrize("form", ["http://[::1]:{port}/a.mp4", "http://[0::1]:{port}/a.mp4"])
async def test_ipv6_loopback_is_refused(victim6: Victim, tmp_path: Path, form: str) -> None:
    uri = form.format(port=victim6.port)
    error = await refused(uri, DEFAULT, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert victim6.untouched(), victim6.seen()
    assert_safe_message(str(error), uri)


@pytest.mark.parametrize(
    "answers",
    [["127.0.0.1"], ["8.8.8.8", "127.0.0.1"], ["::ffff:127.0.0.1"], ["0.0.0.0"]],
    ids=["loopback", "one-of-two", "mapped", "unspecified"],
)
async def test_a_public_looking_name_resolving_to_loopback_is_refused(
    victim: Victim, tmp_path: Path, fake_dns: dict[str, list[str]], answers: list[str]
) -> None:
    fake_dns["cams.example.com"] = answers
    uri = f"http://cams.example.com:{victim.port}/a.mp4"
    error = await refused(uri, DEFAULT, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert victim.untouched(), victim.seen()
    assert_safe_message(str(error), uri)


async def test_the_message_shows_neither_query_nor_credentials(
    victim: Victim, tmp_path: Path
) -> None:
    uri = f"http://cam:hunter2@127.0.0.1:{victim.port}/a.mp4?X-Amz-Signature=topsecret"
    error = await refused(uri, DEFAULT, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert str(error).startswith(f"http://127.0.0.1:{victim.port}/a.mp4: ")
    for secret in ("hunter2", "cam:", "topsecret", "Signature"):
        assert secret not in str(error)
    assert victim.untouched()


async def test_an_allow_listed_address_is_fetched(victim: Victim, tmp_path: Path) -> None:
    # The recorder works: an allowed fetch is seen by the server.
    got = await fetch(f"http://127.0.0.1:{victim.port}/a.mp4", FRONT_ALLOWED, tmp_path)
    assert got.filesize == 64
    assert victim.requests == ["/a.mp4"]
    assert victim.connections


# --- every redirect hop -------------------------------------------------------------------------

# The front server (127.0.0.1, allow-listed) redirects to these. {port} is the front server itself
# (its /target must never be asked for: these spell 127.0.0.1 in forms that must be refused even
# though 127.0.0.1 is allowed), {port2} the server on 127.0.0.2 (not allow-listed).
HOPS = [
    "http://１２７.０.０.１:{port}/target",
    "http://127．0．0．1:{port}/target",
    "http://①②⑦.0.0.1:{port}/target",
    "//１２７.０.０.１:{port}/target",  # scheme-relative
    "http://2130706433:{port}/target",
    "http://127.1:{port}/target",
    "http://user:pw@127.0.0.1:{port}/target",
    "http://127.0.0.2:{port2}/target",
    "http://１２７.０.０.２:{port2}/target",
    "http://2130706434:{port2}/target",
    "http://127.0.2:{port2}/target",
    "http://[::ffff:127.0.0.2]:{port2}/target",
    "http://cams.example.com:{port2}/target",  # resolves to 127.0.0.2
]


@pytest.mark.parametrize("hop", HOPS)
async def test_each_redirect_hop_is_checked(
    victim: Victim,
    victim2: Victim,
    tmp_path: Path,
    fake_dns: dict[str, list[str]],
    hop: str,
) -> None:
    fake_dns["cams.example.com"] = ["127.0.0.2"]
    target = hop.format(port=victim.port, port2=victim2.port)
    front = f"http://127.0.0.1:{victim.port}/redirect"
    error = await refused(str(URL(front).with_query(to=target)), FRONT_ALLOWED, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN, str(error)
    assert [path.split("?")[0] for path in victim.requests] == ["/redirect"], victim.seen()
    assert victim2.untouched(), victim2.seen()
    assert str(error).startswith(f"{front}: a redirect was not followed: ")
    assert_safe_message(str(error), front)


# --- the connector, when every check before it missed --------------------------------------------


@pytest.fixture
def no_url_or_dns_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the URL's literal-address check and the resolver's check off."""

    async def plain_resolve(
        self: Any, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        return await self._inner.resolve(host, port, family)  # type: ignore[no-any-return]

    monkeypatch.setattr(fetch_mod, "_host_blocked", lambda host, allow: False)
    monkeypatch.setattr(fetch_mod._CheckingResolver, "resolve", plain_resolve)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
@pytest.mark.usefixtures("no_url_or_dns_checks")
async def test_the_connector_refuses_before_connecting(
    victim: Victim, tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    caplog.set_level(logging.WARNING, logger="streams.stages.fetch")
    uri = f"http://{host}:{victim.port}/a.mp4"
    error = await refused(uri, DEFAULT, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert victim.untouched(), victim.seen()
    assert " connects to " in caplog.text  # the connector's word: no check before it saw it
    assert_safe_message(str(error), uri)


@pytest.mark.usefixtures("no_url_or_dns_checks")
async def test_the_connected_peer_is_checked_too(
    victim: Victim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streams.stages.fetch")
    monkeypatch.setattr(fetch_mod._CheckingConnector, "_check_before", lambda *args: None)
    error = await refused(f"http://127.0.0.1:{victim.port}/a.mp4", DEFAULT, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert "connects to 127.0.0.1" in caplog.text
    await asyncio.sleep(0.05)
    assert victim.requests == []  # connected, then closed before a byte of request was sent


# --- what a failure tells ------------------------------------------------------------------------


@pytest.fixture
async def silent_ports() -> AsyncIterator[dict[str, int]]:
    """A port nobody listens on, one that closes at once, one that never answers."""

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    closing = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    mute = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    try:
        yield {
            "closed": closed,
            "reset": closing.sockets[0].getsockname()[1],
            "mute": mute.sockets[0].getsockname()[1],
        }
    finally:
        for server in (closing, mute):
            server.close()


async def test_refused_reset_and_timeout_read_the_same(
    silent_ports: dict[str, int], tmp_path: Path
) -> None:
    settings = Settings(
        http_allow_hosts=("127.0.0.1",), http_connect_timeout_s=0.5, http_read_timeout_s=0.5
    )
    messages = {}
    for kind, port in silent_ports.items():
        error = await refused(f"http://127.0.0.1:{port}/a.mp4?sig=x", settings, tmp_path)
        assert error.code == ErrorCode.FETCH_FAILED, kind
        messages[kind] = str(error).replace(str(port), "PORT")
        assert_safe_message(str(error), f"http://127.0.0.1:{port}/a.mp4")
    assert set(messages.values()) == {"http://127.0.0.1:PORT/a.mp4: the download failed"}
