"""The soak and chaos suite: real traffic through a real server while things break.

For every backend (Directory with fsync, a cache over Directory, Valkey through
valkey-glide, PostgreSQL) a Quart-Trio app runs on Hypercorn's trio worker in a process of
its own (`app`); virtual users in another process (`users`) log in, increment a counter in
their session, check every answer against what they were acknowledged, and log out while
another request of the same session races the logout. Meanwhile the run (`run`) injects
faults on a schedule (`faults`): the app SIGKILLed and restarted, Valkey SIGKILLed and
restarted (append-only file, fsync always), PostgreSQL stopped immediately and started,
the disk filled up, slow connections held open. It counts what was lost and writes
``results.json`` and ``results.md`` (`report`).

Run from the repository's root: ``python -m benchmarks.soak --quick`` (the CI run, a
few minutes at most, exits 1 on any lost write, resurrected session, 5xx other than a
503 during an injected outage, or memory growth beyond a bound) or ``nox -s soak`` (the
full run). The servers come from `trio_sessions.testing.servers`.
"""
