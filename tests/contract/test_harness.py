"""The conformance harness must catch broken storages, not only pass good ones."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.dict_storage import CheckThenWriteStorage, DictStorage
from trio_sessions import MemoryStorage, check_session_id
from trio_sessions._abc import Provider
from trio_sessions.testing import CHECKS, ManualClock, check_storage


class NonAtomicStorage(DictStorage):
    """Stores each chunk as it arrives: readers can see a prefix of a new value."""

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        check_session_id(session_id)
        expires = math.inf if ttl is None else self.clock() + ttl
        self.data[session_id] = (b"", expires)
        data = self.data

        class Stream(trio.abc.SendStream):
            async def send_all(self, chunk: bytes | bytearray | memoryview) -> None:
                await trio.lowlevel.checkpoint()
                data[session_id] = (data[session_id][0] + bytes(chunk), expires)

            async def wait_send_all_might_not_block(self) -> None:
                await trio.lowlevel.checkpoint()

            async def aclose(self) -> None:
                await trio.lowlevel.checkpoint()

        await provider(Stream())


class TtlIgnoringStorage(DictStorage):
    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await super().store(session_id, data, None)


class WrappingStorage(DictStorage):
    """Hides the provider's exception behind its own."""

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        try:
            await super().write(session_id, provider, ttl=ttl)
        except Exception as exc:
            raise RuntimeError("write failed") from exc


class LaxIdStorage(DictStorage):
    """Accepts any id for reads, like a storage that forgot the id policy."""

    async def read_bytes(self, session_id: str) -> bytes:
        try:
            return await super().read_bytes(session_id)
        except ValueError:
            return b""


async def failed_checks(factory: Callable[..., Any], *checks: str) -> set[str]:
    with trio.fail_after(120):
        report = await check_storage(factory, max_examples=60, checks=checks or None)
    assert len(report.results) == len(checks or CHECKS)
    return {result.name for result in report.results if not result.passed}


async def test_good_storages_pass_every_check() -> None:
    assert await failed_checks(MemoryStorage) == set()
    assert await failed_checks(lambda clock: DictStorage(clock=clock)) == set()


async def test_torn_writes_are_caught() -> None:
    failed = await failed_checks(
        lambda clock: NonAtomicStorage(clock=clock), "concurrency", "model"
    )
    assert failed == {"concurrency", "model"}


async def test_ignored_ttl_is_caught() -> None:
    failed = await failed_checks(lambda clock: TtlIgnoringStorage(clock=clock), "ttl", "model")
    assert failed == {"ttl", "model"}


async def test_wrapped_callback_errors_are_caught() -> None:
    failed = await failed_checks(
        lambda clock: WrappingStorage(clock=clock), "errors_and_checkpoints", "model"
    )
    assert failed == {"errors_and_checkpoints", "model"}


async def test_accepting_invalid_ids_is_caught() -> None:
    assert await failed_checks(lambda clock: LaxIdStorage(clock=clock), "ids") == {"ids"}


async def test_report_names_the_failing_example() -> None:
    report = await check_storage(
        lambda clock: TtlIgnoringStorage(clock=clock), checks=["model"], max_examples=60
    )
    text = report.format()
    assert "FAIL  model" in text
    assert "failing example: operations: [" in text
    assert "advance" in text  # the shrunk example needs time to pass
    assert text.endswith("0 passed, 1 failed")


async def test_unknown_check_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown check"):
        await check_storage(MemoryStorage, checks=["nope"])


def test_manual_clock_only_moves_forward() -> None:
    clock = ManualClock(10)
    clock.advance(2.5)
    assert clock() == 12.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


async def test_non_atomic_compare_and_set_is_caught() -> None:
    assert await failed_checks(CheckThenWriteStorage, "conditional") == {"conditional"}
    # The same storage passes every check of the plain contract.
    plain = [name for name in CHECKS if name != "conditional"]
    assert await failed_checks(CheckThenWriteStorage, *plain) == set()


async def test_conditional_check_is_skipped_with_a_reason_without_the_capability() -> None:
    with trio.fail_after(60):
        report = await check_storage(lambda clock: DictStorage(clock=clock), checks=["conditional"])
    (result,) = report.results
    assert result.passed
    assert result.skipped is not None
    assert "DictStorage offers no conditional writes" in result.skipped
    assert "SKIP  conditional" in report.format()


def test_every_check_has_its_pytest_method() -> None:
    from trio_sessions.testing import StorageConformance

    missing = [name for name in CHECKS if not hasattr(StorageConformance, f"test_{name}")]
    assert missing == []
