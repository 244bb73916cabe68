"""The in-process limit: the same clips fetched, decoded and classified in a plain loop.

No Kafka, no Avro, no HTTP, no process pool: the stages of streams/stages/ called one after
the other, as `classify()` calls them (`ModelPack.analyse`, `motion_stats`, `aggregate`).
Two loops:
- sequential: one process, the worker's own settings (inference threads included); it gives
  the per-stage costs and the unloaded time of each clip;
- parallel: one plain loop per usable core (inference_threads=1 each), started together;
  on a machine where one loop cannot keep every core busy this is the higher ceiling.
The limit a pipeline is judged against is the faster of the two.
JPEG encoding and decoding of the frames (the decoded topic's hand-off) is timed apart and
not counted in the limit: it exists only because the pipeline moves frames through Kafka.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.settings import Settings

CORE_STAGES = ("fetch", "decode", "analyse", "motion", "aggregate")
HANDOFF_STAGES = ("jpeg_encode", "jpeg_decode")


class _TimedSession:
    """Wraps an onnxruntime session and adds the wall time of each `run` to a sink."""

    def __init__(self, session: Any, role: str, sink: dict[str, float]) -> None:
        self._session = session
        self._role = role
        self._sink = sink

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._sink[self._role] += (time.perf_counter() - start) * 1000.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def time_models(pack: Any) -> dict[str, float] | None:
    """Per-model ms sink for `pack`, or None when the pack does not expose its sessions.

    ModelPack keeps its sessions in `_sessions` (a private detail): wrapping them is the only
    way to see each model's share without changing the pack, and the bench degrades to the
    analyse total when that detail changes.
    """
    sessions = getattr(pack, "_sessions", None)
    if not isinstance(sessions, dict):
        return None
    sink: dict[str, float] = defaultdict(float)
    for role, session in list(sessions.items()):
        if not isinstance(session, _TimedSession):
            sessions[role] = _TimedSession(session, role, sink)
    return sink


@dataclass
class ClipTiming:
    name: str
    frames: int
    ms: dict[str, float] = field(default_factory=dict)  # stage -> wall ms
    cpu_s: float = 0.0  # CPU seconds of the core stages (all threads of this process)
    error: str = ""

    @property
    def core_ms(self) -> float:
        return sum(self.ms.get(s, 0.0) for s in CORE_STAGES)


class Stages:
    """The pure stages, set up once (model pack, policy, an event loop for `fetch`)."""

    def __init__(self, settings: Settings, *, threads: int | None = None) -> None:
        from streams.stages.models import ModelPack
        from streams.stages.policy import load_policies

        self.settings = settings
        self.pack = ModelPack.load(settings.models_dir, threads or settings.inference_threads)
        self.model_ms = time_models(self.pack)
        self.policy = load_policies(settings.policy_file).for_tenant("bench")
        self.loop = asyncio.new_event_loop()
        self._scratch = tempfile.TemporaryDirectory(prefix="clipguard-bench-fetch-")

    def close(self) -> None:
        self.loop.close()
        self._scratch.cleanup()

    def run(self, path: Path, *, handoff: bool) -> ClipTiming:
        from streams.errors import ClipGuardError
        from streams.stages.classify import aggregate
        from streams.stages.decode import decode
        from streams.stages.fetch import fetch
        from streams.stages.frames import from_jpeg, to_jpeg
        from streams.stages.motion import motion_stats

        timing = ClipTiming(path.name, 0)
        models_before = dict(self.model_ms or {})
        cpu_start = time.process_time()
        try:
            with _stage(timing, "fetch"):
                fetched = self.loop.run_until_complete(
                    fetch(path.as_uri(), self.settings, Path(self._scratch.name))
                )
            with _stage(timing, "decode"):
                clip = decode(fetched.path, self.settings)
            timing.frames = len(clip.frames)
            with _stage(timing, "analyse"):
                evidence = self.pack.analyse(clip.frames)
            with _stage(timing, "motion"):
                motion = motion_stats(clip.frames)
            with _stage(timing, "aggregate"):
                aggregate(evidence, motion, self.policy)
        except ClipGuardError as exc:
            timing.error = f"{type(exc).__name__}: {exc}"
            return timing
        finally:
            timing.cpu_s = time.process_time() - cpu_start
        if self.model_ms is not None:
            for role, total in self.model_ms.items():
                timing.ms[f"model:{role}"] = total - models_before.get(role, 0.0)
        if handoff:
            with _stage(timing, "jpeg_encode"):
                jpegs = to_jpeg(clip.frames, self.settings.jpeg_quality)
            with _stage(timing, "jpeg_decode"):
                from_jpeg(jpegs)
            timing.ms["jpeg_kib"] = sum(len(j) for j in jpegs) / 1024
        return timing


@contextmanager
def _stage(timing: ClipTiming, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing.ms[name] = (time.perf_counter() - start) * 1000.0


def sequential(
    stages: Stages,
    clips: Sequence[Path],
    progress: Callable[[int], None],
) -> dict[str, Any]:
    """One plain loop over `clips` (after one warm-up clip): throughput and per-stage costs."""
    stages.run(clips[0], handoff=True)  # first inference allocates; not part of the limit
    timings = []
    for index, path in enumerate(clips, 1):
        timings.append(stages.run(path, handoff=True))
        progress(index)
    ok = [t for t in timings if not t.error]
    wall_s = sum(t.core_ms for t in ok) / 1000.0
    cpu_s = sum(t.cpu_s for t in ok)
    return {
        "clips": len(ok),
        "failed": [f"{t.name}: {t.error}" for t in timings if t.error],
        "threads": stages.settings.inference_threads,
        "wall_s": wall_s,
        "clips_per_s": len(ok) / wall_s if wall_s else float("nan"),
        "cpu_s_per_clip": cpu_s / len(ok) if ok else float("nan"),
        "frames_per_clip": statistics.fmean(t.frames for t in ok) if ok else float("nan"),
        "stage_ms": stage_summary(ok),
        "per_clip": [
            {"name": t.name, "frames": t.frames, "cpu_s": t.cpu_s, "ms": t.ms, "error": t.error}
            for t in timings
        ],
    }


def stage_summary(timings: Sequence[ClipTiming]) -> dict[str, dict[str, float]]:
    names: list[str] = []
    for t in timings:
        names.extend(n for n in t.ms if n not in names)
    out = {}
    for name in names:
        values = [t.ms[name] for t in timings if name in t.ms]
        out[name] = {"mean": statistics.fmean(values), "p50": statistics.median(values)}
    core = [t.core_ms for t in timings]
    if core:
        out["total (core stages)"] = {
            "mean": statistics.fmean(core),
            "p50": statistics.median(core),
        }
    return out


def clip_ms(result: Mapping[str, Any], name: str) -> list[float]:
    """Unloaded in-process times (core stages) of one clip, from a `sequential` result."""
    return [
        sum(c["ms"].get(s, 0.0) for s in CORE_STAGES)
        for c in result["per_clip"]
        if c["name"] == name and not c["error"]
    ]


# ---------------------------------------------------------------- one loop per core


def _parallel_child(
    settings: Settings,
    clips: list[Path],
    barrier: Any,
    results: Any,
) -> None:
    stages = Stages(settings, threads=1)
    try:
        stages.run(clips[0], handoff=False)
        barrier.wait(timeout=300)
        started = time.monotonic()
        cpu_start = time.process_time()
        done = 0
        for path in clips:
            if not stages.run(path, handoff=False).error:
                done += 1
            results.put(("tick", os.getpid(), 0.0, 0.0, 0))
        results.put(
            ("done", os.getpid(), started, time.monotonic(), done, time.process_time() - cpu_start)
        )
    finally:
        stages.close()


def parallel(
    settings: Settings,
    clips: Sequence[Path],
    processes: int,
    progress: Callable[[int], None],
    timeout_s: float,
) -> dict[str, Any]:
    """`processes` plain loops started together, clips dealt round-robin; clips/s over all."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    shares = [list(clips[i::processes]) for i in range(processes)]
    children = [
        context.Process(target=_parallel_child, args=(settings, share, barrier, results))
        for share in shares
        if share
    ]
    for child in children:
        child.start()
    finished = []
    ticks = 0
    deadline = time.monotonic() + timeout_s
    try:
        while len(finished) < len(children):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the parallel in-process loops took over {timeout_s:.0f} s")
            try:
                message = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [c for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a parallel in-process loop died (exit {dead[0].exitcode})"
                    ) from None
                continue
            if message[0] == "tick":
                ticks += 1
                progress(ticks)
            else:
                finished.append(message)
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
    start = min(m[2] for m in finished)
    end = max(m[3] for m in finished)
    done = sum(m[4] for m in finished)
    cpu = sum(m[5] for m in finished)
    return {
        "processes": len(children),
        "threads_each": 1,
        "clips": done,
        "wall_s": end - start,
        "clips_per_s": done / (end - start) if end > start else float("nan"),
        "cpu_s_per_clip": cpu / done if done else float("nan"),
    }
