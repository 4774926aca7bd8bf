"""The conformance checks, by name: each one drives fresh storages and asserts the contract."""

from __future__ import annotations

from collections.abc import Callable

from ._conditional import check_conditional
from ._context import Context, NotApplicable
from ._model import check_model
from ._scenarios import (
    check_close,
    check_concurrency,
    check_errors_and_checkpoints,
    check_ids,
    check_size,
    check_streams,
    check_ttl,
)

__all__ = ["CHECKS", "Context", "NotApplicable"]

#: Every check, by name, in the order they run.
CHECKS: dict[str, Callable[[Context], None]] = {
    "errors_and_checkpoints": check_errors_and_checkpoints,
    "streams": check_streams,
    "ids": check_ids,
    "size": check_size,
    "ttl": check_ttl,
    "close": check_close,
    "model": check_model,
    "concurrency": check_concurrency,
    "conditional": check_conditional,
}
