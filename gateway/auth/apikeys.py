"""`X-API-Key` -> client name, compared in constant time against every configured key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

MAX_KEY_BYTES = 512  # longer presented keys are refused before any comparison


class ApiKeys:
    """The configured keys; `client_for` never reveals by its timing which key came close.

    Every key is compared (no early exit) with `hmac.compare_digest`, so the time taken
    depends on the number of keys, not on how many leading bytes matched.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = tuple((client, key.encode()) for client, key in keys.items())

    def __bool__(self) -> bool:
        return bool(self._keys)

    def client_for(self, presented: str) -> str | None:
        """The client whose key was presented, or None."""
        raw = presented.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_KEY_BYTES:
            return None
        found: str | None = None
        for client, key in self._keys:
            if hmac.compare_digest(raw, key) and found is None:
                found = client
        return found
