"""``python -m benchmarks.soak [--quick]``: see the package's docstring."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import trio

from .run import BACKENDS, PLANS, SCENARIOS, SetupError, run

CODE_ROOT = Path(__file__).resolve().parent.parent.parent


def _names(text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)} (choose from {allowed})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=(
            "Soak and chaos runs: real HTTP traffic through a Quart-Trio app per backend "
            "while processes, servers and disks fail; counts what was lost."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CI run: fewer users, short scenarios, no disk-full or slowloris",
    )
    parser.add_argument(
        "--backends",
        type=lambda text: _names(text, BACKENDS),
        default=BACKENDS,
        help=f"comma-separated, from {','.join(BACKENDS)}",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: _names(text, SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: the mode's)",
    )
    parser.add_argument("--seconds", type=float, help="load per scenario (default: the mode's)")
    parser.add_argument("--users", type=int, help="virtual users (default: the mode's)")
    parser.add_argument(
        "--disk-full",
        choices=("auto", "loop", "rlimit"),
        default="auto",
        help="a loop-mounted file system filled up (root), or an RLIMIT_FSIZE of 0",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("soak-results"))
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    parser.add_argument(
        "--code-label", help="what code ran, for the report (default: the last git commit)"
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    command = "python -m benchmarks.soak " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        data = trio.run(
            lambda: run(
                mode,
                args.backends,
                args.scenarios or PLANS[mode].scenarios,
                args.output,
                seconds=args.seconds,
                users=args.users,
                disk_full=args.disk_full,
                seed=args.seed,
                code_root=CODE_ROOT,
                keep=args.keep,
                command=command.strip(),
                code_label=args.code_label,
            )
        )
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.output / "results.md").read_text())
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
