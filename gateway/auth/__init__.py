"""Authentication at the edge: bearer tokens (JWT), API keys, and the caller's `Identity`.

PyJWT (with `cryptography`) verifies the signatures; the key set and its refresh are ours
(`jwks.py`), fetched with httpx on the event loop, because PyJWT's `PyJWKClient` fetches
with blocking urllib.
"""

from .apikeys import ApiKeys
from .identity import ANONYMOUS, Identity, missing_scopes, scopes_of
from .jwks import JwksCache, Key, KeySet, parse_jwks, read_jwks_file
from .tokens import TokenPolicy, read_header, verify

__all__ = [
    "ANONYMOUS",
    "ApiKeys",
    "Identity",
    "JwksCache",
    "Key",
    "KeySet",
    "TokenPolicy",
    "missing_scopes",
    "parse_jwks",
    "read_header",
    "read_jwks_file",
    "scopes_of",
    "verify",
]
