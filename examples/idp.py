"""A stand-in identity provider for the README's "Securing the gateway" example.

    python examples/idp.py serve DIR [--bind 127.0.0.1:9100]   # JWKS at /.well-known/jwks.json
    python examples/idp.py token DIR --sub alice --uid 7 [--scope "orders:read"] [--ttl 300]

`serve` makes an RSA key in DIR (once) and publishes its public half as a JWKS, like any
OpenID Connect provider's `jwks_uri`; `token` signs a token with it (RS256, `kid`
"example-1", issuer https://idp.example, audience my-bff). For trying things out only:
a real provider keeps its key to itself and authenticates users before it signs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KID, ISSUER, AUDIENCE = "example-1", "https://idp.example", "my-bff"
DEFAULT_BIND = "127.0.0.1:9100"


def _key(folder: Path) -> rsa.RSAPrivateKey:
    path = folder / "idp-key.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        os.chmod(path, 0o600)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def _jwks(key: rsa.RSAPrivateKey) -> bytes:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**public, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()


def serve(folder: Path, bind: str) -> None:
    body = _jwks(_key(folder))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/.well-known/jwks.json"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if found else 2))
            self.end_headers()
            self.wfile.write(body if found else b"{}")

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    host, _, port = bind.rpartition(":")
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


def token(folder: Path, sub: str, uid: int | None, scope: str | None, ttl: int) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now,
                                 "exp": now + ttl}
    if uid is not None:
        claims["uid"] = uid
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, _key(folder), algorithm="RS256", headers={"kid": KID})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="publish the JWKS")
    s.add_argument("dir", type=Path)
    s.add_argument("--bind", default=DEFAULT_BIND)
    t = sub.add_parser("token", help="print a signed token")
    t.add_argument("dir", type=Path)
    t.add_argument("--sub", required=True)
    t.add_argument("--uid", type=int)
    t.add_argument("--scope")
    t.add_argument("--ttl", type=int, default=300)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.dir, args.bind)
    else:
        print(token(args.dir, args.sub, args.uid, args.scope, args.ttl))


if __name__ == "__main__":
    main()
