"""The public conformance harness: check that a storage keeps the `SessionStorage` contract.

Two ways to run the same checks:

* with pytest, subclass `StorageConformance` and implement ``open_storage``::

      class TestMyStorage(StorageConformance):
          def open_storage(self, clock):
              return MyStorage(clock=clock)

* from any trio program (or ``trio-sessions check MODULE:FACTORY``)::

      report = await check_storage(lambda clock: MyStorage(clock=clock))
      print(report.format())

The factory receives a `ManualClock`. A storage that takes its time from it has its expiry
checked instantly; a storage that cannot (for example a server that keeps time itself) is
checked with short real sleeps: pass ``clock_controlled=False`` (``check_storage`` guesses
this from a factory that takes no argument). The factory is called once per example and
may return a `SessionStorage` (closed by the harness) or any async context manager that
yields one. Each example uses fresh random ids, so a factory may hand out storages that
share one backend (one Redis server, one directory).

Requires the ``testing`` extra (hypothesis).
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from ._checks import CHECKS, ManualClock, StorageFactory
from ._checks import Context as _Context
from ._checks import NotApplicable as _NotApplicable

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceReport",
    "ManualClock",
    "StorageConformance",
    "StorageFactory",
    "check_storage",
]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    description: str
    passed: bool
    #: The assertion or exception that failed the check, with its traceback.
    error: str | None = None
    #: The failing input, shrunk by hypothesis where the check is property-based.
    example: str | None = None
    #: Why the check did not apply (an optional capability the storage lacks).
    skipped: str | None = None


@dataclass(frozen=True)
class ConformanceReport:
    """What `check_storage` found."""

    #: One result per check, in the order they ran.
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(result.passed for result in self.results)

    def format(self, *, verbose: bool = False) -> str:
        """A readable report: one line per check, details for failures."""
        lines = []
        for result in self.results:
            mark = "SKIP" if result.skipped else "PASS" if result.passed else "FAIL"
            lines.append(f"{mark}  {result.name:<24} {result.description}")
            if result.skipped:
                lines.append(f"      {result.skipped}")
            if not result.passed:
                if result.example:
                    lines.append(f"      failing example: {result.example}")
                if result.error:
                    error = result.error if verbose else result.error.strip().splitlines()[-1]
                    lines.extend("      " + line for line in error.splitlines())
        failed = sum(not result.passed for result in self.results)
        skipped = sum(result.skipped is not None for result in self.results)
        passed = len(self.results) - failed - skipped
        lines.append(
            f"{passed} passed, " + (f"{skipped} skipped, " if skipped else "") + f"{failed} failed"
        )
        return "\n".join(lines)


def _clock_style(factory: Callable[..., Any]) -> str:
    """How *factory* takes the clock: ``"positional"``, ``"keyword"`` or ``"none"``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return "positional"
    kinds = {p.kind for p in parameters}
    if kinds & {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}:
        return "positional"
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return "positional"
    if any(p.name == "clock" for p in parameters):
        return "keyword"
    return "none"


def _as_factory(factory: Callable[..., Any]) -> tuple[StorageFactory, bool]:
    """Adapt *factory* to the harness; also return whether it takes the clock."""
    style = _clock_style(factory)
    if style == "positional":
        return factory, True
    if style == "keyword":
        return (lambda clock: factory(clock=clock)), True
    return (lambda clock: factory()), False


def _run_check(name: str, ctx: _Context) -> CheckResult:
    check = CHECKS[name]
    description = (check.__doc__ or "").strip().splitlines()[0]
    ctx.example = None
    try:
        check(ctx)
    except _NotApplicable as reason:
        return CheckResult(name, description, True, skipped=str(reason))
    except Exception:
        return CheckResult(name, description, False, traceback.format_exc(), ctx.example)
    return CheckResult(name, description, True)


async def check_storage(
    open_storage: Callable[..., Any],
    *,
    clock_controlled: bool | None = None,
    max_examples: int = 50,
    checks: Iterable[str] | None = None,
) -> ConformanceReport:
    """Run the conformance checks against storages made by *open_storage*.

    Args:
      open_storage: called for every example with a `ManualClock`: positionally if it
        takes a positional argument, as ``clock=`` if it has a keyword-only ``clock``
        parameter (so a storage class such as `MemoryStorage` works as it is), else with
        no argument. Returns a `SessionStorage` or an async context manager yielding one.
      clock_controlled: whether the storage takes its time from the clock it is given;
        by default, whether *open_storage* accepts one.
      max_examples: hypothesis examples per property-based check.
      checks: names from `CHECKS` to run (default: all).

    The checks run one at a time; hypothesis drives them from a worker thread and each
    example runs back in this trio run, so the storage lives in the caller's event loop.
    """
    factory, takes_clock = _as_factory(open_storage)
    if clock_controlled is None:
        clock_controlled = takes_clock

    def run(fn: Callable[[], Awaitable[Any]]) -> Any:
        return trio.from_thread.run(fn)

    ctx = _Context(factory, clock_controlled, max_examples, run)
    await trio.lowlevel.checkpoint()
    results = []
    for name in checks if checks is not None else CHECKS:
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; choose from {', '.join(CHECKS)}")
        results.append(await trio.to_thread.run_sync(_run_check, name, ctx))
    return ConformanceReport(tuple(results))


class StorageConformance:
    """Subclass in a pytest module to run every conformance check on your storage.

    Implement ``open_storage(clock)``; set ``clock_controlled = False`` if the storage
    cannot take its time from the given `ManualClock`, and ``max_examples`` to trade
    thoroughness for time. Each test runs the storage in a fresh `trio.run`, so the class
    needs no pytest plugin (it also works beside pytest-trio's ``trio_mode``).
    """

    #: Whether the storage takes its time from the `ManualClock` it is given; if not,
    #: expiry is checked with short real sleeps.
    clock_controlled: ClassVar[bool] = True
    #: Hypothesis examples per property-based check.
    max_examples: ClassVar[int] = 50

    def open_storage(self, clock: ManualClock) -> Any:
        """Return a fresh `SessionStorage` (or an async context manager yielding one)."""
        raise NotImplementedError

    def _check(self, name: str) -> None:
        ctx = _Context(self.open_storage, self.clock_controlled, self.max_examples, trio.run)
        try:
            CHECKS[name](ctx)
        except _NotApplicable as reason:
            import pytest

            pytest.skip(str(reason))

    def test_errors_and_checkpoints(self) -> None:
        self._check("errors_and_checkpoints")

    def test_streams(self) -> None:
        self._check("streams")

    def test_ids(self) -> None:
        self._check("ids")

    def test_size(self) -> None:
        self._check("size")

    def test_ttl(self) -> None:
        self._check("ttl")

    def test_close(self) -> None:
        self._check("close")

    def test_model(self) -> None:
        self._check("model")

    def test_concurrency(self) -> None:
        self._check("concurrency")

    def test_conditional(self) -> None:
        """Skipped, with the reason, for a storage without conditional writes."""
        self._check("conditional")
