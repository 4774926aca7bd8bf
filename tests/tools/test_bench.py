"""The benchmark suite (``python -m benchmarks.suite``) runs end to end and writes
results a reader can use.

Only the shape of the results is checked here, never a timing: the figures themselves
are for people to read (see docs/benchmarks.rst). The suite lives in the repository, not
in the package: it runs from the repository's root, as a module.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmarks.suite._command import main
from benchmarks.suite._core import Progress, Results
from benchmarks.suite._plan import SECTIONS as PLAN_SECTIONS
from benchmarks.suite._sections import BUILDERS
from trio_sessions.testing.pytest_plugin import require_module

#: The repository's root: the suite runs from there, as ``python -m benchmarks.suite``.
ROOT = Path(__file__).resolve().parents[2]

TOP_KEYS = {
    "schema",
    "command",
    "mode",
    "started",
    "seconds",
    "machine",
    "plan",
    "sections",
    "figures",
    "skipped",
    "steps",
    "charts",
}
FIGURE_KEYS = {
    "section",
    "group",
    "name",
    "role",
    "unit",
    "x",
    "values",
    "median",
    "min",
    "max",
    "repeats",
    "baseline",
    "ratio",
    "better",
}
SECTIONS = {
    "pairs",
    "sessions",
    "payload",
    "concurrency",
    "footprint",
    "lateness p99",
    "lateness max",
}


def run_suite(args: Sequence[str], *, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.suite ARGS`` from the repository's root (after *prelude*,
    Python run first in the same process, when given)."""
    if prelude:
        code = f"{prelude}\nimport runpy\nrunpy.run_module('benchmarks.suite', run_name='__main__')"
        argv = ["-c", code]
    else:
        argv = ["-m", "benchmarks.suite"]
    return subprocess.run(
        [sys.executable, *argv, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here; the run itself takes seconds
        check=False,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )


def test_bench_smoke_writes_json_markdown_and_charts(tmp_path: Path) -> None:
    output = tmp_path / "results"
    result = run_suite(
        ["--smoke", "--no-postgres", "--output", str(output), "--tmp", str(tmp_path)]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairs: memory" in result.stderr  # the progress lines
    assert "| MemoryStorage |" in result.stdout  # the summary

    data = json.loads((output / "results.json").read_text())
    assert data.keys() >= TOP_KEYS
    assert data["mode"] == "smoke"
    assert data["command"].startswith("python -m benchmarks.suite --smoke")
    machine = data["machine"]
    for key in ("cores", "python", "packages", "load_average_start", "load_average_end"):
        assert key in machine
    assert machine["packages"]["trio-sessions"]
    failed = [item for item in data["skipped"] if item["why"].startswith("failed")]
    assert not failed

    figures = data["figures"]
    assert {figure["section"] for figure in figures} == SECTIONS
    for figure in figures:
        assert figure.keys() >= FIGURE_KEYS
        assert figure["min"] <= figure["median"] <= figure["max"]
        assert figure["repeats"] == len(figure["values"]) >= 1
    memory = next(f for f in figures if f["section"] == "pairs" and f["name"] == "MemoryStorage")
    assert memory["baseline"] == "dict + checkpoints"
    assert memory["ratio"] > 0
    assert {f["name"] for f in figures if f["section"] == "lateness p99"} >= {
        "MemoryStorage",
        "DirectoryStorage fsync=on",
        "DirectoryStorage fsync=off",
        "CacheStorage over DirectoryStorage",
    }

    markdown = (output / "results.md").read_text()
    assert "## Summary" in markdown
    assert "| MemoryStorage |" in markdown
    if importlib.util.find_spec("matplotlib") is None:
        assert data["charts"] == []
    else:
        assert len(data["charts"]) == 6
        for name in data["charts"]:
            assert (output / name).read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob("trio-sessions-bench-*"))  # scratch directories removed


def test_every_section_has_its_steps() -> None:
    assert tuple(BUILDERS) == PLAN_SECTIONS


USAGE_ERRORS = [
    (
        ["--only", "nope"],
        "error: argument --only: invalid choice: 'nope' (choose from "
        "'pairs', 'sessions', 'payload', 'concurrency', 'footprint', 'lateness')",
    ),
    (["--tmp", "no-such-directory"], "error: --tmp 'no-such-directory' is not a directory"),
    (["--quick", "--full"], "error: argument --full: not allowed with argument --quick"),
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
    assert err.startswith("usage: python -m benchmarks.suite")
    assert f"python -m benchmarks.suite: {message}" in err


def test_the_help_names_every_section() -> None:
    result = run_suite(["--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m benchmarks.suite")
    assert ", ".join(PLAN_SECTIONS) in " ".join(result.stdout.split())


#: Makes the peer libraries look not installed (an import of one raises ImportError).
WITHOUT_PEERS = """
import sys
for name in ("starsessions", "cachelib", "diskcache"):
    sys.modules[name] = None
"""

pytestmark = pytest.mark.slow  # the benchmark suite, run


def test_bench_says_what_it_skipped_and_names_only_the_peers_it_ran(tmp_path: Path) -> None:
    output = tmp_path / "results"
    command = ["--smoke", "--only", "pairs", "--no-redis", "--no-postgres"]
    command += ["--no-charts", "--output", str(output), "--tmp", str(tmp_path)]
    result = run_suite(command, prelude=WITHOUT_PEERS)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped:")]
    assert skipped == [
        "skipped: Redis (--no-redis)",
        "skipped: PostgreSQL (--no-postgres)",
        "skipped: pairs: starsessions (not installed: pip install starsessions)",
        "skipped: pairs: cachelib (not installed: pip install cachelib)",
        "skipped: pairs: diskcache (not installed: pip install diskcache)",
    ]
    steps = [line.split(maxsplit=3)[-1] for line in result.stderr.splitlines() if "/4 " in line]
    # "pairs: directory", not "pairs: directory + peers": no peer ran.
    assert steps == [
        "pairs: memory",
        "pairs: directory, fsync on",
        "pairs: directory",
        "pairs: cache (reads)",
    ]
    data = json.loads((output / "results.json").read_text())
    assert {f["role"] for f in data["figures"]} == {"subject", "baseline", "reference"}


def test_the_concurrency_section_measures_postgres_against_asyncpg_at_every_task_count(
    tmp_path: Path, postgres_bindir: Path
) -> None:
    require_module("psycopg")
    require_module("asyncpg")
    output = tmp_path / "results"
    command = ["--smoke", "--only", "concurrency", "--no-redis"]
    command += ["--output", str(output), "--tmp", str(tmp_path)]
    result = run_suite(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "concurrency: postgres" in result.stderr
    data = json.loads((output / "results.json").read_text())
    measured_without = [skip for skip in data["skipped"] if skip["what"] != "charts"]
    assert measured_without == [{"what": "Redis", "why": "--no-redis"}]
    assert data["machine"]["postgres_server"].startswith("PostgreSQL ")
    tasks = [float(x) for x in data["plan"]["concurrency"]]
    postgres = [f for f in data["figures"] if f["group"] == "postgres"]
    by_name: dict[str, list[float]] = {}
    for figure in postgres:
        assert figure["section"] == "concurrency"
        by_name.setdefault(figure["name"], []).append(figure["x"])
    assert by_name == {"PostgresStorage": tasks, "asyncpg on asyncio (same SQL)": tasks}
    ours = [f for f in postgres if f["name"] == "PostgresStorage"]
    assert all(f["baseline"] == "asyncpg on asyncio (same SQL)" and f["ratio"] for f in ours)
    markdown = (output / "results.md").read_text()
    assert "| postgres | PostgresStorage | asyncpg on asyncio (same SQL) |" in markdown
    summary = markdown.split("## Summary")[1].split("##")[0]
    assert "| PostgresStorage |  | " in summary  # no pairs section: its 16-task figure only
    if importlib.util.find_spec("matplotlib") is not None:
        assert data["charts"] == ["concurrency.png"]


def test_a_step_names_the_peers_it_runs() -> None:
    from benchmarks.suite._plan import PLANS
    from benchmarks.suite._sections import pairs
    from benchmarks.suite._suite import Servers, Suite

    suite = Suite(PLANS["smoke"], Servers(), Results(), None, Progress(0, quiet=True))
    labels = [label for _, label, _ in pairs(suite)]
    peers = [name for name in ("cachelib", "diskcache") if importlib.util.find_spec(name)]
    assert " + ".join(["directory", *peers]) in labels


def test_ratios_are_taken_against_the_baseline_at_the_same_x() -> None:
    results = Results()
    for value in (10.0, 30.0, 20.0):
        results.add("s", "g", "base", value, role="baseline", unit="ops/s", x=1)
        results.add("s", "g", "mine", value / 2, role="subject", unit="ops/s", x=1, baseline="base")
    results.add("s", "g", "mine", 7.0, role="subject", unit="ops/s", x=2, baseline="base")
    figures = {(f.name, f.x): f for f in results.finish()}
    assert figures["mine", 1].median == 10.0
    assert figures["mine", 1].ratio == 0.5
    assert figures["mine", 2].ratio is None  # no baseline measured at x=2


# ------------------------------------------------------------------ the layout


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module *path* imports, and every string that is a dotted module name (for
    ``importlib.import_module``), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"\w+(\.\w+)+", node.value)
        ):
            found.append((node.lineno, node.value))
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_nothing_in_benchmarks_imports_from_tests_or_patches_the_import_path() -> None:
    # Every script runs as ``python -m benchmarks.X`` from the root; private servers come
    # from trio_sessions.testing.servers.
    found = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        where = path.relative_to(ROOT)
        for line, name in _imports(path):
            if _within(name, "tests"):
                found.append(f"{where}:{line}: {name}")
        if "sys.path" in path.read_text():
            found.append(f"{where}: sys.path")
    assert found == []


def test_the_package_holds_no_benchmark_code() -> None:
    import trio_sessions

    package = Path(trio_sessions.__file__).parent
    assert not (package / "_bench").exists()
    found = [
        f"{path.relative_to(package)}:{line}: {name}"
        for path in sorted(package.rglob("*.py"))
        for line, name in _imports(path)
        if _within(name, "benchmarks")
    ]
    assert found == []
