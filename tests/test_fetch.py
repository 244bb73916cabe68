"""Fetching clips: file:// under the media roots, http(s) against real local aiohttp servers."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages.fetch import _redact, blocked_address, fetch

FORBIDDEN = "this address is not allowed (only public addresses and CLIPGUARD_HTTP_ALLOW_HOSTS)"
CLIP = Path(__file__).parent / "fixtures" / "clips" / "people_h264.mp4"
CLIP_BYTES = CLIP.read_bytes()

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def fetch_error(uri: str, settings: Settings, dest: Path) -> ClipError:
    with pytest.raises(ClipError) as info:
        await fetch(uri, settings, dest)
    return info.value


# --- file:// ----------------------------------------------------------------------------------


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Settings]:
    root = tmp_path / "media"
    (root / "cam1").mkdir(parents=True)
    (root / "cam1" / "alarm.mp4").write_bytes(CLIP_BYTES)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not for you")
    (root / "cam1" / "escape.mp4").symlink_to(outside)
    (root / "cam1" / "alias.mp4").symlink_to(root / "cam1" / "alarm.mp4")
    return root, Settings(media_roots=(root,))


async def test_file_under_a_root_is_used_in_place(
    media: tuple[Path, Settings], tmp_path: Path
) -> None:
    root, settings = media
    got = await fetch(f"file://{root}/cam1/alarm.mp4", settings, tmp_path / "dl")
    assert got.path == root / "cam1" / "alarm.mp4"
    assert got.filesize == len(CLIP_BYTES)
    assert not (tmp_path / "dl").exists()  # nothing copied


async def test_symlink_inside_the_roots_is_followed(
    media: tuple[Path, Settings], tmp_path: Path
) -> None:
    root, settings = media
    got = await fetch(f"file://{root}/cam1/alias.mp4", settings, tmp_path)
    assert got.path == root / "cam1" / "alarm.mp4"


async def test_percent_encoded_names(media: tuple[Path, Settings], tmp_path: Path) -> None:
    root, settings = media
    (root / "cam1" / "front door.mp4").write_bytes(CLIP_BYTES)
    got = await fetch(f"file://{root}/cam1/front%20door.mp4", settings, tmp_path)
    assert got.path.name == "front door.mp4"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("{root}/cam1/missing.mp4", ErrorCode.SOURCE_NOT_FOUND),
        ("{root}/cam1", ErrorCode.SOURCE_NOT_FOUND),  # a directory
        ("{tmp}/secret.mp4", ErrorCode.SOURCE_FORBIDDEN),
        ("{tmp}/no-such-file.mp4", ErrorCode.SOURCE_FORBIDDEN),  # outside: existence not told
        ("/etc/passwd", ErrorCode.SOURCE_FORBIDDEN),
        ("{root}/cam1/../../secret.mp4", ErrorCode.SOURCE_FORBIDDEN),
        ("{root}/cam1/%2e%2e/%2e%2e/secret.mp4", ErrorCode.SOURCE_FORBIDDEN),
        ("{root}/cam1/escape.mp4", ErrorCode.SOURCE_FORBIDDEN),
        ("{root}-other/x.mp4", ErrorCode.SOURCE_FORBIDDEN),  # a sibling sharing the prefix
    ],
)
async def test_file_refusals(
    media: tuple[Path, Settings], tmp_path: Path, path: str, code: ErrorCode
) -> None:
    root, settings = media
    uri = "file://" + path.format(root=root, tmp=tmp_path)
    error = await fetch_error(uri, settings, tmp_path)
    assert error.code == code
    assert uri in str(error)
    assert "not for you" not in str(error)


async def test_file_with_a_host_is_refused(media: tuple[Path, Settings], tmp_path: Path) -> None:
    root, settings = media
    error = await fetch_error(f"file://fileserver{root}/cam1/alarm.mp4", settings, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN


async def test_file_over_the_size_limit(media: tuple[Path, Settings], tmp_path: Path) -> None:
    root, _ = media
    settings = Settings(media_roots=(root,), max_clip_bytes=1000)
    error = await fetch_error(f"file://{root}/cam1/alarm.mp4", settings, tmp_path)
    assert error.code == ErrorCode.SOURCE_TOO_LARGE


@pytest.mark.parametrize(
    "uri", ["ftp://example.com/a.mp4", "/srv/media/a.mp4", "rtsp://cam/live", "data:,hello"]
)
async def test_other_schemes_are_forbidden(uri: str, tmp_path: Path) -> None:
    assert (await fetch_error(uri, Settings(), tmp_path)).code == ErrorCode.SOURCE_FORBIDDEN


# --- http(s):// -------------------------------------------------------------------------------


LOCAL = Settings(
    http_allow_hosts=("127.0.0.1",),
    http_connect_timeout_s=2.0,
    http_read_timeout_s=2.0,
)


def clip_app() -> web.Application:
    async def clip(request: web.Request) -> web.Response:
        return web.Response(body=CLIP_BYTES, content_type="video/mp4")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: the streamed count must hold
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"\0" * 65536)
        await response.write_eof()
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(30)
        return response

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()  # 990 bytes short
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/clip.mp4", clip)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/stall", stall)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/missing", missing)
    app.router.add_get("/loop", loop)
    return app


@pytest.fixture
async def server(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(clip_app(), host="127.0.0.1")


def url(server: TestServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}{path}"


async def test_http_download(server: TestServer, tmp_path: Path) -> None:
    got = await fetch(url(server, "/clip.mp4?sig=secret"), LOCAL, tmp_path / "dl")
    assert got.path.parent == tmp_path / "dl"
    assert got.path.suffix == ".mp4"
    assert got.filesize == len(CLIP_BYTES)
    assert got.path.read_bytes() == CLIP_BYTES


async def test_loopback_is_refused_without_the_allow_list(
    server: TestServer, tmp_path: Path
) -> None:
    error = await fetch_error(url(server, "/clip.mp4"), Settings(), tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert "127.0.0.1" in str(error)
    assert list(tmp_path.iterdir()) == []


async def test_a_name_resolving_to_loopback_is_refused(
    server: TestServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A name goes through the resolver check, at connect time. The message does not tell what
    # the name resolves to (that would map internal DNS); the log does.
    async def resolve(self: object, host: str, port: int = 0, family: int = 0) -> list[object]:
        flags = socket.AI_NUMERICHOST
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": flags}]  # fmt: skip

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", resolve)
    caplog.set_level(logging.WARNING, logger="streams.stages.fetch")
    uri = url(server, "/clip.mp4", host="cams.example.com")
    error = await fetch_error(uri, Settings(), tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert str(error) == f"{uri}: {FORBIDDEN}"
    assert "127.0.0.1" not in str(error)
    assert "cams.example.com resolves to 127.0.0.1" in caplog.text


async def test_localhost_is_refused_by_name(server: TestServer, tmp_path: Path) -> None:
    for host in ("localhost", "LocalHost.", "cam.localhost"):
        error = await fetch_error(url(server, "/clip.mp4", host=host), Settings(), tmp_path)
        assert error.code == ErrorCode.SOURCE_FORBIDDEN
        assert "127.0.0.1" not in str(error)


async def test_an_allowed_name_may_resolve_to_loopback(server: TestServer, tmp_path: Path) -> None:
    settings = Settings(http_allow_hosts=("LocalHost",))
    got = await fetch(url(server, "/clip.mp4", host="localhost"), settings, tmp_path)
    assert got.filesize == len(CLIP_BYTES)


async def test_the_query_string_never_appears_in_errors(server: TestServer, tmp_path: Path) -> None:
    error = await fetch_error(url(server, "/missing?X-Amz-Signature=topsecret"), LOCAL, tmp_path)
    assert error.code == ErrorCode.FETCH_FAILED
    assert str(error) == f"{url(server, '/missing')}: the download failed (HTTP 404)"
    assert "topsecret" not in str(error)


async def test_userinfo_is_refused_and_never_shown(server: TestServer, tmp_path: Path) -> None:
    error = await fetch_error(
        f"http://cam:hunter2@127.0.0.1:{server.port}/clip.mp4", LOCAL, tmp_path
    )
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert "hunter2" not in str(error)
    assert "cam:" not in str(error)


async def test_size_cap_from_content_length(server: TestServer, tmp_path: Path) -> None:
    settings = Settings(http_allow_hosts=("127.0.0.1",), max_clip_bytes=10_000)
    error = await fetch_error(url(server, "/clip.mp4"), settings, tmp_path)
    assert error.code == ErrorCode.SOURCE_TOO_LARGE
    assert list(tmp_path.iterdir()) == []


async def test_size_cap_on_the_streamed_bytes(server: TestServer, tmp_path: Path) -> None:
    settings = Settings(http_allow_hosts=("127.0.0.1",), max_clip_bytes=1_000_000)
    error = await fetch_error(url(server, "/chunked"), settings, tmp_path)
    assert error.code == ErrorCode.SOURCE_TOO_LARGE
    assert list(tmp_path.iterdir()) == []  # the partial download is gone


async def test_stalled_server_times_out(server: TestServer, tmp_path: Path) -> None:
    settings = Settings(http_allow_hosts=("127.0.0.1",), http_read_timeout_s=0.5)
    error = await fetch_error(url(server, "/stall"), settings, tmp_path)
    assert error.code == ErrorCode.FETCH_FAILED
    assert "timed out" in str(error)


async def test_a_transfer_that_breaks_off(server: TestServer, tmp_path: Path) -> None:
    error = await fetch_error(url(server, "/truncated"), LOCAL, tmp_path)
    assert error.code == ErrorCode.FETCH_FAILED
    assert (
        str(error) == f"{url(server, '/truncated')}: the download failed (the transfer broke off)"
    )
    assert list(tmp_path.iterdir()) == []


async def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await fetch_error(f"http://127.0.0.1:{port}/a.mp4", LOCAL, tmp_path)
    assert error.code == ErrorCode.FETCH_FAILED
    # Refused, reset and timed out read the same: the message says nothing about the port.
    assert str(error) == f"http://127.0.0.1:{port}/a.mp4: the download failed"


async def test_an_unresolvable_name_fails_with_the_same_message(tmp_path: Path) -> None:
    error = await fetch_error("http://no-such-host.invalid/a.mp4", LOCAL, tmp_path)
    assert error.code == ErrorCode.FETCH_FAILED
    assert str(error) == "http://no-such-host.invalid/a.mp4: the download failed"


async def test_redirect_to_an_allowed_host_is_followed(server: TestServer, tmp_path: Path) -> None:
    target = url(server, "/clip.mp4")
    got = await fetch(url(server, f"/redirect?to={target}"), LOCAL, tmp_path)
    assert got.filesize == len(CLIP_BYTES)


@pytest.mark.parametrize(
    "target",
    [
        "http://[::1]:{port}/clip.mp4",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.1/clip.mp4",
        "file:///etc/passwd",
    ],
)
async def test_redirect_to_a_blocked_address_is_refused(
    server: TestServer, tmp_path: Path, target: str
) -> None:
    hop = target.format(port=server.port)
    error = await fetch_error(url(server, f"/redirect?to={hop}"), LOCAL, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN


async def test_a_refused_redirect_says_so_without_echoing_it(
    server: TestServer, tmp_path: Path
) -> None:
    front = url(server, "/redirect")
    error = await fetch_error(f"{front}?to=file:///etc/passwd", LOCAL, tmp_path)
    assert error.code == ErrorCode.SOURCE_FORBIDDEN
    assert str(error) == (
        f"{front}: a redirect was not followed: only http:// and https:// are accepted"
    )
    error = await fetch_error(f"{front}?to=http://10.0.0.1/x.mp4", LOCAL, tmp_path)
    assert str(error) == f"{front}: a redirect was not followed: {FORBIDDEN}"


async def test_log_lines_carry_no_query_strings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.stages.fetch")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await fetch_error(f"http://127.0.0.1:{port}/a.mp4?sig=topsecret", LOCAL, tmp_path)
    assert f"127.0.0.1:{port}" in caplog.text  # the detail is in the log...
    assert "topsecret" not in caplog.text  # ...the credentials are not
    text = "InvalidURL: http://u:pw@h/a?sig=topsecret and http://h/a?sig=topsecret"
    assert "topsecret" not in _redact(text, ("http://u:pw@h/a?sig=topsecret",))
    assert "u:pw" not in _redact(text, ("http://u:pw@h/a?sig=topsecret",))


async def test_redirect_loop_stops(server: TestServer, tmp_path: Path) -> None:
    error = await fetch_error(url(server, "/loop"), LOCAL, tmp_path)
    assert error.code == ErrorCode.FETCH_FAILED
    assert "more than 3 redirects" in str(error)


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.10", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("240.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("::127.0.0.1", True),  # IPv4-compatible (deprecated)
        ("2002:7f00:1::", True),  # 6to4 around 127.0.0.1
        ("2002:a00:1::", True),  # 6to4 around 10.0.0.1
        ("64:ff9b::7f00:1", True),  # NAT64 around 127.0.0.1
        ("fe80::1%eth0", True),
        ("ff02::1", True),
        ("8.8.8.8", False),
        ("151.101.1.69", False),
        ("2a00:1450:4001:80b::200e", False),
    ],
)
def test_blocked_addresses(address: str, blocked: bool) -> None:
    assert blocked_address(address) is blocked
