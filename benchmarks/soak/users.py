"""Virtual users for the soak suite, in a process of their own.

Each user has its own cookie and two keep-alive connections, and checks every answer
against what it was acknowledged before:

* it logs in (a fresh session: ``n = 0``), then increments the counter a few times. A
  200 answer must hold the next value: below it, acknowledged increments were lost;
  above it (beyond the requests whose outcome is unknown because they failed), the
  value jumped. Now and then ``GET /state`` checks the stored value the same way.
* sometimes a slow request that sets another key runs while the user increments: once
  it is saved, the acknowledged increments must all still be there;
* it ends the session with a logout raced by another request of the same session (an
  increment, a read, or a slow increment or rotation that loaded the session before the
  logout and saves after it, optionally with an injected outage from its first write
  on). Once the logout is acknowledged, neither the old cookie nor a cookie the racing
  request set may reach the user's data: that would be a resurrected session.

At the end every user logs out and every cookie of a logged-out session is tried again.

Run: ``python -m benchmarks.soak.users CONFIG_JSON``; the result is printed as JSON.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from .client import Connection, HttpError, Response

#: What may race a logout, and the request it sends (``{delay}`` is filled in).
RACES = {
    "incr": ("POST", "/incr"),
    "state": ("GET", "/state"),
    "slow-incr": ("POST", "/slow?action=incr&wait=logout&delay={delay}"),
    "slow-incr-blip": ("POST", "/slow?action=incr&wait=logout&delay={delay}&blip=1"),
    "slow-regenerate": ("POST", "/slow?action=regenerate&wait=logout&delay={delay}"),
}


@dataclass
class Config:
    host: str
    port: int
    users: int
    duration: float
    #: Requests per user at most (every load loop is bounded in count and in time).
    max_requests: int = 100_000
    seed: int = 0
    increments: tuple[int, int] = (3, 12)
    races: tuple[str, ...] = tuple(RACES)
    #: Probability that an increment phase runs beside a slow writer of another key.
    slow_writer: float = 0.2
    slow_delay: float = 0.3
    #: Probability of a ``GET /state`` check after an increment.
    check_state: float = 0.1
    #: Seconds a request may take before it counts as unanswered.
    timeout: float = 30.0
    #: How long the final logouts and re-checks may take, in seconds.
    final_seconds: float = 60.0
    #: Cookies of logged-out sessions each user tries again at the end (its latest ones).
    recheck: int = 50


@dataclass
class Race:
    runs: int = 0
    #: Runs where the racing request had loaded the session before the logout.
    effective: int = 0
    resurrected: int = 0


@dataclass
class Tally:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    #: (sent, answered, status, path, injected?) of every 5xx answer (monotonic times).
    server_errors: list[tuple[float, float, int, str, bool]] = field(default_factory=list)
    #: Monotonic times of requests that got no answer (refused, reset, timed out).
    #: (sent, given up) for each, in monotonic time.
    connection_errors: list[tuple[float, float]] = field(default_factory=list)
    logins: int = 0
    #: Logins that got no answer: their session may be stored with no one holding it.
    logins_unanswered: int = 0
    acknowledged: int = 0
    lost_writes: int = 0
    lost_sessions: int = 0
    jumped: int = 0
    foreign: int = 0
    unexpected: int = 0
    logouts: int = 0
    logouts_refused: int = 0
    logouts_abandoned: int = 0
    resurrected: int = 0
    resurrected_late: int = 0
    resurrections: list[dict[str, Any]] = field(default_factory=list)
    dead_checked: int = 0
    dead_unchecked: int = 0
    slow_writer_races: int = 0
    races: dict[str, Race] = field(default_factory=dict)
    final_complete: bool = False
    examples: list[str] = field(default_factory=list)

    def example(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)


class User:
    def __init__(self, number: int, config: Config, tally: Tally, deadline: float) -> None:
        self.name = f"u{number}"
        self.config = config
        self.tally = tally
        self.deadline = deadline
        self.rng = random.Random(config.seed * 100_003 + number)
        self.main = Connection(config.host, config.port, limit=config.timeout)
        self.side = Connection(config.host, config.port, limit=config.timeout)
        self.sent = 0
        self.cookie: str | None = None
        self.ack = 0  # the counter's last acknowledged value
        self.pending = 0  # increments sent whose outcome is unknown
        self.dead: list[str] = []  # cookies of acknowledged logouts
        self.flagged: set[str] = set()

    # ------------------------------------------------------------ plumbing

    def running(self) -> bool:
        return time.monotonic() < self.deadline and self.sent < self.config.max_requests

    async def call(
        self, connection: Connection, method: str, target: str, cookie: str | None
    ) -> Response | None:
        self.sent += 1
        tally = self.tally
        tally.requests += 1
        sent = time.monotonic()
        try:
            response = await connection.request(method, target, cookie=cookie)
        except HttpError:
            tally.connection_errors.append((sent, time.monotonic()))
            tally.statuses["error"] = tally.statuses.get("error", 0) + 1
            return None
        key = str(response.status)
        tally.statuses[key] = tally.statuses.get(key, 0) + 1
        if response.status >= 500:
            injected = response.header("x-soak-blip") is not None
            path = target.partition("?")[0]
            answered = time.monotonic()
            tally.server_errors.append((sent, answered, response.status, path, injected))
        return response

    async def backoff(self) -> None:
        await trio.sleep(self.rng.uniform(0.05, 0.2))

    # ------------------------------------------------------------- checks

    def judge(self, n: int, where: str, step: int) -> None:
        """*n* is the counter after this request (*step*: 1 for an increment, 0 for a
        read): it must be within what may have been applied."""
        low, high = self.ack + step, self.ack + step + self.pending
        if n < low:
            self.tally.lost_writes += low - n
            self.tally.example(f"{self.name} {where}: n={n} but {low} was acknowledged")
        elif n > high:
            self.tally.jumped += 1
            self.tally.example(f"{self.name} {where}: n={n}, at most {high} possible")
        self.ack, self.pending = n, 0

    def check_answer(self, response: Response, where: str, step: int = 0) -> bool:
        """Judge a 200 answer carrying the session; False if the session is gone."""
        body = response.json() or {}
        if body.get("user") is None:
            self.session_lost(where)
            return False
        if body["user"] != self.name:
            self.tally.foreign += 1
            self.tally.example(f"{self.name} {where}: answered for {body['user']}")
            return False
        if isinstance(body.get("n"), int):
            self.judge(body["n"], where, step)
        new = response.session_cookie
        if new:
            self.cookie = new
        elif new == "":
            self.session_lost(where + " (cookie deleted)")
            return False
        return True

    def session_lost(self, where: str) -> None:
        self.tally.lost_sessions += 1
        self.tally.lost_writes += self.ack
        self.tally.example(f"{self.name} {where}: session gone with n={self.ack} acknowledged")
        self.cookie = None

    # ------------------------------------------------------------ actions

    async def login(self) -> bool:
        response = await self.call(self.main, "POST", f"/login?user={self.name}", None)
        if response is None or response.status != 200 or not response.session_cookie:
            if response is None or response.status >= 500:
                self.tally.logins_unanswered += 1
            else:
                self.tally.unexpected += 1
            await self.backoff()
            return False
        self.cookie = response.session_cookie
        self.ack, self.pending = 0, 0
        self.tally.logins += 1
        return True

    async def increment(self) -> bool:
        """One increment; False if the session is gone."""
        response = await self.call(self.main, "POST", "/incr", self.cookie)
        if response is None or response.status >= 500:
            self.pending += 1
            await self.backoff()
            return True
        if response.status == 401:
            self.session_lost("incr")
            return False
        if response.status != 200:
            self.tally.unexpected += 1
            return True
        if not self.check_answer(response, "incr", step=1):
            return False
        self.tally.acknowledged += 1
        return True

    async def check_state(self, where: str) -> bool:
        response = await self.call(self.main, "GET", "/state", self.cookie)
        if response is None or response.status != 200:
            await self.backoff()
            return True
        return self.check_answer(response, where)

    async def increments_beside_a_slow_writer(self) -> bool:
        """A slow request sets ``note`` while increments are acknowledged: none may be
        lost when it saves."""
        self.tally.slow_writer_races += 1
        alive = True
        cookie = self.cookie
        delay = self.config.slow_delay

        async def slow() -> None:
            await self.call(self.side, "POST", f"/slow?action=note&delay={delay}", cookie)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.sleep(0.01)
            for _ in range(3):
                if not (alive := await self.increment()):
                    break
        return alive and await self.check_state("after a slow writer")

    async def session(self) -> None:
        """Log in, increment, end with a raced logout."""
        if not await self.login():
            return
        alive = True
        for _ in range(self.rng.randint(*self.config.increments)):
            if not self.running():
                break
            if self.rng.random() < self.config.slow_writer:
                alive = await self.increments_beside_a_slow_writer()
            else:
                alive = await self.increment()
                if alive and self.rng.random() < self.config.check_state:
                    alive = await self.check_state("state")
            if not alive:
                return
        if self.cookie is not None:
            await self.raced_logout(self.rng.choice(self.config.races))

    async def logout(self, cookie: str) -> bool:
        """Log out until acknowledged (bounded: 30 s, 300 attempts); False if it never was."""
        give_up = time.monotonic() + 30
        for _ in range(300):
            response = await self.call(self.main, "POST", "/logout", cookie)
            if response is not None and response.status == 200:
                self.tally.logouts += 1
                return True
            self.tally.logouts_refused += 1
            if time.monotonic() > give_up:
                break
            await trio.sleep(self.rng.uniform(0.1, 0.3))
        self.tally.logouts_abandoned += 1
        return False

    async def raced_logout(self, kind: str) -> None:
        assert self.cookie is not None
        cookie = self.cookie
        method, template = RACES[kind]
        target = template.format(delay=self.config.slow_delay * 3)
        race = self.tally.races.setdefault(kind, Race())
        race.runs += 1
        racer: list[Response | None] = []
        logout: list[Response | None] = []

        async def run_racer() -> None:
            racer.append(await self.call(self.side, method, target, cookie))

        async def run_logout() -> None:
            if kind.startswith("slow"):
                await trio.sleep(0.02)  # let the racing request load the session first
            logout.append(await self.call(self.main, "POST", "/logout", cookie))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_racer)
            nursery.start_soon(run_logout)
        self.cookie = None
        first = logout[0]
        if first is not None and first.status == 200:
            self.tally.logouts += 1
        else:
            self.tally.logouts_refused += 1
            if not await self.logout(cookie):
                return  # never acknowledged: the session may live on, legitimately
        answer = racer[0]
        cookies = [cookie]
        if answer is not None:
            body = answer.json() or {}
            loaded = body.get("user") == self.name or answer.header("x-soak-blip") is not None
            if kind.startswith("slow") and loaded:
                race.effective += 1
            rotated = answer.session_cookie
            if rotated and rotated != cookie:
                cookies.append(rotated)
        for dead in cookies:
            if await self.resurrected(dead, kind):
                race.resurrected += 1
            self.dead.append(dead)
        del self.dead[:-50]  # keep the latest ones for the final check

    async def resurrected(self, cookie: str, kind: str, *, late: bool = False) -> bool:
        """Whether a cookie of an acknowledged logout still reaches the user's data."""
        response = None
        for _ in range(10):
            response = await self.call(self.main, "GET", "/state", cookie)
            if response is not None and response.status == 200:
                break
            await self.backoff()
        if response is None or response.status != 200:
            self.tally.dead_unchecked += 1
            return False
        self.tally.dead_checked += 1
        body = response.json() or {}
        if body.get("user") is None or cookie in self.flagged:
            return False
        self.flagged.add(cookie)
        if late:
            self.tally.resurrected_late += 1
        else:
            self.tally.resurrected += 1
        self.tally.resurrections.append(
            {"user": self.name, "race": kind, "late": late, "state": body, "t": time.monotonic()}
        )
        self.tally.example(f"{self.name}: logged out ({kind}), but the cookie still reads {body}")
        return True

    async def run(self) -> None:
        # Spread the users' starts over the first tenth of the run (5 s at most).
        await trio.sleep(self.rng.uniform(0, min(5.0, self.config.duration / 10)))
        while self.running():
            await self.session()

    async def finish(self) -> None:
        if self.cookie is not None:
            cookie, self.cookie = self.cookie, None
            if await self.logout(cookie):
                self.dead.append(cookie)
        for cookie in self.dead[-self.config.recheck :]:
            await self.resurrected(cookie, "final check", late=True)
        await self.main.aclose()
        await self.side.aclose()


async def run(config: Config) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + config.duration
    users = [User(n, config, tally, deadline) for n in range(config.users)]
    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(user.run)
    with trio.move_on_after(config.final_seconds):
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(user.finish)
        tally.final_complete = True
    return tally


def as_json(tally: Tally) -> dict[str, Any]:
    data = asdict(tally)
    data["races"] = {kind: asdict(race) for kind, race in tally.races.items()}
    return data


def main() -> None:
    raw = json.loads(sys.argv[1])
    raw["increments"] = tuple(raw.get("increments", (3, 12)))
    raw["races"] = tuple(raw.get("races", RACES))
    config = Config(**raw)
    if not math.isfinite(config.duration) or config.duration <= 0:
        raise SystemExit("duration must be a positive number of seconds")
    tally = trio.run(run, config)
    json.dump(as_json(tally), sys.stdout)


if __name__ == "__main__":
    main()
