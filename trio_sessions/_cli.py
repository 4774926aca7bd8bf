"""The ``trio-sessions`` command line.

Each command imports what it needs when it runs: ``trio-sessions purge --help`` loads
neither hypothesis, Quart nor a database driver. The benchmark suite is not part of the
package: run it from a checkout with ``python -m benchmarks.suite``.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

__all__ = ["main"]


class UsageError(Exception):
    """A bad argument found once the command runs: reported like argparse's own errors,
    after the command's usage line, with exit status 2."""


class MissingExtra(Exception):
    """A command needs an optional dependency: reported with the command to install it,
    exit status 2."""

    def __init__(self, what: str, extra: str, error: ImportError) -> None:
        super().__init__(
            f'{what} needs the {extra!r} extra ({error}): pip install "trio-sessions[{extra}]"'
        )


@dataclass(frozen=True)
class _Number:
    """An argparse type: *convert* the text, then refuse values outside *bounds*."""

    convert: Callable[[str], Any]
    expected: str
    valid: Callable[[Any], bool]
    bounds: str
    #: How the usage line names such a value.
    metavar: str

    def __call__(self, text: str) -> Any:
        try:
            value = self.convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}") from None
        if not self.valid(value):
            got = repr(text) if self.convert is float else str(value)
            raise argparse.ArgumentTypeError(f"must be {self.bounds}, got {got}")
        return value

    def add_to(
        self, parser: argparse.ArgumentParser, flag: str, *, default: Any, help: str
    ) -> None:
        """Add the option *flag* of this type; its help states the bounds and the default."""
        help = f"{help} ({self.bounds}; default: %(default)s)"
        parser.add_argument(flag, type=self, default=default, metavar=self.metavar, help=help)


_positive_int = _Number(int, "a whole number", lambda v: v >= 1, "at least 1", "N")
_port = _Number(int, "a port number", lambda v: 0 <= v <= 65535, "from 0 to 65535", "PORT")
_seconds = _Number(
    float,
    "a number of seconds",
    lambda v: not math.isnan(v) and v >= 0,
    "a number of seconds >= 0",
    "SECONDS",
)


def _load(target: str) -> Callable[..., Any]:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected MODULE:FACTORY, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(obj):
        raise UsageError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


def _builtin_targets() -> list[tuple[str, Callable[..., Any]]]:
    from .storages._directory import DirectoryStorage
    from .storages._memory import MemoryStorage

    root = tempfile.mkdtemp(prefix="trio-sessions-check-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return [
        ("MemoryStorage", MemoryStorage),
        ("DirectoryStorage", functools.partial(DirectoryStorage, root)),
    ]


def _check(args: argparse.Namespace) -> int:
    try:
        from .testing import CHECKS, check_storage
    except ImportError as exc:  # hypothesis missing
        raise MissingExtra("the check", "testing", exc) from None
    for name in args.only or ():
        if name not in CHECKS:
            choices = ", ".join(map(repr, CHECKS))
            raise UsageError(f"argument --only: invalid choice: {name!r} (choose from {choices})")
    targets = [(t, _load(t)) for t in args.factory] if args.factory else _builtin_targets()
    failed = False
    for label, factory in targets:
        print(f"== {label}")
        run = functools.partial(
            check_storage,
            factory,
            clock_controlled=False if args.real_time else None,
            max_examples=args.max_examples,
            checks=args.only or None,
        )
        report = trio.run(run)
        print(report.format(verbose=args.verbose))
        failed = failed or not report.passed
    return 1 if failed else 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import main as demo_main

    return demo_main(args.host, args.port, args.root)


def _directory_storage(directory: str) -> Any:
    from ._errors import StorageError
    from .storages._directory import DirectoryStorage, root_problem

    if not os.path.isdir(directory):
        raise UsageError(f"{directory!r} is not a directory")
    problem = root_problem(directory)  # e.g. a mistyped path: never purge /etc
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    try:
        return DirectoryStorage(directory)
    except StorageError as exc:
        raise SystemExit(f"error: {exc}") from None


def _purge_directory(args: argparse.Namespace) -> int:
    from ._errors import StorageError

    storage = _directory_storage(args.directory)
    try:
        result = trio.run(functools.partial(storage.purge, temp_grace=args.temp_grace))
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"purged {result.expired} expired sessions, {result.corrupt} unreadable files and "
        f"{result.temporary} stale temporary files from {args.directory}"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ._errors import StorageError

    try:
        stats = trio.run(_directory_storage(args.directory).scan)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"sessions: {stats.sessions}")
    print(f"bytes: {stats.bytes}")
    print(f"temporary files: {stats.temporary}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    if args.directory is not None:
        return _purge_directory(args)
    from ._errors import StorageError
    from .storages._postgres import open_postgres_storage

    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("purging PostgreSQL", "postgres", exc) from None

    async def purge() -> int:
        async with open_postgres_storage(args.postgres, table=args.table, create_table=False) as s:
            return (await s.purge()).expired

    try:
        deleted = trio.run(purge)
    except ValueError as exc:  # a bad --table or DSN
        raise UsageError(str(exc)) from None
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"purged {deleted} expired sessions from {args.table}")
    return 0


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[[argparse.Namespace], int],
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """Add the command *name*, which *run* carries out."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run, parser=parser)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-sessions", description="Server-side web sessions for trio."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = _command(
        commands,
        "check",
        _check,
        "run the conformance checks against a storage",
        "Run trio_sessions.testing's conformance checks. FACTORY is called for every "
        "example (with a ManualClock if it accepts one) and returns a SessionStorage or "
        "an async context manager yielding one. Without FACTORY, the built-in storages "
        "are checked.",
    )
    check.add_argument("factory", nargs="*", metavar="MODULE:FACTORY")
    _positive_int.add_to(
        check, "--max-examples", default=50, help="hypothesis examples per property-based check"
    )
    check.add_argument("--only", action="append", metavar="CHECK", help="run only this check")
    check.add_argument(
        "--real-time", action="store_true", help="the storage cannot use the harness's clock"
    )
    check.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")

    demo = _command(
        commands,
        "demo",
        _demo,
        "serve the demo web app (Quart-Trio) with sessions in a directory",
        "Serve a small Quart-Trio app, a login/logout flow that is safe to copy: no "
        'session until login, CSRF tokens on both forms, id rotation, "remember me", '
        "logout on the server. Sessions are kept in a DirectoryStorage in "
        "ROOT/sessions and survive restarts. Needs the 'demo' extra.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    _port.add_to(demo, "--port", default=8000, help="0 picks a free port")
    demo.add_argument(
        "--root",
        default=".trio-sessions",
        help="where the sessions and their signing key are kept (default: %(default)s)",
    )

    purge = _command(
        commands,
        "purge",
        _purge,
        "delete expired sessions from a storage",
        "Delete expired sessions (reads already ignore them); run it from cron.",
    )
    target = purge.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "directory", nargs="?", metavar="DIR", help="a DirectoryStorage root directory"
    )
    target.add_argument("--postgres", metavar="DSN", help="a PostgresStorage database")
    _seconds.add_to(
        purge, "--temp-grace", default=3600.0, help="DIR: remove temporary files older than this"
    )
    purge.add_argument(
        "--table", default="trio_sessions", help="PostgresStorage table (default: %(default)s)"
    )

    stats = _command(
        commands,
        "stats",
        _stats,
        "count the sessions in a DirectoryStorage root",
        "Count session files, payload bytes and temporary files (reads no payload).",
    )
    stats.add_argument("directory", metavar="DIR", help="a DirectoryStorage root directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return its exit status (argparse exits with 2 on a usage error)."""
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except UsageError as exc:
        args.parser.error(str(exc))  # prints the usage line and the error, exits with 2
    except MissingExtra as exc:
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return result
