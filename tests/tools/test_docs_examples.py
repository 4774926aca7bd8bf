"""Every code example in the docs and the README runs, so the docs cannot rot.

* ``docs/examples/*.py`` (what the pages include with ``literalinclude``) run as scripts,
  each in its own process with a timeout; the Redis example runs against a private
  server; the pytest example runs under pytest.
* Python blocks written inline in the pages, and in the docstrings that autodoc renders,
  need a server or a framework's deployment to run: they must at least compile.
* README's first Python block (the ten lines) runs; the others compile.
* Command-line help and output shown in the docs are what the command prints.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_sessions

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = sorted(DOCS.glob("*.rst"))

# Each runnable example and a line its output must contain.
RUNNABLE = {
    "quickstart_storage.py": "b'{\"user\": 42}'",
    "quickstart_quart.py": "visit number 2",
    "contract.py": "cancelled write: nothing stored",
    "memory_storage.py": "evictions=1",
    "directory_storage.py": "4194304 bytes read back",
    "cache_storage.py": "hits=3",
    "session_manager.py": "forged cookie: new session? True",
    "quart_app.py": "Hello, alice!",
    "asgi_app.py": "Hello, alice!",
    "header_transport.py": "me with the old token: {'user': None}",
    "streaming_storage.py": "8 passed, 1 skipped, 0 failed",
    "sqlite_storage.py": "8 passed, 1 skipped, 0 failed",
    "timed_storage.py": "8 passed, 1 skipped, 0 failed",
}
NEEDS_REDIS = "redis_storage.py"
PYTEST_EXAMPLE = "test_sqlite_storage.py"
# Package modules the pages include (docs/demo.rst walks through the demo's code); their
# own tests run them: tests/web/test_demo.py and tests/web/test_browser_demo.py.
PACKAGE_INCLUDES = {ROOT / "trio_sessions" / "_demo_app.py"}
PUBLIC_MODULES = [
    "trio_sessions",
    "trio_sessions.testing",
    "trio_sessions.quart",
    "trio_sessions.asgi",
    "trio_sessions.asyncio",
]


def run(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in docs/examples
        "COLUMNS": "80",  # argparse wraps help to the terminal's width
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# ----------------------------------------------------------------- the example files


def test_every_example_is_run_here() -> None:
    files = {path.name for path in EXAMPLES.glob("*.py")}
    assert files == {*RUNNABLE, NEEDS_REDIS, PYTEST_EXAMPLE}


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_example_runs(name: str, tmp_path: Path) -> None:
    output = succeeded(run(str(EXAMPLES / name), cwd=tmp_path))
    assert RUNNABLE[name] in output


def test_redis_example_runs_against_a_private_server(tmp_path: Path, redis_url: str) -> None:
    output = succeeded(run(str(EXAMPLES / NEEDS_REDIS), redis_url, cwd=tmp_path))
    assert "b'{\"user\": 42}' under b'myapp:{" in output


def test_pytest_example_passes() -> None:
    result = run("-m", "pytest", "-q", "-p", "no:cacheprovider", PYTEST_EXAMPLE, cwd=EXAMPLES)
    assert "8 passed, 1 skipped" in succeeded(result)


def literalincludes() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for match in re.finditer(r"^\.\. literalinclude:: (\S+)", page.read_text(), re.M):
            yield page.name, match.group(1)


def test_pages_include_only_examples_that_run_and_every_example_is_shown() -> None:
    included = set()
    for page, target in literalincludes():
        path = (DOCS / target).resolve()
        if path in PACKAGE_INCLUDES:
            continue
        assert path.parent == EXAMPLES, f"{page}: {target}"
        assert path.is_file(), f"{page}: {target}"
        included.add(path.name)
    assert included == {*RUNNABLE, NEEDS_REDIS, PYTEST_EXAMPLE}


# ------------------------------------------------------- inline blocks and docstrings

_DIRECTIVE = re.compile(r"^(\s*)\.\. code-block:: *(\S+)\s*$")


def literal_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line, language, code)`` for each literal block of a reST text.

    A ``::`` block takes the page's default language (Python) unless its first line
    starts with ``$`` (a shell session); ``.. code-block::`` names its language.
    """
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        if directive:
            language = directive.group(2)
        elif line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            language = "default"
        else:
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        start = index + 1
        # Skip the directive's options and the blank line before the content.
        while start < len(lines) and (
            not lines[start].strip() or lines[start].strip().startswith(":")
        ):
            start += 1
        end = start
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        block = lines[start:end]
        code = "\n".join(block)
        if language == "default":
            first = next((b.strip() for b in block if b.strip()), "")
            language = "console" if first.startswith("$") else "python"
        if code.strip():
            yield index + 1, language, _dedent(code)
        index = max(end, index + 1)


def _dedent(code: str) -> str:
    lines = code.splitlines()
    margin = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[margin:] for line in lines).strip("\n") + "\n"


def compiles(code: str, where: str) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # snippets may await at top level
    compile(code, where, "exec", flags=flags, dont_inherit=True)


def python_blocks_in_pages() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for line, language, code in literal_blocks(page.read_text()):
            if language in ("python", "py", "python3"):
                yield f"{page.name}:{line}", code


def public_objects() -> Iterator[tuple[str, object]]:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        yield module_name, module
        for name in module.__all__:
            value = getattr(module, name)
            yield f"{module_name}.{name}", value
            if inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if not attribute.startswith("_"):
                        yield f"{module_name}.{name}.{attribute}", member


def python_blocks_in_docstrings() -> Iterator[tuple[str, str]]:
    for where, value in public_objects():
        if isinstance(value, property):
            value = value.fget
        doc = inspect.getdoc(value) if callable(value) or inspect.ismodule(value) else None
        for line, language, code in literal_blocks(doc or ""):
            if language == "python":
                yield f"{where} (docstring line {line})", code


PAGE_BLOCKS = list(python_blocks_in_pages())
DOCSTRING_BLOCKS = list(python_blocks_in_docstrings())


@pytest.mark.parametrize(("where", "code"), PAGE_BLOCKS, ids=[w for w, _ in PAGE_BLOCKS])
def test_inline_python_in_pages_compiles(where: str, code: str) -> None:
    compiles(code, where)


@pytest.mark.parametrize(("where", "code"), DOCSTRING_BLOCKS, ids=[w for w, _ in DOCSTRING_BLOCKS])
def test_python_in_docstrings_compiles(where: str, code: str) -> None:
    compiles(code, where)


def test_literal_block_finder_finds_what_the_pages_hold() -> None:
    # Guards the finder itself: the pages have inline Python, and console blocks are not
    # mistaken for it.
    assert len(PAGE_BLOCKS) >= 5
    assert len(DOCSTRING_BLOCKS) >= 3
    sample = "Run::\n\n    $ trio-sessions stats DIR\n\nCode::\n\n    x = 1\n"
    assert [language for _, language, _ in literal_blocks(sample)] == ["console", "python"]


# ---------------------------------------------------------------------------- README


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_readme_ten_lines_run(tmp_path: Path) -> None:
    first = readme_python_blocks()[0]
    assert "MemoryStorage" in first
    assert "trio.run(main)" in first
    assert succeeded(run("-c", first, cwd=tmp_path)) == "b'{\"user\": 42}'\n"


def test_readme_other_python_blocks_compile() -> None:
    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    for number, code in enumerate(blocks[1:], start=2):
        compiles(code, f"README.md python block {number}")


# ------------------------------------------------------- command line, values, checks


def cli_page() -> str:
    return (DOCS / "cli.rst").read_text()


@pytest.mark.parametrize("command", [[], ["check"], ["demo"], ["purge"], ["stats"]])
def test_cli_help_in_the_docs_is_current(command: list[str], tmp_path: Path) -> None:
    output = succeeded(run("-m", "trio_sessions", *command, "--help", cwd=tmp_path))
    documented = "\n".join(
        code for _, language, code in literal_blocks(cli_page()) if language == "text"
    )
    help_text = "\n".join(line.rstrip() for line in output.splitlines())
    assert help_text in documented


def test_cli_check_output_in_the_docs_is_current() -> None:
    shown = next(
        code
        for _, language, code in literal_blocks(cli_page())
        if language == "console" and code.startswith("$ trio-sessions check sqlite_storage")
    )
    command, _, expected = shown.partition("\n")
    arguments = command.removeprefix("$ trio-sessions ").split()
    output = succeeded(run("-m", "trio_sessions", *arguments, cwd=EXAMPLES))
    assert output == expected


def test_documented_constants_have_their_values() -> None:
    text = "\n".join(page.read_text() for page in PAGES)
    documented = re.findall(r"^\.\. data:: (\w+)\n +:value: (.+)$", text, re.M)
    assert len(documented) >= 2
    for name, value in documented:
        assert repr(getattr(trio_sessions, name)) == value, name


def test_the_docs_list_every_conformance_check() -> None:
    from trio_sessions.testing import CHECKS

    page = (DOCS / "custom.rst").read_text()
    listed = re.findall(r"^   \* - ``(\w+)``$", page, re.M)
    assert listed == list(CHECKS)
