"""`python -m bench.run [--quick]`: ClipGuard against its in-process limit, in one run.

1. the limit: the clips decoded and classified in a plain in-process loop (bench/limit.py);
2. the pipeline: the same clips as Kafka requests to one worker, at saturation and at paced
   loads of 25/50/90% of the limit;
3. the sync HTTP API at 1, 4 and 16 concurrent clients;
4. one worker against two, and the worker's memory.
The report goes to stdout, progress to stderr, the raw numbers to bench/out/ as JSON.
docs/performance.md explains every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import limit as limit_mod
from bench.load import Requester, ResultWatcher, outcome, sync_clients
from bench.progress import Progress, note
from bench.stats import (
    latency_row,
    memory_verdict,
    ratio,
    summarize,
    sync_verdict,
    table,
    throughput_verdict,
)
from devtools import kafka_acl
from devtools.cluster import WorkerProcess, free_ports, wait_ready, worker_env
from devtools.procs import cpu_seconds, load_average, machine_info, tree_cpu_seconds, tree_memory
from streams.settings import PROJECT_ROOT, Settings

OUT_DIR = PROJECT_ROOT / "bench" / "out"
FIXTURE_CLIPS = PROJECT_ROOT / "tests" / "fixtures" / "clips"
EVAL_CLIPS = PROJECT_ROOT / "eval" / "clips"
# The reference for the sync target: a 4-second 640x360 H.264 alarm clip.
REFERENCE_CLIP = FIXTURE_CLIPS / "people_h264.mp4"
QUICK_CLIPS = ("people_h264.mp4", "people_h265.mkv", "tree_h264.mp4", "vtest_scene_00s.mp4")
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm"}
LOAD_FRACTIONS = (0.25, 0.5, 0.9)
# A load average above this before or after the run means something else used the CPUs.
BUSY_LOAD = 0.5


@dataclass(frozen=True)
class Plan:
    mode: str
    reference_repeats: int  # extra unloaded in-process runs of REFERENCE_CLIP
    saturation_s: float  # a saturation burst holds about this many seconds of work at the limit
    load_s: float  # each paced load lasts about this long
    min_load_requests: int
    warmup_requests: int
    api: tuple[tuple[int, int], ...]  # (concurrent clients, requests each)

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls("quick", 3, 8.0, 6.0, 3, 4, ((1, 3), (4, 1), (16, 1)))
        return cls("full", 6, 30.0, 25.0, 6, 8, ((1, 10), (4, 3), (16, 1)))


def clip_set(quick: bool) -> list[Path]:
    """The real footage of the fixtures and the eval set (every video clip, once)."""
    if quick:
        found = [FIXTURE_CLIPS / n for n in QUICK_CLIPS if (FIXTURE_CLIPS / n).exists()]
        found += [EVAL_CLIPS / n for n in QUICK_CLIPS if (EVAL_CLIPS / n).exists()]
        return found
    clips = [p for p in sorted(FIXTURE_CLIPS.iterdir()) if p.suffix in VIDEO_SUFFIXES]
    if EVAL_CLIPS.is_dir():
        clips += [p for p in sorted(EVAL_CLIPS.iterdir()) if p.suffix in VIDEO_SUFFIXES]
    return clips


def prepare_media(workdir: Path, clips: list[Path]) -> list[Path]:
    media = workdir / "media"
    media.mkdir(parents=True)
    copies = []
    for clip in clips:
        target = media / clip.name
        shutil.copyfile(clip, target)
        copies.append(target)
    return copies


def cycle(items: list[Any], count: int) -> list[Any]:
    return [items[i % len(items)] for i in range(count)]


# ---------------------------------------------------------------- 1. the limit


def measure_limit(settings: Settings, clips: list[Path], plan: Plan) -> dict[str, Any]:
    note(f"in-process limit: {len(clips)} clips, model pack from {settings.models_dir}")
    stages = limit_mod.Stages(settings)
    try:
        with Progress("in-process loop (sequential)", len(clips)) as bar:
            sequential = limit_mod.sequential(stages, clips, bar)
        reference = next(c for c in clips if c.name == REFERENCE_CLIP.name)
        for _ in range(plan.reference_repeats):
            timing = stages.run(reference, handoff=False)
            sequential["per_clip"].append(
                {
                    "name": timing.name,
                    "frames": timing.frames,
                    "cpu_s": timing.cpu_s,
                    "ms": timing.ms,
                    "error": timing.error,
                    "reference_repeat": True,
                }
            )
    finally:
        stages.close()
    processes = settings_cores()
    shared = cycle(clips, math.ceil(len(clips) / processes) * processes)
    with Progress(f"in-process loops ({processes} in parallel)", len(shared)) as bar:
        parallel = limit_mod.parallel(settings, shared, processes, bar, timeout_s=600)
    reference_ms = limit_mod.clip_ms(sequential, REFERENCE_CLIP.name)
    best = max(sequential["clips_per_s"], parallel["clips_per_s"])
    return {
        "sequential": sequential,
        "parallel": parallel,
        "clips_per_s": best,
        "cpu_ceiling_clips_per_s": settings_cores() / sequential["cpu_s_per_clip"],
        "reference_clip": REFERENCE_CLIP.name,
        "reference_ms": reference_ms,
        "reference_ms_p50": statistics.median(reference_ms) if reference_ms else math.nan,
    }


def settings_cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- 2-4. the pipeline


class Deployment:
    """The broker and workers of this run; `close()` stops whatever was started."""

    def __init__(self, workdir: Path) -> None:
        from devtools.broker import Broker

        self.workdir = workdir
        port, controller_port = free_ports(2)
        self.broker = Broker(workdir / "kafka", port=port, controller_port=controller_port)
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.workers: list[WorkerProcess] = []
        self.bootstrap = ""
        self.client: dict[str, str] = {}

    def start_broker(self) -> None:
        self.bootstrap = self.broker.start()
        kafka_acl.prepare(self.broker, self.prefix, self.prefix)  # users and ACLs, as make run
        self.client = kafka_acl.aiokafka_options(self.broker)

    def broker_pid(self) -> int:
        try:
            return int(self.broker.pid_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    async def add_worker(self, timeout_s: float = 240) -> WorkerProcess:
        name = f"w{len(self.workers) + 1}"
        env = worker_env(
            self.bootstrap, self.prefix, self.workdir, name, kafka_acl.worker_settings(self.broker)
        )
        # The overload rows queue clips for minutes on purpose: a 60 s deadline would answer
        # them with errors and the bench would time errors, not clips.
        env["CLIPGUARD_CLIP_DEADLINE_S"] = "3600"
        worker = WorkerProcess(env, self.workdir / f"{name}.log")
        self.workers.append(worker)
        worker.start()
        took = await asyncio.to_thread(wait_ready, self.workers, timeout_s)
        note(f"worker {name} ready after {took:.1f} s ({worker.url}, pid {worker.pid})")
        worker.remember_children()
        return worker

    def close(self) -> None:
        for worker in reversed(self.workers):
            try:
                worker.stop()
            except Exception as exc:  # keep stopping the rest; the broker above all
                note(f"stopping worker {worker.url} failed: {exc!r}")
        try:
            self.broker.stop()
        except Exception as exc:
            note(f"stopping the broker failed: {exc!r}")


def memory_sample(worker: WorkerProcess, clips_done: int, label: str) -> dict[str, Any]:
    mem = tree_memory(worker.pid)
    return {"label": label, "clips_done": clips_done, **asdict(mem), "rss_mib": mem.rss_mib}


async def pipeline_phases(
    workdir: Path, clips: list[Path], plan: Plan, limit_cps: float, report: dict[str, Any]
) -> None:
    from api.auth import add_key

    deployment = Deployment(workdir)
    pipeline: dict[str, Any] = {}
    report["pipeline"] = pipeline
    watcher: ResultWatcher | None = None
    requester: Requester | None = None
    try:
        note("starting the Kafka broker")
        await asyncio.to_thread(deployment.start_broker)
        api_key = add_key(workdir / "keys.json", "bench")
        w1 = await deployment.add_worker()
        topic = f"{deployment.prefix}.requests"
        watcher = ResultWatcher(
            deployment.bootstrap, f"{deployment.prefix}.results", deployment.client
        )
        requester = Requester(deployment.bootstrap, topic, deployment.client)
        await watcher.start()
        await requester.start()
        uris = [c.as_uri() for c in clips]
        done = 0  # clips through worker 1 so far, for the memory samples

        async def burst(label: str, count: int, workers: list[WorkerProcess]) -> dict[str, Any]:
            assert requester is not None and watcher is not None
            cpu_before = [tree_cpu_seconds(w.pid) for w in workers]
            broker_before = cpu_seconds(deployment.broker_pid())
            with Progress(label, count) as bar:
                sent = await requester.burst(cycle(uris, count))
                await watcher.wait_for(list(sent), 90 + 4 * count / limit_cps, bar)
            result = outcome(sent, watcher.arrived)
            worker_cpu = sum(tree_cpu_seconds(w.pid) for w in workers) - sum(cpu_before)
            broker_cpu = cpu_seconds(deployment.broker_pid()) - broker_before
            results = max(1, result["results"])
            result["worker_cpu_s_per_clip"] = worker_cpu / results
            result["broker_cpu_s_per_clip"] = broker_cpu / results
            result["x_limit"] = ratio(result["clips_per_s"], limit_cps)
            return result

        pipeline["warmup"] = _brief(await burst("warm-up", plan.warmup_requests, [w1]))
        done += plan.warmup_requests
        memory = [memory_sample(w1, done, "after warm-up")]
        saturation_n = max(len(clips), round(limit_cps * plan.saturation_s))
        pipeline["saturation"] = [await burst("saturation, 1 worker", saturation_n, [w1])]
        done += saturation_n
        memory.append(memory_sample(w1, done, "after saturation #1"))

        loads = []
        for fraction in LOAD_FRACTIONS:
            rate = fraction * limit_cps
            count = max(plan.min_load_requests, round(rate * plan.load_s))
            with Progress(f"load {fraction:.0%} ({rate:.2f}/s) sending", count) as bar:
                sent = await requester.paced(cycle(uris, count), rate, bar)
            with Progress(f"load {fraction:.0%} draining", count) as bar:
                await watcher.wait_for(list(sent), 60 + 3 * count / limit_cps, bar)
            result = outcome(sent, watcher.arrived)
            result.update(fraction=fraction, offered_per_s=rate)
            loads.append(result)
            done += count
        pipeline["loads"] = loads

        api = []
        for clients, each in plan.api:
            with Progress(f"sync API, {clients} client(s)", clients * each) as bar:
                api.append(
                    await sync_clients(
                        w1.url,
                        api_key,
                        workdir / "media" / REFERENCE_CLIP.name,
                        clients,
                        each,
                        bar,
                        timeout_s=180,
                    )
                )
            done += clients * each
        report["api"] = api

        pipeline["saturation"].append(
            await burst("saturation, 1 worker (again)", saturation_n, [w1])
        )
        done += saturation_n
        memory.append(memory_sample(w1, done, "end of single-worker phases"))
        report["memory"] = memory

        note("starting a second worker (rebalance)")
        w2 = await deployment.add_worker()
        await burst("warm-up, 2 workers", plan.warmup_requests, [w1, w2])
        pipeline["two_workers"] = await burst("saturation, 2 workers", saturation_n, [w1, w2])
        report["memory_two_workers"] = [
            memory_sample(w, 0, f"worker {i} at the end") for i, w in enumerate((w1, w2), 1)
        ]
    finally:
        for client in (requester, watcher):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:
                    note(f"stopping a Kafka client failed: {exc!r}")
        note("stopping workers and broker")
        deployment.close()


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    dropped = ("latencies_ms", "outside_stages_ms", "worker_stage_ms")
    return {k: v for k, v in result.items() if k not in dropped}


# ---------------------------------------------------------------- the report


def render(report: Mapping[str, Any]) -> str:
    out: list[str] = []
    m = report["machine"]
    v = m["versions"]
    out.append(
        f"ClipGuard benchmark, {report['mode']} run, {m['date']}\n"
        f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores of {m['cores']}, "
        f"{m['memory_gib']} GiB\n"
        + "versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"\nclips: {report['clips']['count']} ({report['clips']['names_short']})"
    )
    busy = max(m["load_average_at_start"], m.get("load_average_at_end", 0.0))
    if busy > BUSY_LOAD:
        out.append(
            f"WARNING: the machine was busy (1-min load average up to {busy:.1f} on "
            f"{m['usable_cores']} cores): other processes shared the CPUs, numbers are skewed"
        )
    lim = report.get("limit")
    limit_cps = lim["clips_per_s"] if lim else math.nan
    if lim:
        seq, par = lim["sequential"], lim["parallel"]
        out.append("\n1. In-process limit (plain loop: no Kafka, no Avro, no HTTP)")
        out.append(
            table(
                ["loop", "clips", "clips/s", "CPU s/clip"],
                [
                    [
                        f"sequential, {seq['threads']} inference threads",
                        seq["clips"],
                        seq["clips_per_s"],
                        seq["cpu_s_per_clip"],
                    ],
                    [
                        f"{par['processes']} loops in parallel, 1 thread each",
                        par["clips"],
                        par["clips_per_s"],
                        par["cpu_s_per_clip"],
                    ],
                    ["limit (the faster)", "", limit_cps, ""],
                    [
                        "CPU ceiling (cores / CPU s per clip)",
                        "",
                        lim["cpu_ceiling_clips_per_s"],
                        "",
                    ],
                ],
                digits=2,
            )
        )
        out.append(f"mean sampled frames per clip: {seq['frames_per_clip']:.1f}")
        stages = seq["stage_ms"]
        rows = []
        for name in ("fetch", "decode", "analyse"):
            if name in stages:
                rows.append([name, stages[name]["mean"], stages[name]["p50"]])
        models = [n for n in stages if n.startswith("model:")]
        for name in models:
            rows.append([f"  {name}", stages[name]["mean"], stages[name]["p50"]])
        if models and "analyse" in stages:
            rest = stages["analyse"]["mean"] - sum(stages[n]["mean"] for n in models)
            rows.append(["  pre/post-processing (rest)", rest, ""])
        for name in ("motion", "aggregate", "total (core stages)"):
            if name in stages:
                rows.append([name, stages[name]["mean"], stages[name]["p50"]])
        for name in limit_mod.HANDOFF_STAGES:
            if name in stages:
                rows.append([f"{name} (hand-off only)", stages[name]["mean"], stages[name]["p50"]])
        out.append(table(["stage (ms per clip)", "mean", "p50"], rows))

    pipe = report.get("pipeline") or {}
    if pipe.get("saturation"):
        out.append("\n2. Pipeline, one worker (Kafka + Avro + Faust, real broker)")
        rows = []
        for i, run in enumerate(pipe["saturation"], 1):
            rows.append(
                [
                    f"saturation #{i}",
                    run["results"],
                    run["clips_per_s"],
                    run["x_limit"],
                    run["worker_cpu_s_per_clip"],
                    run["broker_cpu_s_per_clip"],
                    run["missing"],
                    run["error_count"],
                ]
            )
        out.append(
            table(
                [
                    "run",
                    "clips",
                    "clips/s",
                    "x limit",
                    "worker CPU s/clip",
                    "broker CPU s/clip",
                    "missing",
                    "errors",
                ],
                rows,
                digits=2,
            )
        )
        sat = pipe["saturation"][0]
        lat = summarize(sat["latencies_ms"])
        out.append(
            f"saturation #1 latency (queueing included): p50 {lat['p50']:.0f} ms, "
            f"p99 {lat['p99']:.0f} ms"
        )
        stage_rows = [
            [stage, statistics.median(values)]
            for stage, values in sat["worker_stage_ms"].items()
            if values
        ]
        if stage_rows:
            out.append(
                table(["worker's own stage timing (p50 ms, saturation #1)", "ms"], stage_rows)
            )
    if pipe.get("loads"):
        rows = [
            latency_row(
                f"{run['fraction']:.0%} of limit ({run['offered_per_s']:.2f}/s)",
                summarize(run["latencies_ms"]),
                [summarize(run["outside_stages_ms"])["p50"], run["missing"], run["error_count"]],
            )
            for run in pipe["loads"]
        ]
        out.append(
            table(
                [
                    "end-to-end latency at offered load",
                    "n",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "outside stages p50 ms",
                    "missing",
                    "errors",
                ],
                rows,
                digits=0,
            )
        )
    if report.get("api"):
        ref = lim["reference_ms_p50"] if lim else math.nan
        out.append(f"\n3. Sync API: POST /api/classify?sync=true with {REFERENCE_CLIP.name}")
        rows = []
        for run in report["api"]:
            lat = summarize(run["latencies_ms"])
            # Time spent outside the worker's own stages: HTTP, Kafka hops, Avro, waiting.
            outside = [
                total - stages
                for total, stages in zip(run["latencies_ms"], run["stage_total_ms"], strict=True)
            ]
            extra = [
                f"{run['clips_per_s']:.2f}",
                lat["p50"] - ref,
                summarize(outside)["p50"],
                run["failure_count"],
            ]
            rows.append(latency_row(f"{run['clients']} client(s)", lat, extra))
        out.append(
            table(
                [
                    "concurrency",
                    "n",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "clips/s",
                    "p50 - in-process ms",
                    "outside stages p50 ms",
                    "failures",
                ],
                rows,
                digits=0,
            )
        )
        out.append(f"in-process time of {REFERENCE_CLIP.name}, unloaded, p50: {ref:.0f} ms")
    if pipe.get("two_workers") or report.get("memory"):
        out.append("\n4. Scale and memory")
    if pipe.get("two_workers"):
        one = statistics.fmean(r["clips_per_s"] for r in pipe["saturation"])
        two = pipe["two_workers"]
        out.append(
            table(
                [
                    "workers on this machine",
                    "clips/s",
                    "x one worker",
                    "x limit",
                    "worker CPU s/clip",
                ],
                [
                    ["1 (mean of the saturation runs)", one, 1.0, ratio(one, limit_cps), ""],
                    [
                        "2",
                        two["clips_per_s"],
                        ratio(two["clips_per_s"], one),
                        two["x_limit"],
                        two["worker_cpu_s_per_clip"],
                    ],
                ],
                digits=2,
            )
        )
    if report.get("memory"):
        rows = [
            [
                s["label"],
                s["clips_done"],
                s["main_rss_mib"],
                s["children_rss_mib"],
                s["rss_mib"],
                s["main_peak_mib"],
                s["children_peak_mib"],
                s["children"],
            ]
            for s in [*report["memory"], *report.get("memory_two_workers", [])]
        ]
        out.append(
            table(
                [
                    "worker memory (MiB)",
                    "clips",
                    "RSS main",
                    "RSS children",
                    "RSS total",
                    "peak main",
                    "peak children",
                    "children",
                ],
                rows,
            )
        )

    out.append("\nTargets")
    verdicts = verdicts_of(report)
    out.append(
        table(
            ["target", "wanted", "measured", "verdict"],
            [[v.name, v.target, v.measured, v.mark] for v in verdicts],
        )
    )
    for key in ("interrupted", "error"):
        if report.get(key):
            out.append(f"\nINCOMPLETE RUN ({key}): {report[key]}")
    return "\n".join(out)


def verdicts_of(report: Mapping[str, Any]) -> list[Any]:
    lim = report.get("limit") or {}
    pipe = report.get("pipeline") or {}
    limit_cps = lim.get("clips_per_s", math.nan)
    runs = pipe.get("saturation") or []
    pipeline_cps = statistics.fmean(r["clips_per_s"] for r in runs) if runs else math.nan
    api = report.get("api") or []
    single = [r for r in api if r["clients"] == 1]
    sync_p50 = summarize(single[0]["latencies_ms"])["p50"] if single else math.nan
    memory = report.get("memory") or []
    growth, clips = math.nan, 0
    # The first sample after a saturation burst is the baseline: the allocator's high-water
    # mark is set by then, and the last sample follows the same kind of burst.
    after = [s for s in memory if s["label"] != "after warm-up"]
    if len(after) >= 2:
        growth = after[-1]["rss_mib"] - after[0]["rss_mib"]
        clips = after[-1]["clips_done"] - after[0]["clips_done"]
    return [
        throughput_verdict(pipeline_cps, limit_cps),
        sync_verdict(sync_p50, lim.get("reference_ms_p50", math.nan)),
        memory_verdict(growth, clips),
    ]


def write_json(report: Mapping[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"bench-{report['mode']}-{stamp}.json"
    text = json.dumps(report, indent=1, default=str, allow_nan=True)
    path.write_text(text + "\n")
    (out_dir / "latest.json").write_text(text + "\n")
    return path


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a few clips, short phases (~2 min)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the JSON report")
    parser.add_argument("--keep", action="store_true", help="keep the run's temporary folder")
    parser.add_argument(
        "--limit-only", action="store_true", help="only the in-process limit (no broker)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    plan = Plan.for_mode(args.quick)
    sources = clip_set(args.quick)
    report: dict[str, Any] = {
        "mode": plan.mode,
        "plan": asdict(plan),
        "machine": machine_info(),
        "clips": {
            "count": len(sources),
            "names": [p.name for p in sources],
            "names_short": _names_short(sources),
        },
    }
    workdir = Path(tempfile.mkdtemp(prefix="clipguard-bench-"))
    report["workdir"] = str(workdir)
    started = time.monotonic()
    failed = False
    try:
        clips = prepare_media(workdir, sources)
        settings = Settings(media_roots=(workdir / "media",), upload_dir=workdir / "uploads")
        report["settings"] = {
            "sample_fps": settings.sample_fps,
            "analysis_height": settings.analysis_height,
            "inference_threads": settings.inference_threads,
            "decode_workers": settings.decode_workers,
            "partitions": settings.partitions,
            "jpeg_quality": settings.jpeg_quality,
        }
        report["limit"] = measure_limit(settings, clips, plan)
        note(f"in-process limit: {report['limit']['clips_per_s']:.2f} clips/s")
        if not args.limit_only:
            asyncio.run(
                pipeline_phases(workdir, clips, plan, report["limit"]["clips_per_s"], report)
            )
    except KeyboardInterrupt as exc:
        failed = True
        report["interrupted"] = f"stopped by the user ({exc})" if str(exc) else "stopped by Ctrl-C"
    except Exception as exc:
        failed = True
        report["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    finally:
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        report["machine"]["load_average_at_end"] = load_average()
        path = write_json(report, args.out)
        if failed or args.keep:
            note(f"logs and data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    print(f"\nraw numbers: {path} (run took {report['elapsed_s']:.0f} s)")
    return 1 if failed else 0


def _names_short(paths: list[Path]) -> str:
    fixtures = sum(1 for p in paths if p.parent == FIXTURE_CLIPS)
    return f"{fixtures} from tests/fixtures/clips, {len(paths) - fixtures} from eval/clips"


if __name__ == "__main__":
    raise SystemExit(main())
