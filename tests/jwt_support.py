"""Keys generated per test run and tokens signed with them, for the auth tests."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "an-hs256-secret-of-at-least-32-bytes!"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]  # the public JWK, as an identity provider publishes it

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg,
                          headers={"kid": self.kid, **header})


def _public_jwk(private: Any, alg: str, kid: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = json.loads(algo.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def new_keys() -> dict[str, SigningKey]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    keys = {
        "RS256": SigningKey("rsa-1", "RS256", rsa_key, _public_jwk(rsa_key, "RS256", "rsa-1")),
        "ES256": SigningKey("ec-1", "ES256", ec_key, _public_jwk(ec_key, "ES256", "ec-1")),
        "EdDSA": SigningKey("ed-1", "EdDSA", ed_key, _public_jwk(ed_key, "EdDSA", "ed-1")),
    }
    return keys


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk for k in keys]}


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "iss": "https://idp.test", "aud": "bff", "iat": now,
            "exp": now + 300, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=header or None)
