"""``trio-sessions bench`` runs end to end and writes results a reader can use.

Only the shape of the results is checked here, never a timing: the figures themselves
are for people to read (see docs/benchmarks.rst).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trio_sessions._bench._core import Progress, Results
from trio_sessions._bench._plan import SECTIONS as PLAN_SECTIONS
from trio_sessions._bench._sections import BUILDERS
from trio_sessions._cli import main

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


def test_bench_smoke_writes_json_markdown_and_charts(tmp_path: Path) -> None:
    output = tmp_path / "results"
    command = ["bench", "--smoke", "--no-postgres", "--output", str(output), "--tmp", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "trio_sessions", *command],
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here; the run itself takes seconds
        check=False,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairs: memory" in result.stderr  # the progress lines
    assert "| MemoryStorage |" in result.stdout  # the summary

    data = json.loads((output / "results.json").read_text())
    assert data.keys() >= TOP_KEYS
    assert data["mode"] == "smoke"
    assert data["command"].startswith("trio-sessions bench --smoke")
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


def test_bench_refuses_an_unknown_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--only", "nope"])
    assert exited.value.code == 2
    assert "argument --only: invalid choice: 'nope'" in capsys.readouterr().err


#: Runs the command line as if the peer libraries were not installed.
WITHOUT_PEERS = """
import sys
for name in ("starsessions", "cachelib", "diskcache"):
    sys.modules[name] = None  # an import of it raises ImportError
from trio_sessions._cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_bench_says_what_it_skipped_and_names_only_the_peers_it_ran(tmp_path: Path) -> None:
    output = tmp_path / "results"
    command = ["bench", "--smoke", "--only", "pairs", "--no-redis", "--no-postgres"]
    command += ["--no-charts", "--output", str(output), "--tmp", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PEERS, *command],
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here; the run itself takes seconds
        check=False,
    )
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


def test_a_step_names_the_peers_it_runs() -> None:
    from trio_sessions._bench._plan import PLANS
    from trio_sessions._bench._sections import pairs
    from trio_sessions._bench._suite import Servers, Suite

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
