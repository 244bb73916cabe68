"""Get a clip's bytes onto local disk: `file://` under the media roots, or `http(s)://`.

Both paths are attack surface (a request names the URI), so the rules are strict:
- `file://`: only files under `settings.media_roots`, after resolving symlinks; a `..` segment
  is refused outright; a file outside the roots gets SOURCE_FORBIDDEN whether it exists or not,
  so requests cannot probe the disk.
- `http(s)://`: every URL (the first and each redirect's Location) is parsed with yarl, as
  aiohttp parses it, and refused unless its host is written in plain ASCII (a name, a canonical
  a.b.c.d or a bracketed IPv6 literal: full-width digits, circled digits, 2130706433, 0x7f.1,
  0177.0.0.1 are not), carries no user:password@, and, when it is an IP literal, is public.
  Names are checked when the connection is made (a resolver that refuses loopback, private,
  link-local, multicast and reserved answers), so a DNS answer that changes between check and
  use changes nothing; and the connector checks every address it connects to, literal or
  resolved, before and after connecting. `settings.http_allow_hosts` lifts the check for named
  hosts or addresses (an in-house camera server, tests). Redirects are followed by hand, at most
  MAX_REDIRECTS, each hop checked again. The size cap holds for Content-Length and for the
  bytes actually received.
- Messages (`error_msg`) show scheme://host/path of the URL as given, never its query or
  user:password@, never a resolved address, never why a connection failed (refused, reset and
  timed out read the same): the log has the detail.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_proto import ResponseHandler
from yarl import URL

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
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError as exc:  # an unclosed [ in the authority, say
        raise ClipError(ErrorCode.SOURCE_FORBIDDEN, f"{_short(uri)}: not a valid URI") from exc
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

_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_FORBIDDEN = "this address is not allowed (only public addresses and CLIPGUARD_HTTP_ALLOW_HOSTS)"
# What a host may look like, as written in the URL: ASCII only (no [a-z] under IGNORECASE, no \d:
# both match non-ASCII characters), so nothing is left for a parser to normalise.
_NAME_HOST = re.compile(r"[A-Za-z0-9.-]+", re.ASCII)
_IPV6_HOST = re.compile(r"\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]", re.ASCII)
_PORT = re.compile(r"[0-9]{0,5}", re.ASCII)
# WHATWG's "ends in a number": a host whose last label is decimal or 0x-hex is an IPv4 attempt.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# IPv6 ranges that carry an IPv4 address a gateway may forward to (NAT64, RFC 6052 / 8215).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class _Blocked(Exception):
    """A resolver answer or a connection's peer is an address the fetch may not reach."""


def blocked_address(address: str) -> bool:
    """True for addresses a fetch may not reach: anything that is not plainly public.

    IPv6 forms that embed an IPv4 address (mapped, 6to4, NAT64) are judged by that address too.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            candidates = [ip.ipv4_mapped]
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if any(ip in net for net in _NAT64):
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return any(
        not one.is_global
        or one.is_multicast
        or one.is_reserved
        or one.is_loopback
        or one.is_link_local
        or one.is_private
        or one.is_unspecified
        for one in candidates
    )


def _normal_host(host: str) -> str:
    """One spelling per allow-list entry and per address: IP literals compressed, names lowered."""
    bare = host.strip().lower()
    try:
        return str(ipaddress.ip_address(bare.removeprefix("[").removesuffix("]")))
    except ValueError:
        return bare


def _allowed(host: str | None, address: str | None, allow: frozenset[str]) -> bool:
    return (host is not None and _normal_host(host) in allow) or (
        address is not None and _normal_host(address) in allow
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
        if not _allowed(host, None, self._allow):
            for answer in answers:
                if not _allowed(None, answer["host"], self._allow) and blocked_address(
                    answer["host"]
                ):
                    raise _Blocked(f"{host} resolves to {answer['host']}")
        return answers

    async def close(self) -> None:
        await self._inner.close()


class _CheckingConnector(aiohttp.TCPConnector):
    """The last word: checks the addresses a connection is made to, literal hosts included.

    aiohttp hands IP literals straight to the socket without asking the resolver, so the
    resolver alone does not see them. Every address is checked before a socket connects to it,
    and the peer of the connected socket once more, whatever the URL checks before decided.
    """

    def __init__(self, allow: frozenset[str]) -> None:
        super().__init__(resolver=_CheckingResolver(allow), use_dns_cache=False)
        self._allow = allow

    async def _wrap_create_connection(
        self, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        host = _request_host(kwargs.get("req"))
        self._check_before(host, kwargs.get("addr_infos"))
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        try:
            self._check_after(host, transport)
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    def _check_before(self, host: str | None, addr_infos: object) -> None:
        if not isinstance(addr_infos, list):
            return  # an aiohttp without addr_infos: the peer check below still holds
        for info in addr_infos:
            self._check_peer(host, str(info[4][0]))

    def _check_after(self, host: str | None, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not peer:
            raise _Blocked(f"{host}: the connection has no peer address")
        self._check_peer(host, str(peer[0]))

    def _check_peer(self, host: str | None, address: str) -> None:
        if not _allowed(host, address, self._allow) and blocked_address(address):
            raise _Blocked(f"{host} connects to {address}")


if not callable(getattr(aiohttp.TCPConnector, "_wrap_create_connection", None)):
    # The connect-time check hooks this method; without it the check would silently vanish.
    raise ImportError(
        "aiohttp.TCPConnector._wrap_create_connection is gone: fix _CheckingConnector"
    )


def _request_host(req: object) -> str | None:
    url = getattr(req, "url", None)
    return url.raw_host if isinstance(url, URL) else None


class _Refused(Exception):
    """A URL refused before any connection: the reason (safe to show) and the detail (for logs)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _host_blocked(host: str, allow: frozenset[str]) -> bool:
    """True when `host` (yarl's form) may not be reached whatever it resolves to.

    That is a blocked IP literal, or a localhost name (RFC 6761: loopback by definition,
    whatever the resolver of the day says). Other names: the resolver and the connector decide.
    """
    if _allowed(host, None, allow):
        return False
    try:
        return blocked_address(host)
    except ValueError:
        name = host.rstrip(".")
        return name == "localhost" or name.endswith(".localhost")


def _check_url(url: str, allow: frozenset[str]) -> URL:
    """Parses `url` as aiohttp will (yarl) and refuses what may not be fetched.

    The host as written must be plain ASCII, and yarl must read the same host and port as
    urlsplit does, so that the host checked here is the one connected to.
    """
    if _CONTROL.search(url):
        raise _Refused("not a valid http(s) URL", "control characters in the URL")
    try:
        parts = urlsplit(url)
        parsed = URL(url)
        yarl_host = parsed.raw_host
        host = parsed.host  # IDNA-decoded: a label yarl cannot decode is refused here
        yarl_port = parsed.explicit_port
        yarl_user = parsed.raw_user or parsed.raw_password
    except (ValueError, TypeError) as exc:  # UnicodeError is a ValueError
        raise _Refused("not a valid http(s) URL", f"unparsable: {exc!r}") from exc
    if parts.scheme.lower() not in ("http", "https") or parsed.scheme not in ("http", "https"):
        raise _Refused("only http:// and https:// are accepted", f"scheme {parts.scheme!r}")
    netloc = parts.netloc
    if "@" in netloc or yarl_user:
        raise _Refused("user:password@ in the URL is not accepted", "userinfo in the URL")
    if netloc.startswith("["):
        raw_host, _, rest = netloc.partition("]")
        raw_host += "]"
        port = rest.removeprefix(":") if rest.startswith(":") else rest
        shape_ok = bool(_IPV6_HOST.fullmatch(raw_host)) and (not rest or rest.startswith(":"))
    else:
        raw_host, _, port = netloc.partition(":")
        shape_ok = bool(_NAME_HOST.fullmatch(raw_host))
    if not raw_host or not yarl_host or not host:
        raise _Refused("no host in the URL", "no host")
    if not shape_ok or not _PORT.fullmatch(port):
        raise _Refused(
            "the host must be a plain ASCII name or IP address", f"host as written {raw_host!r}"
        )
    if raw_host.startswith("["):
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            same = isinstance(ip, ipaddress.IPv6Address) and ip == ipaddress.ip_address(
                raw_host[1:-1].split("%", 1)[0]
            )
        except ValueError:
            same = False
        if not same:
            raise _Refused("not a valid http(s) URL", f"IPv6 literal {raw_host!r} / {host!r}")
    else:
        if yarl_host != raw_host.lower():
            raise _Refused(
                "the host must be a plain ASCII name or IP address",
                f"urlsplit reads {raw_host!r}, yarl {yarl_host!r}",
            )
        last = raw_host.rstrip(".").rsplit(".", 1)[-1]
        if _NUMERIC_LABEL.fullmatch(last):
            # An IPv4 attempt: only a.b.c.d in decimal without leading zeros; 2130706433,
            # 0x7f.1, 0177.0.0.1, 127.1 and 127.0.0.1. mean 127.0.0.1 to some parser or other.
            try:
                ipaddress.IPv4Address(raw_host)
            except ValueError:
                raise _Refused(
                    "the host is not a canonical IP address (use a.b.c.d)",
                    f"legacy IPv4 form {raw_host!r}",
                ) from None
    if (int(port) if port else None) != yarl_port:
        raise _Refused("not a valid http(s) URL", f"port {port!r} / {yarl_port!r}")
    if _host_blocked(host, allow):
        raise _Refused(_FORBIDDEN, f"host {host}")
    return parsed  # a public address, or a name: the resolver and the connector check it


async def _download(uri: str, settings: Settings, dest_dir: Path) -> Path:
    allow = frozenset(_normal_host(h) for h in settings.http_allow_hosts)
    shown = _short(uri)
    current = uri
    redirected = False
    target: Path | None = None
    started = False  # True once a 200 answer is being read: a timeout then is worth telling
    try:
        url = _check_url(uri, allow)
        timeout = aiohttp.ClientTimeout(
            total=settings.http_connect_timeout_s + settings.http_read_timeout_s,
            sock_connect=settings.http_connect_timeout_s,
            sock_read=settings.http_read_timeout_s,
        )
        dest_dir.mkdir(parents=True, exist_ok=True)
        suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
        target = dest_dir / f"{uuid.uuid4().hex}{suffix if suffix in VIDEO_SUFFIXES else '.bin'}"
        async with aiohttp.ClientSession(
            connector=_CheckingConnector(allow), timeout=timeout, auto_decompress=False
        ) as session:
            for attempt in range(MAX_REDIRECTS + 1):
                if attempt:
                    url = _check_url(current, allow)
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        redirected = True
                        current = _next_hop(uri, current, response.headers.get("Location"))
                        continue
                    started = response.status == 200
                    await _save(uri, response, target, settings)
                    return target
            raise ClipError(
                ErrorCode.FETCH_FAILED,
                f"{shown}: the download failed (more than {MAX_REDIRECTS} redirects)",
            )
    except (_Refused, _Blocked, aiohttp.ClientError, OSError, ValueError) as exc:
        # TimeoutError is an OSError; UnicodeError a ValueError.
        if target is not None:
            target.unlink(missing_ok=True)
        hop = current if redirected else None
        raise _failure(shown, hop, exc, started, settings, secrets=(uri, current)) from exc
    except BaseException:  # ClipError, a cancellation, a bug of ours
        if target is not None:
            target.unlink(missing_ok=True)
        raise


def _failure(
    shown: str,
    hop: str | None,
    exc: Exception,
    started: bool,
    settings: Settings,
    *,
    secrets: tuple[str, ...],
) -> ClipError:
    """The ClipError for `exc`: the message says what is safe to say, the log says the rest."""
    where = f" (redirect hop {_short(hop)})" if hop else ""
    detail = _redact(f"{type(exc).__name__}: {_describe(exc)}", secrets)
    if isinstance(exc, _Refused | _Blocked):
        reason = exc.reason if isinstance(exc, _Refused) else _FORBIDDEN
        log.warning("refused to fetch %s%s: %s", shown, where, detail)
        said = f"a redirect was not followed: {reason}" if hop else reason
        return ClipError(ErrorCode.SOURCE_FORBIDDEN, f"{shown}: {said}")
    log.info("could not fetch %s%s: %s", shown, where, detail)
    if started and isinstance(exc, TimeoutError):
        said = f"the download failed (timed out; {_timeouts(settings)})"
    elif started:
        said = "the download failed (the transfer broke off)"
    else:
        # Refused, reset, a connect timeout, no DNS answer: one message, so that nothing is
        # learnt about what listens where.
        said = "the download failed"
    return ClipError(ErrorCode.FETCH_FAILED, f"{shown}: {said}")


def _next_hop(uri: str, url: str, location: str | None) -> str:
    if not location:
        raise ClipError(
            ErrorCode.FETCH_FAILED,
            f"{_short(uri)}: the download failed (a redirect without a Location)",
        )
    try:
        hop = urljoin(url, location)
        scheme = urlsplit(hop).scheme.lower()
    except ValueError as exc:
        raise _Refused("not a valid http(s) URL", f"Location {location[:200]!r}") from exc
    if scheme not in ("http", "https"):
        raise _Refused("only http:// and https:// are accepted", f"redirect to {scheme}://")
    return hop


async def _save(
    uri: str, response: aiohttp.ClientResponse, target: Path, settings: Settings
) -> None:
    if response.status != 200:
        # The reason phrase is the server's free text: only the status is shown.
        raise ClipError(
            ErrorCode.FETCH_FAILED, f"{_short(uri)}: the download failed (HTTP {response.status})"
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


def _redact(text: str, urls: tuple[str, ...]) -> str:
    """`text` without the query strings and userinfo of `urls`, as written or as yarl encodes them.

    aiohttp puts whole URLs into some exception texts; those go to the log.
    """
    secrets: set[str] = set()
    for url in urls:
        try:
            parts = urlsplit(url)
            secrets.update((parts.query, parts.netloc.rpartition("@")[0]))
            parsed = URL(url)
            secrets.update((parsed.raw_query_string, parsed.query_string))
        except ValueError:
            secrets.add(url)  # unparsable: take no chance
    for secret in sorted(secrets - {""}, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def _short(uri: str) -> str:
    """scheme://host[:port]/path of `uri`, for messages and logs.

    Query strings of pre-signed URLs and user:password@ are credentials: never put them in a
    message or a log line. Control characters are replaced, so a URL cannot forge log lines.
    """
    try:
        parts = urlsplit(uri)
        host = parts.netloc.rsplit("@", 1)[-1]
        shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else uri
    except ValueError:  # e.g. an unclosed [: cut by hand
        shown = _USERINFO.sub(r"\1", re.split(r"[?#]", uri, maxsplit=1)[0])
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= 200 else shown[:200] + "..."
