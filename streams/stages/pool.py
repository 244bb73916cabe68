"""Run `decode` in child processes, so a decoder crash or hang costs one clip, not the worker.

FFmpeg is C: some damaged files are known to crash it (PyAV #2344), and Python threads would
not scale decoding past one core anyway. Each of the `decode_workers` slots is a one-process
`ProcessPoolExecutor`, so a crash or a kill only ever touches the clip that caused it; the
slot is then rebuilt and the next clip runs normally.

Children come from a forkserver, never `fork`: the parent runs Kafka clients and an asyncio
loop with threads, and forking a threaded process can copy a held lock into the child.

Each child gets a memory limit (RLIMIT_AS, `DECODE_MEMORY_BYTES` over the address space it
has when it starts), so a decompression bomb costs an error result, not the machine: running
out of it is LIMIT_EXCEEDED for that clip (or DECODER_CRASHED if FFmpeg dies of it), and the
child is replaced either way.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages.decode import OUT_OF_MEMORY, SampledClip, decode
from streams.stages.frames import to_jpeg

log = logging.getLogger(__name__)

DecodeFn = Callable[..., SampledClip]

# What crosses the process boundary back from a child: the clip, or the error as plain data
# (ClipError itself does not survive pickling: its constructor takes the code first), and
# whether the child should be replaced (it ran out of memory, or hit a bug of ours: its state
# is not to be trusted).
_Outcome = tuple[SampledClip | None, int, str, bool]

# The JPEG frames of one decoded clip, at most: the decoded topic takes 8 MiB messages
# (streams/topics.py MAX_MESSAGE_BYTES); the rest is room for the request (a VMS may send up to
# the requests topic's 1 MB), the specs and the timestamps. To become the setting
# `max_decoded_bytes`.
MAX_DECODED_BYTES = 6 * 1024 * 1024

# How much address space a decode child may add to what it has at start (RLIMIT_AS); 0: no
# limit. Measured growth (docs/decode.md): 1080p H.264 +0.35 GB with 3 decoder threads and
# +1.2 GB with 17 (each thread reserves a 64 MiB malloc arena and an 8 MiB stack, mostly never
# touched); 4096x4096 HEVC +1.6 GB with 17. The start size is not counted because it grows
# with the machine (OpenBLAS maps ~40 MB per core when numpy is imported). To become the
# setting `decode_memory_bytes`.
DECODE_MEMORY_BYTES = 3 * 1024 * 1024 * 1024


def decode_to_jpeg(path: Path, settings: Settings, *, videoname: str | None = None) -> SampledClip:
    """`decode`, then JPEG-encode the frames in the same child process.

    What the decoded topic needs crosses the process boundary: ~400 KB of JPEG for a 4 s clip
    instead of ~6.5 MB of pixels to pickle, and the encoding runs beside the decoder rather
    than in the worker's main process.
    """
    clip = decode(path, settings, videoname=videoname)
    start = time.perf_counter()
    jpegs = tuple(checked_jpeg(clip.frames, settings.jpeg_quality, clip.videoname))
    encode_ms = (time.perf_counter() - start) * 1000.0
    return replace(clip, frames=(), jpeg_frames=jpegs, encode_ms=encode_ms)


def checked_jpeg(frames: Iterable[np.ndarray], quality: int, name: str) -> list[bytes]:
    """`to_jpeg`, then LIMIT_EXCEEDED if the JPEG bytes would not fit a decoded-clip message.

    An error result instead of a message the broker refuses (the clip would get neither a
    result nor a dead letter).
    """
    jpegs = to_jpeg(frames, quality)
    total = sum(map(len, jpegs))
    if total > MAX_DECODED_BYTES:
        raise ClipError(
            ErrorCode.LIMIT_EXCEEDED,
            f"{name}: the sampled frames take {total:,} bytes, over the limit of "
            f"{MAX_DECODED_BYTES:,} bytes",
        )
    return jpegs


def _limit_memory(budget: int) -> None:
    """Child initializer: cap the address space at its size now plus `budget` bytes."""
    if budget <= 0:
        return
    try:
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * resource.getpagesize()
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + budget
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError) as exc:  # no /proc (not Linux), or a limit we may not set
        log.warning("decode child %d runs without a memory limit: %s", os.getpid(), exc)


def _decode_in_child(
    decode_fn: DecodeFn, path: Path, settings: Settings, videoname: str | None
) -> _Outcome:
    name = videoname or path.name
    try:
        return decode_fn(path, settings, videoname=videoname), ErrorCode.OK, "", False
    except ClipError as exc:
        # decode raises its out-of-memory LIMIT_EXCEEDED from the MemoryError (or EAGAIN).
        return None, exc.code, str(exc), isinstance(exc.__cause__, OUT_OF_MEMORY)
    except OUT_OF_MEMORY:  # outside decode (JPEG encoding, a test's decode_fn)
        message = f"{name}: the decoder ran out of its memory limit"
        return None, ErrorCode.LIMIT_EXCEEDED, message, True
    except Exception as exc:  # a bug of ours, reported as data rather than a lost message
        log.exception("decoding %s failed unexpectedly", name)
        return None, ErrorCode.INTERNAL, f"{name}: decoder bug: {exc!r}", True


@dataclass(eq=False)  # identity: each slot is one live process
class _Slot:
    executor: ProcessPoolExecutor
    pid: int

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.executor.shutdown(wait=False, cancel_futures=True)


class DecodePool:
    """`await pool.decode(path, settings, videoname)` runs `decode` in a child process.

    `decode_fn` replaces `decode` in the children; tests pass functions that crash or hang.
    It must be a module-level function (it is pickled by name). Each child gets the memory
    limit `DECODE_MEMORY_BYTES` as it is when the pool is built. `on_restart` is told why each
    child was replaced: "crashed", "hung" (killed at the timeout), "out_of_memory", "failed".
    """

    def __init__(
        self,
        settings: Settings,
        *,
        decode_fn: DecodeFn = decode,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._decode_fn = decode_fn
        self._on_restart = on_restart
        self._memory_budget = DECODE_MEMORY_BYTES
        self._size = max(1, settings.decode_workers)
        self._context = multiprocessing.get_context("forkserver")
        # Children start from a server that has already imported PyAV and numpy; this only
        # takes effect if this process has not started its forkserver yet.
        self._context.set_forkserver_preload(["streams.stages.decode"])
        self._idle: asyncio.Queue[_Slot | None] = asyncio.Queue()
        for _ in range(self._size):
            self._idle.put_nowait(None)  # started on first use
        self._slots: set[_Slot] = set()
        self._closed = False

    @property
    def size(self) -> int:
        """Decode slots (child processes, started on first use)."""
        return self._size

    @property
    def busy(self) -> int:
        """Slots decoding a clip now."""
        return self._size - self._idle.qsize()

    async def decode(
        self, path: Path, settings: Settings, videoname: str | None = None
    ) -> SampledClip:
        if self._closed:
            raise ClipError(ErrorCode.INTERNAL, "the decode pool is closed")
        name = videoname or path.name
        slot = await self._idle.get()
        try:
            slot = slot or await self._start_slot()
            outcome = await self._run(slot, path, settings, videoname)
            if outcome[3]:
                log.error("decoder process failed on %s (%s); restarting it", name, outcome[2])
                self._discard(slot)
                slot = None
                self._restarted(
                    "out_of_memory" if outcome[1] == ErrorCode.LIMIT_EXCEEDED else "failed"
                )
        except BrokenProcessPool as exc:
            if slot is not None:
                self._discard(slot)
            slot = None
            self._restarted("crashed")
            log.error("decoder process crashed on %s; restarting it", name)
            raise ClipError(
                ErrorCode.DECODER_CRASHED, f"{name}: the decoder process crashed on this file"
            ) from exc
        except TimeoutError as exc:
            if slot is not None:
                self._discard(slot)
            slot = None
            self._restarted("hung")
            log.error(
                "decoding %s took over %ss; killed its process", name, settings.decode_timeout_s
            )
            raise ClipError(
                ErrorCode.DECODE_TIMEOUT,
                f"{name}: decoding took longer than {settings.decode_timeout_s:g} s",
            ) from exc
        finally:
            self._idle.put_nowait(slot)
        clip, code, message, _ = outcome
        if clip is None:
            raise ClipError(ErrorCode(code), message)
        return clip

    async def _run(
        self, slot: _Slot, path: Path, settings: Settings, videoname: str | None
    ) -> _Outcome:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            slot.executor, _decode_in_child, self._decode_fn, path, settings, videoname
        )
        return await asyncio.wait_for(future, settings.decode_timeout_s)

    async def _start_slot(self) -> _Slot:
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_limit_memory,
            initargs=(self._memory_budget,),
        )
        # The child's pid is what lets a timeout kill exactly this child.
        pid = await asyncio.get_running_loop().run_in_executor(executor, os.getpid)
        slot = _Slot(executor, pid)
        self._slots.add(slot)
        return slot

    def _restarted(self, reason: str) -> None:
        if self._on_restart is not None:
            self._on_restart(reason)

    def _discard(self, slot: _Slot) -> None:
        self._slots.discard(slot)
        slot.kill()

    def close(self) -> None:
        """Stop every child now; clips still decoding get DECODER_CRASHED or are cancelled."""
        self._closed = True
        for slot in list(self._slots):
            self._discard(slot)
