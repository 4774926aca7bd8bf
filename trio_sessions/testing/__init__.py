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

Running the checks requires the ``testing`` extra (hypothesis); importing this module,
`ManualClock`, `read_all` or :mod:`trio_sessions.testing.servers` does not load it.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from .._abc import SessionStorage as _SessionStorage
from .._base import StorageBase as _StorageBase
from ._tools import ManualClock, StorageFactory, read_all

if TYPE_CHECKING:
    from ._checks import CHECKS
    from ._checks import Context as _Context

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceReport",
    "ManualClock",
    "StorageConformance",
    "StorageFactory",
    "check_storage",
    "read_all",
]


def __getattr__(name: str) -> Any:
    # The checks are made with hypothesis: it is imported when they are first needed,
    # so that ManualClock, read_all and the servers import without it.
    if name == "CHECKS":
        from ._checks import CHECKS

        globals()[name] = CHECKS
        return CHECKS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    #: What failed, without the traceback: the failing assertion's message (the type and
    #: message of any other exception), one line per distinct error raised together.
    summary: str | None = None


@dataclass(frozen=True)
class ConformanceReport:
    """What `check_storage` found."""

    #: One result per check, in the order they ran; or only one, named ``"factory"``,
    #: when the factory could not make a storage that opens and closes.
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
                if verbose and result.error:
                    error = result.error.rstrip()
                else:
                    error = result.summary or (result.error or "").strip()
                lines.extend("      " + line for line in error.splitlines())
        failed = sum(not result.passed for result in self.results)
        skipped = sum(result.skipped is not None for result in self.results)
        passed = len(self.results) - failed - skipped
        lines.append(
            f"{passed} passed, " + (f"{skipped} skipped, " if skipped else "") + f"{failed} failed"
        )
        return "\n".join(lines)


def _clock_style(factory: Callable[..., Any]) -> str:
    """How *factory* takes the clock: ``"positional"``, its keyword's name, or ``"none"``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return "positional"
    kinds = {p.kind for p in parameters}
    if kinds & {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}:
        return "positional"
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return "positional"
    for parameter in parameters:
        if parameter.name in ("clock", "wall_clock"):
            return parameter.name
    return "none"


def _as_factory(factory: Callable[..., Any]) -> tuple[StorageFactory, bool]:
    """Adapt *factory* to the harness; also return whether it takes the clock."""
    style = _clock_style(factory)
    if style == "positional":
        return factory, True
    if style in ("clock", "wall_clock"):
        return (lambda clock: factory(**{style: clock})), True
    return (lambda clock: factory()), False


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors in *error*: itself, or those inside an exception group, flattened."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in _leaves(inner)]


def _line(error: BaseException) -> str:
    """``Type: message``; for an error without a message, where it was raised."""
    name = type(error).__qualname__
    message = str(error).strip()
    if message:
        return f"{name}: {message}"
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return name
    frame = frames[-1]
    return f"{name} at {os.path.basename(frame.filename)}:{frame.lineno}, in {frame.name}"


def _summary(error: BaseException) -> str:
    """What failed, read from the exception objects rather than from the formatted text
    (which ends with hypothesis's notes or an exception group's table)."""
    lines: dict[str, int] = {}
    if isinstance(error, BaseExceptionGroup) and type(error) not in (
        ExceptionGroup,
        BaseExceptionGroup,
    ):
        lines[f"{type(error).__qualname__}: {error.message}"] = 1  # e.g. hypothesis's Flaky
    for leaf in _leaves(error):
        line = _line(leaf)
        lines[line] = lines.get(line, 0) + 1
    return "\n".join(line if n == 1 else f"{line} ({n} times)" for line, n in lines.items())


def _run_check(name: str, ctx: _Context) -> CheckResult:
    from ._checks import CHECKS, NotApplicable

    check = CHECKS[name]
    description = (check.__doc__ or "").strip().splitlines()[0]
    ctx.example = None
    try:
        check(ctx)
    except NotApplicable as reason:
        return CheckResult(name, description, True, skipped=str(reason))
    except Exception as error:
        return CheckResult(
            name,
            description,
            False,
            traceback.format_exc(),
            ctx.example,
            summary=_summary(error),
        )
    return CheckResult(name, description, True)


#: The name of the result that stands for every check when the factory cannot make a
#: working storage (`check_storage` then runs no check).
_FACTORY_CHECK = "factory"
_FACTORY_DESCRIPTION = "The factory makes a storage that opens and closes (before any check)."


def _not_set_up(storage: object) -> str | None:
    """Why *storage*, a `StorageBase`, is unusable: its ``__init__`` skipped the base's."""
    if not isinstance(storage, _StorageBase) or all(
        hasattr(storage, attribute) for attribute in ("_max_size", "_closed")
    ):
        return None
    cls = type(storage)
    base = next(c for c in cls.__mro__ if c.__module__.startswith("trio_sessions."))
    init = next((c for c in cls.__mro__ if "__init__" in vars(c)), cls)
    return (
        f"{init.__qualname__}.__init__() does not call super().__init__(), so the "
        f"{base.__name__} it extends is not set up and every method would fail "
        f"(AttributeError: {cls.__name__!r} object has no attribute '_closed'). Call "
        f"super().__init__() in {init.__qualname__}.__init__() (pass max_size= there "
        "to change the size limit)."
    )


async def _open_once(factory: StorageFactory) -> CheckResult | None:
    """Make, open and close one storage; a failure here is reported once, not per check."""

    def failed(summary: str, error: str | None = None) -> CheckResult:
        summary += "\nNo check ran."
        return CheckResult(_FACTORY_CHECK, _FACTORY_DESCRIPTION, False, error, summary=summary)

    await trio.lowlevel.checkpoint()
    problem = None
    try:
        with trio.fail_after(60):
            await trio.lowlevel.checkpoint()  # one inside the scope, whatever the factory does
            made: Any = factory(ManualClock())
            problem = _not_set_up(made)
            if problem is None and not (hasattr(made, "__aenter__") and hasattr(made, "__aexit__")):
                problem = (
                    f"the factory returned {type(made).__qualname__}, not a SessionStorage "
                    "or an async context manager yielding one"
                )
            if problem is None:
                async with made as storage:
                    problem = _not_set_up(storage)
                    if problem is None and not isinstance(storage, _SessionStorage):
                        problem = (
                            "the factory's context manager yielded "
                            f"{type(storage).__qualname__}, not a SessionStorage"
                        )
    except Exception as error:
        if problem is None:  # else closing what is not a storage failed as well
            what = f"making, opening or closing a storage failed: {_summary(error)}"
            return failed(what, traceback.format_exc())
    return None if problem is None else failed(problem)


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
        takes a positional argument, as ``clock=`` (or ``wall_clock=``) if it has a
        keyword-only parameter of that name (so a storage class such as `MemoryStorage`
        works as it is), else with no argument. Returns a `SessionStorage` or an async
        context manager yielding one.
      clock_controlled: whether the storage takes its time from the clock it is given;
        by default, whether *open_storage* accepts one.
      max_examples: hypothesis examples per property-based check.
      checks: names from `CHECKS` to run (default: all).

    Before the checks, one storage is made, opened and closed: if that fails (the factory
    raises, returns something else than a storage, or a `BytesStorage` subclass forgot to
    call ``super().__init__()``), the report holds that one failure and no check runs.

    The checks run one at a time; hypothesis drives them from a worker thread and each
    example runs back in this trio run, so the storage lives in the caller's event loop.
    """
    from ._checks import CHECKS, Context

    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int (got {max_examples!r})")
    factory, takes_clock = _as_factory(open_storage)
    if clock_controlled is None:
        clock_controlled = takes_clock

    def run(fn: Callable[[], Awaitable[Any]]) -> Any:
        return trio.from_thread.run(fn)

    names = list(checks if checks is not None else CHECKS)
    for name in names:
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; choose from {', '.join(CHECKS)}")
    ctx = Context(factory, clock_controlled, max_examples, run)
    await trio.lowlevel.checkpoint()
    unusable = await _open_once(factory)
    if unusable is not None:
        return ConformanceReport((unusable,))
    results = []
    for name in names:
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
        from ._checks import CHECKS, Context, NotApplicable

        ctx = Context(self.open_storage, self.clock_controlled, self.max_examples, trio.run)
        try:
            CHECKS[name](ctx)
        except NotApplicable as reason:
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
