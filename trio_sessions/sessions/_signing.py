"""Optional HMAC signatures of session ids (defence in depth; ids are random either way)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["SecretKey", "Signer"]

SecretKey = str | bytes | Sequence[str | bytes]

_SALT = b"trio-sessions cookie signature\x00"


class Signer:
    """Signs ids with the first key and verifies with every key (key rotation)."""

    __slots__ = ("_keys",)

    def __init__(self, secret_key: SecretKey | None) -> None:
        if secret_key is None:
            self._keys: list[bytes] = []
            return
        keys = [secret_key] if isinstance(secret_key, str | bytes) else list(secret_key)
        if not keys:
            raise ValueError("secret_key must not be an empty sequence")
        self._keys = []
        for key in keys:
            raw = key.encode() if isinstance(key, str) else key
            if not isinstance(raw, bytes) or len(raw) < 16:
                raise ValueError(
                    "every secret key must be str or bytes of at least 16 bytes "
                    "(e.g. secrets.token_bytes(32))"
                )
            # One derived key per purpose, so the same secret can serve other uses safely.
            self._keys.append(hashlib.sha256(_SALT + raw).digest())

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def sign(self, session_id: str) -> str:
        """The transported value for *session_id*: the id, plus its signature if signing."""
        if not self._keys:
            return session_id
        return f"{session_id}.{_signature(self._keys[0], session_id)}"

    def verify(self, session_id: str, signature: str) -> bool:
        """Whether *signature* (empty when absent) is right for *session_id*."""
        if not self._keys:
            return not signature
        if not signature or not signature.isascii():  # (compare_digest refuses non-ASCII)
            return False
        # Check every key (no early exit), so timing says nothing about which matched.
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(_signature(key, session_id), signature)
        return valid


def _signature(key: bytes, session_id: str) -> str:
    digest = hmac.new(key, session_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
