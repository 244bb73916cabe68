"""Get a clip's bytes onto local disk: `file://` under the media roots, or `http(s)://`.

Both paths are attack surface (a request names the URI), so the rules are strict:
- `file://`: only files under `settings.media_roots`, after resolving symlinks; a `..` segment
  is refused outright; a file outside the roots gets SOURCE_FORBIDDEN whether it exists or not,
  so requests cannot probe the disk.
- `http(s)://`: the host's addresses are checked when the connection is made (a resolver that
  refuses loopback, private, link-local, multicast and reserved addresses), so a DNS answer that
  changes between check and use changes nothing. `settings.http_allow_hosts` lifts the check for
  named hosts (an in-house camera server, tests). Redirects are followed by hand, at most
  MAX_REDIRECTS, each hop checked again. The size cap holds for Content-Length and for the
  bytes actually received.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages.decode import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Fetched:
    path: Path
    filesize: int


async def fetch(uri: str, settings: Settings, dest_dir: Path) -> Fetched:
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "file":
        path = _local_file(uri, settings)
    elif scheme in ("http", "https"):
        path = await _download(uri, settings, dest_dir)
    else:
        shown = f"{scheme}://" if scheme else "a bare path"
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN,
            f"{_short(uri)}: {shown} is not accepted; use file://, http:// or https://",
        )
    return Fetched(path=path, filesize=path.stat().st_size)


# --- file:// ----------------------------------------------------------------------------------


def _local_file(uri: str, settings: Settings) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN, f"{uri}: file:// URIs may not name a host ({parts.netloc})"
        )
    raw = unquote(parts.path)
    if "\x00" in raw or not raw.startswith("/") or ".." in PurePosixPath(raw).parts:
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN, f"{uri}: only plain absolute paths are accepted"
        )
    roots = [root.resolve() for root in settings.media_roots]
    # Decide on the path as written first: whether a file outside the roots exists is
    # nobody's business.
    written = Path(raw)
    if not any(_under(written, root) for root in (*roots, *settings.media_roots)):
        raise ClipError(ErrorCode.SOURCE_FORBIDDEN, f"{uri}: not under a media root")
    try:
        resolved = Path(raw).resolve(strict=True)
    except FileNotFoundError as exc:
        raise ClipError(ErrorCode.SOURCE_NOT_FOUND, f"{uri}: no such file") from exc
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ClipError(ErrorCode.SOURCE_NOT_FOUND, f"{uri}: cannot be read ({exc})") from exc
    if not any(_under(resolved, root) for root in roots):
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN, f"{uri}: a symlink leads outside the media roots"
        )
    if not resolved.is_file():
        raise ClipError(ErrorCode.SOURCE_NOT_FOUND, f"{uri}: not a regular file")
    size = resolved.stat().st_size
    if size > settings.max_clip_bytes:
        raise _too_large(uri, size, settings)
    return resolved


def _under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


# --- http(s):// -------------------------------------------------------------------------------


class _Blocked(Exception):
    pass


def blocked_address(address: str) -> bool:
    """True for addresses a fetch may not reach: anything that is not plainly public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
    )


class _CheckingResolver(AbstractResolver):
    """Resolves like aiohttp's default, then refuses the answer if any address is blocked."""

    def __init__(self, allow_hosts: frozenset[str]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow = allow_hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host.lower() not in self._allow:
            for answer in answers:
                if answer["host"] not in self._allow and blocked_address(answer["host"]):
                    raise _Blocked(f"{host} resolves to {answer['host']}")
        return answers

    async def close(self) -> None:
        await self._inner.close()


def _check_literal_host(url: str, allow: frozenset[str]) -> None:
    """aiohttp skips the resolver for IP literals, so those are checked here."""
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        raise ClipError(ErrorCode.SOURCE_FORBIDDEN, f"{_short(url)}: no host in the URL")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return  # a name: the resolver checks it at connect time
    if host not in allow and blocked_address(host):
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN,
            f"{_short(url)}: address {host} is not public and not in CLIPGUARD_HTTP_ALLOW_HOSTS",
        )


async def _download(uri: str, settings: Settings, dest_dir: Path) -> Path:
    allow = frozenset(h.lower() for h in settings.http_allow_hosts)
    timeout = aiohttp.ClientTimeout(
        total=settings.http_connect_timeout_s + settings.http_read_timeout_s,
        sock_connect=settings.http_connect_timeout_s,
        sock_read=settings.http_read_timeout_s,
    )
    connector = aiohttp.TCPConnector(resolver=_CheckingResolver(allow), use_dns_cache=False)
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
    target = dest_dir / f"{uuid.uuid4().hex}{suffix if suffix in VIDEO_SUFFIXES else '.bin'}"
    url = uri
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            for _ in range(MAX_REDIRECTS + 1):
                _check_literal_host(url, allow)
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        url = _next_hop(uri, url, response.headers.get("Location"))
                        continue
                    await _save(uri, response, target, settings)
                    return target
            raise ClipError(
                ErrorCode.FETCH_FAILED, f"{_short(uri)}: more than {MAX_REDIRECTS} redirects"
            )
    except _Blocked as exc:
        target.unlink(missing_ok=True)
        log.warning("refused to fetch %s: %s", _short(uri), exc)
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN,
            f"{_short(uri)}: {exc}, which is not public and not in CLIPGUARD_HTTP_ALLOW_HOSTS",
        ) from exc
    except ClipError:
        target.unlink(missing_ok=True)
        raise
    except TimeoutError as exc:
        target.unlink(missing_ok=True)
        raise ClipError(
            ErrorCode.FETCH_FAILED, f"{_short(uri)}: timed out ({_timeouts(settings)})"
        ) from exc
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        raise ClipError(ErrorCode.FETCH_FAILED, f"{_short(uri)}: {_describe(exc)}") from exc


def _next_hop(uri: str, url: str, location: str | None) -> str:
    if not location:
        raise ClipError(ErrorCode.FETCH_FAILED, f"{_short(uri)}: redirect without a Location")
    hop = urljoin(url, location)
    if urlsplit(hop).scheme.lower() not in ("http", "https"):
        raise ClipError(
            ErrorCode.SOURCE_FORBIDDEN, f"{_short(uri)}: redirected to {_short(hop)}, not http(s)"
        )
    return hop


async def _save(
    uri: str, response: aiohttp.ClientResponse, target: Path, settings: Settings
) -> None:
    if response.status != 200:
        raise ClipError(
            ErrorCode.FETCH_FAILED,
            f"{_short(uri)}: the server answered HTTP {response.status} {response.reason or ''}".rstrip(),
        )
    limit = settings.max_clip_bytes
    if response.content_length is not None and response.content_length > limit:
        raise _too_large(uri, response.content_length, settings)
    received = 0
    with target.open("wb") as out:
        async for chunk in response.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if received > limit:
                raise _too_large(uri, received, settings, at_least=True)
            # Local disk writes of 256 KB: short enough not to need a thread.
            out.write(chunk)


def _too_large(uri: str, size: int, settings: Settings, *, at_least: bool = False) -> ClipError:
    more = "more than " if at_least else ""
    return ClipError(
        ErrorCode.SOURCE_TOO_LARGE,
        f"{_short(uri)}: {more}{size:,} bytes is over the limit of {settings.max_clip_bytes:,} bytes",
    )


def _timeouts(settings: Settings) -> str:
    return f"connect {settings.http_connect_timeout_s:g} s, read {settings.http_read_timeout_s:g} s"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _short(uri: str) -> str:
    # Query strings of pre-signed URLs and user:password@ are credentials: never put them in
    # a message or a log line.
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else uri
    return shown if len(shown) <= 200 else shown[:200] + "..."
