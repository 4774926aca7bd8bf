"""How session data becomes bytes and back."""

from __future__ import annotations

import json
from typing import Any, Protocol, final

__all__ = ["JSONSerializer", "Serializer"]


class Serializer(Protocol):
    """Turns session data into bytes and back. Never use pickle for this."""

    def dumps(self, data: dict[str, Any]) -> bytes: ...

    def loads(self, data: bytes) -> dict[str, Any]:
        """Return the data; raise any exception for bytes it cannot read."""
        ...


@final
class JSONSerializer:
    """The default serializer: compact UTF-8 JSON of a dict with string keys.

    Values round-trip as JSON does: tuples come back as lists, and ``NaN`` is refused.
    """

    __slots__ = ()

    def dumps(self, data: dict[str, Any]) -> bytes:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()

    def loads(self, data: bytes) -> dict[str, Any]:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("session data is not a JSON object")
        return value
