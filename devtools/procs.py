"""What /proc says about our own processes (CPU seconds, memory) and about the machine."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from streams.settings import PROJECT_ROOT

_TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = (
    "faust-streaming",
    "aiokafka",
    "av",
    "onnxruntime",
    "numpy",
    "pillow",
    "fastavro",
    "aiohttp",
    "scipy",
)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (forkserver children are grandchildren of the worker)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (all its threads); 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # Fields 14 and 15 of stat (utime, stime), counted from 1 with pid and comm removed.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in (pid, *children_of(pid)))


def status_kib(pid: int, field: str) -> int:
    """A `VmHWM`/`VmRSS` line of /proc/PID/status in KiB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class TreeMemory:
    main_rss_mib: float
    main_peak_mib: float  # VmHWM: the highest resident set the process ever had
    children_rss_mib: float
    children_peak_mib: float  # sum of the children's VmHWM (an upper bound of their joint peak)
    children: int

    @property
    def rss_mib(self) -> float:
        return self.main_rss_mib + self.children_rss_mib

    @property
    def peak_mib(self) -> float:
        return self.main_peak_mib + self.children_peak_mib


def tree_memory(pid: int) -> TreeMemory:
    kids = children_of(pid)
    return TreeMemory(
        main_rss_mib=status_kib(pid, "VmRSS") / 1024,
        main_peak_mib=status_kib(pid, "VmHWM") / 1024,
        children_rss_mib=sum(status_kib(k, "VmRSS") for k in kids) / 1024,
        children_peak_mib=sum(status_kib(k, "VmHWM") for k in kids) / 1024,
        children=len(kids),
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def kafka_version() -> str:
    pom = PROJECT_ROOT / "dev" / "kafka" / "pom.xml"
    try:
        text = pom.read_text()
    except OSError:
        return "unknown"
    start = text.find("<kafka.version>")
    end = text.find("</kafka.version>")
    return text[start + len("<kafka.version>") : end] if 0 <= start < end else "unknown"


def load_average() -> float:
    """The 1-minute load average: other work on the machine skews every number here."""
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict[str, object]:
    versions = {"python": platform.python_version(), "kafka": kafka_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_total_gib(), 1),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "load_average_at_start": load_average(),
        "versions": versions,
    }
