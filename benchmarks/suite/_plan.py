"""How much each run measures, and the machine it runs on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

KIB = 1024
MIB = 1024 * KIB

#: Every section, in the order a run measures them.
SECTIONS = ("pairs", "sessions", "payload", "concurrency", "footprint", "lateness")


@dataclass(frozen=True)
class Plan:
    """The sizes of one run. Throughput figures stop at *seconds* or *max_ops*."""

    mode: str
    repeats: int
    seconds: float
    max_ops: int
    #: Sessions the pairs and lateness sections spread over (1 KiB each).
    ids: int
    sessions_memory: tuple[int, ...]
    sessions_directory: tuple[int, ...]
    sessions_redis: tuple[int, ...]
    payloads: tuple[int, ...]
    payload_ids: int
    concurrency: tuple[int, ...]
    concurrency_ids: int
    footprint_sessions: int
    footprint_repeats: int
    lateness_seconds: float
    lateness_repeats: int
    lateness_tasks: int
    benchmark_requests: int
    benchmark_repeats: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_CURVES = {
    "payloads": (100, KIB, 10 * KIB, 100 * KIB, MIB),
    "concurrency": (1, 4, 16, 64, 256),
}

PLANS = {
    # Every step once, as small as it gets: for the tests.
    "smoke": Plan(
        mode="smoke",
        repeats=1,
        seconds=0.01,
        max_ops=2_000,
        ids=16,
        sessions_memory=(100, 1_000),
        sessions_directory=(100,),
        sessions_redis=(100,),
        payloads=(100, MIB),
        payload_ids=4,
        concurrency=(1, 16),
        concurrency_ids=64,
        footprint_sessions=1_000,
        footprint_repeats=1,
        lateness_seconds=0.05,
        lateness_repeats=1,
        lateness_tasks=4,
        benchmark_requests=500,
        benchmark_repeats=1,
    ),
    "quick": Plan(
        mode="quick",
        repeats=3,
        seconds=0.04,
        max_ops=1_000_000,
        ids=256,
        sessions_memory=(1_000, 10_000, 100_000),
        sessions_directory=(100, 1_000),
        sessions_redis=(1_000, 10_000),
        payloads=_CURVES["payloads"],
        payload_ids=16,
        concurrency=_CURVES["concurrency"],
        concurrency_ids=256,
        footprint_sessions=10_000,
        footprint_repeats=1,
        lateness_seconds=0.1,
        lateness_repeats=3,
        lateness_tasks=8,
        benchmark_requests=2_000,
        benchmark_repeats=1,
    ),
    "default": Plan(
        mode="default",
        repeats=5,
        seconds=0.15,
        max_ops=1_000_000,
        ids=1_024,
        sessions_memory=(1_000, 10_000, 100_000, 1_000_000),
        sessions_directory=(1_000, 10_000),
        sessions_redis=(1_000, 10_000, 100_000),
        payloads=_CURVES["payloads"],
        payload_ids=32,
        concurrency=_CURVES["concurrency"],
        concurrency_ids=1_024,
        footprint_sessions=100_000,
        footprint_repeats=1,
        lateness_seconds=0.6,
        lateness_repeats=3,
        lateness_tasks=8,
        benchmark_requests=20_000,
        benchmark_repeats=3,
    ),
    "full": Plan(
        mode="full",
        repeats=7,
        seconds=0.5,
        max_ops=10_000_000,
        ids=1_024,
        sessions_memory=(1_000, 10_000, 100_000, 1_000_000),
        sessions_directory=(1_000, 10_000, 100_000, 1_000_000),
        sessions_redis=(1_000, 10_000, 100_000, 1_000_000),
        payloads=_CURVES["payloads"],
        payload_ids=64,
        concurrency=_CURVES["concurrency"],
        concurrency_ids=4_096,
        footprint_sessions=100_000,
        footprint_repeats=3,
        lateness_seconds=2.0,
        lateness_repeats=5,
        lateness_tasks=8,
        benchmark_requests=100_000,
        benchmark_repeats=5,
    ),
}

_PACKAGES = (
    "trio-sessions",
    "trio",
    "valkey-glide",
    "coredis",
    "redis",
    "starsessions",
    "cachelib",
    "diskcache",
    "psycopg",
    "asyncpg",
    "trio-asyncio",
    "matplotlib",
)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, CPU, memory, Python, package versions."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu": _cpu_model(),
        "memory_bytes": _memory_total(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "load_average_start": load_average(),
    }
