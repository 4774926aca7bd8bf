"""The suite's command line: ``python -m benchmarks.suite [options]``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from . import COMMAND, SECTIONS, run

#: The options that ``results.json`` records as given (all but the size of the run).
_RECORDED = ("only", "output", "tmp", "no_redis", "no_postgres", "no_charts")
_OUTPUT = "bench-results"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            "Measure every storage against baselines and peer libraries in one run; write "
            "results.json, results.md and PNG charts (with the 'bench' extra) to DIR. "
            "Redis and PostgreSQL run as private servers when their binaries are found. "
            "The default run takes a few minutes; --quick under a minute."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer and shorter measurements")
    size.add_argument(
        "--full", action="store_true", help="longer, and up to 1,000,000 stored sessions everywhere"
    )
    size.add_argument("--smoke", action="store_true", help="every step once, tiny (for tests)")
    parser.add_argument("--output", default=_OUTPUT, metavar="DIR", help="default: %(default)s")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"measure only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--tmp", metavar="DIR", help="where file storages write (default: TMPDIR)")
    parser.add_argument("--no-redis", action="store_true", help="do not start a Redis server")
    parser.add_argument(
        "--no-postgres", action="store_true", help="do not start a PostgreSQL server"
    )
    parser.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    return parser


def _command_line(mode: str, args: argparse.Namespace) -> str:
    """The command as a reader would type it again (defaults left out)."""
    command = [*COMMAND.split(), *([f"--{mode}"] if mode != "default" else [])]
    for flag in _RECORDED:
        value = getattr(args, flag)
        if value and value != _OUTPUT:
            option = "--" + flag.replace("_", "-")
            values = value if isinstance(value, list) else [value]
            command += [option] if value is True else [x for v in values for x in (option, v)]
    return shlex.join(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 if every step ran (skipped ones included), 1 if one failed, 2 on a
    usage error (argparse exits)."""
    options = parser()
    args = options.parse_args(argv)
    if args.tmp is not None and not os.path.isdir(args.tmp):
        options.error(f"--tmp {args.tmp!r} is not a directory")
    mode = "quick" if args.quick else "full" if args.full else "smoke" if args.smoke else "default"
    data = run(
        mode,
        Path(args.output),
        sections=args.only or SECTIONS,
        redis=not args.no_redis,
        postgres=not args.no_postgres,
        charts=not args.no_charts,
        tmp=args.tmp,
        command=_command_line(mode, args),
    )
    failed = [item for item in data["skipped"] if item["why"].startswith("failed")]
    skipped = [item for item in data["skipped"] if item not in failed]
    if skipped:
        print()
    for what, why in dict.fromkeys((item["what"], item["why"]) for item in skipped):
        print(f"skipped: {what} ({why})")
    for item in failed:
        print(f"error: {item['what']}: {item['why']}", file=sys.stderr)
    return 1 if failed else 0
