from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trio_sessions import MemoryStorage
from trio_sessions._cli import main
from trio_sessions.testing import ManualClock, check_storage

BROKEN = """
from trio_sessions import BytesStorage

class NoTtl(BytesStorage):
    def __init__(self, clock):
        super().__init__()
        self.data = {}

    async def load(self, session_id):
        return self.data.get(session_id)

    async def store(self, session_id, data, ttl):
        self.data[session_id] = data

    async def delete(self, session_id):
        self.data.pop(session_id, None)
"""


def test_check_passes_the_builtin_storages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--max-examples", "10"]) == 0
    out = capsys.readouterr().out
    assert "== MemoryStorage" in out
    assert "FAIL" not in out


def test_check_reports_a_broken_storage(tmp_path: Path) -> None:
    (tmp_path / "brokenstore.py").write_text(BROKEN)
    result = subprocess.run(
        [sys.executable, "-m", "trio_sessions", "check", "brokenstore:NoTtl", "--only", "ttl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "FAIL  ttl" in result.stdout
    assert "a session outlived its ttl" in result.stdout
    assert result.stdout.rstrip().endswith("0 passed, 1 failed")


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Run ``trio-sessions check`` in this process: its status and its output's lines."""
    status = main(["check", *argv])
    return status, capsys.readouterr().out.splitlines()


def details(lines: list[str], check: str) -> list[str]:
    """The indented lines under the FAIL line of *check*."""
    start = next(n for n, line in enumerate(lines) if line.startswith(f"FAIL  {check} "))
    rest = lines[start + 1 :]
    end = next((n for n, line in enumerate(rest) if not line.startswith("      ")), len(rest))
    return [line.strip() for line in rest[:end]]


def test_a_failing_model_check_shows_its_assertion(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = check(capsys, "tests.broken_storages:Lossy", "--only", "model")
    assert status == 1
    shown = details(lines, "model")
    assert shown[0].startswith("failing example: operations: [")
    # Not the last line of hypothesis's notes (a lone ")"): the assertion's message; one
    # line per distinct failure hypothesis found (a lost value shows in two ways).
    assert shown[1:]
    for line in shown[1:]:
        assert line.startswith("AssertionError: "), line
        assert line.endswith(
            ("stored value differs from the model", "read() lost a stored value")
        ), line


def test_a_failing_concurrency_check_shows_its_assertion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines = check(capsys, "tests.broken_storages:Torn", "--only", "concurrency")
    assert status == 1
    shown = details(lines, "concurrency")
    assert shown[0].startswith("failing example: seed=")
    assert len(shown) == 2
    assert shown[1].startswith("AssertionError: a reader saw ")
    assert shown[1].endswith(" bytes that no writer wrote whole")


def test_an_error_inside_an_exception_group_is_shown_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines = check(capsys, "tests.broken_storages:FailsLargeReads", "--only", "concurrency")
    assert status == 1
    # Not the group's table border ("+------"): the error inside it.
    shown = details(lines, "concurrency")
    assert shown[0].startswith("failing example: seed=")
    assert shown[1:] == [
        "StorageError: FailsLargeReads could not load: RuntimeError('the disk is on fire')"
    ]


def test_verbose_shows_the_whole_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = check(capsys, "tests.broken_storages:Torn", "--only", "concurrency", "-v")
    assert status == 1
    shown = details(lines, "concurrency")
    assert shown[1] == "Traceback (most recent call last):"
    assert "a reader saw " in shown[-1]


def test_a_factory_that_forgot_super_init_is_one_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines = check(capsys, "tests.broken_storages:NoSuper")
    assert status == 1
    text = "\n".join(lines)
    assert [line for line in lines if line.startswith(("FAIL", "PASS"))] == [
        "FAIL  factory                  "
        "The factory makes a storage that opens and closes (before any check)."
    ]
    assert details(lines, "factory") == [
        "NoSuper.__init__() does not call super().__init__(), so the BytesStorage it extends "
        "is not set up and every method would fail (AttributeError: 'NoSuper' object has no "
        "attribute '_closed'). Call super().__init__() in NoSuper.__init__() (pass max_size= "
        "there to change the size limit).",
        "No check ran.",
    ]
    assert text.count("_closed") == 1
    assert lines[-1] == "0 passed, 1 failed"


def test_a_factory_that_makes_no_storage_is_one_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines = check(capsys, "tests.broken_storages:not_a_storage")
    assert status == 1
    assert details(lines, "factory") == [
        "the factory returned dict, not a SessionStorage or an async context manager yielding one",
        "No check ran.",
    ]


async def test_check_storage_reports_a_failing_factory_once() -> None:
    def explode(clock: ManualClock) -> MemoryStorage:
        raise OSError(13, "Permission denied")

    report = await check_storage(explode)
    assert not report.passed
    (result,) = report.results
    assert result.name == "factory"
    assert result.summary == (
        "making, opening or closing a storage failed: PermissionError: "
        "[Errno 13] Permission denied\nNo check ran."
    )
    assert result.error is not None
    assert "Traceback" in result.error


async def test_check_storage_refuses_zero_examples() -> None:
    with pytest.raises(ValueError, match="max_examples must be a positive int"):
        await check_storage(MemoryStorage, max_examples=0)


# ------------------------------------------------------------------- usage errors

USAGE_ERRORS = [
    (["check", "nocolon"], "trio-sessions check: error: expected MODULE:FACTORY, got 'nocolon'"),
    (
        ["check", "no_such_module_xyz:f"],
        "trio-sessions check: error: cannot import 'no_such_module_xyz': "
        "No module named 'no_such_module_xyz'",
    ),
    (
        ["check", "tests.broken_storages:Missing"],
        "trio-sessions check: error: 'tests.broken_storages' has no attribute 'Missing'",
    ),
    (
        ["check", "tests.broken_storages:NOT_CALLABLE"],
        "trio-sessions check: error: tests.broken_storages:NOT_CALLABLE is not callable",
    ),
    (
        ["check", "--only", "nope"],
        "trio-sessions check: error: argument --only: invalid choice: 'nope' (choose from "
        "'errors_and_checkpoints', 'streams', 'ids', 'size', 'ttl', 'close', 'model', "
        "'concurrency', 'conditional')",
    ),
    (
        ["check", "--max-examples", "0"],
        "trio-sessions check: error: argument --max-examples: must be at least 1, got 0",
    ),
    (
        ["check", "--max-examples", "ten"],
        "trio-sessions check: error: argument --max-examples: expected a whole number, got 'ten'",
    ),
    (
        ["purge", "--temp-grace", "-5", "."],
        "trio-sessions purge: error: argument --temp-grace: must be a number of seconds "
        ">= 0, got '-5'",
    ),
    (
        ["purge", "--temp-grace", "nan", "."],
        "trio-sessions purge: error: argument --temp-grace: must be a number of seconds "
        ">= 0, got 'nan'",
    ),
    (["purge"], "trio-sessions purge: error: one of the arguments DIR --postgres is required"),
    (
        ["purge", "no-such-directory"],
        "trio-sessions purge: error: 'no-such-directory' is not a directory",
    ),
    (
        ["stats", "no-such-directory"],
        "trio-sessions stats: error: 'no-such-directory' is not a directory",
    ),
    (
        ["purge", "--postgres", "postgresql://127.0.0.1:1/x", "--table", "bad name"],
        "trio-sessions purge: error: table must be a plain or schema-qualified SQL name "
        "(letters, digits, _), not 'bad name'",
    ),
    ([], "trio-sessions: error: the following arguments are required: COMMAND"),
    (["nope"], "trio-sessions: error: argument COMMAND: invalid choice: 'nope'"),
    # The benchmark suite is no command: python -m benchmarks.suite, from a checkout.
    (["bench"], "trio-sessions: error: argument COMMAND: invalid choice: 'bench'"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS)
def test_a_usage_error_exits_with_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: trio-sessions")
    assert message in err


def test_a_missing_extra_exits_with_2_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith("trio_sessions.testing")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # as if not installed
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-sessions check: error: the check needs the 'testing' extra (")
    assert err.rstrip().endswith('pip install "trio-sessions[testing]"')


# ------------------------------------------------------------------ what loads

#: Imported by no command until it runs: the harness (hypothesis), the demo (Quart), the
#: drivers; and never: the benchmark suite, which is not part of the package.
HEAVY = {
    "asyncpg",
    "benchmarks",
    "cachelib",
    "coredis",
    "diskcache",
    "glide",
    "httpx2",
    "hypercorn",
    "hypothesis",
    "matplotlib",
    "psycopg",
    "quart",
    "quart_trio",
    "redis",
    "starsessions",
    "trio_asyncio",
    "trio_sessions._demo",
    "trio_sessions.testing",
}


def imported(*argv: str) -> set[str]:
    """The modules ``python -X importtime ARGV`` imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import trio_sessions"],
        ["-m", "trio_sessions", "purge", "--help"],
        ["-m", "trio_sessions", "stats", "--help"],
        ["-m", "trio_sessions", "--help"],
    ],
)
def test_the_command_line_imports_a_command_only_when_it_runs(argv: list[str]) -> None:
    modules = imported(*argv)
    assert "trio_sessions" in modules
    assert heavy(modules) == set()


@pytest.mark.parametrize(
    "statement",
    [
        "import trio_sessions.testing",
        "from trio_sessions.testing import ManualClock, read_all, StorageConformance",
        "import trio_sessions.testing.servers",
        "import trio_sessions.testing.pytest_plugin",
    ],
)
def test_the_harness_tools_and_servers_import_without_hypothesis(statement: str) -> None:
    # A storage's own tests (a ManualClock, read_all, the private servers) and benchmark
    # scripts need no hypothesis; only running the checks does.
    modules = imported("-c", statement)
    assert "trio_sessions.testing" in modules
    assert "hypothesis" not in modules


def test_the_measurement_does_import_what_it_looks_for() -> None:
    # The same measurement sees the harness when a command needs it.
    assert "hypothesis" in imported("-c", "from trio_sessions.testing import CHECKS")
