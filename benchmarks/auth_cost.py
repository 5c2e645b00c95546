"""What authentication and rate limits cost (issue 15): three A/Bs of `ab.py`, one run.

    python benchmarks/auth_cost.py                 # make bench runs this
    python benchmarks/auth_cost.py --rounds 6 --duration 10 --json benchmarks/results/auth.json

Each A/B is the same gateway (`benchmarks/gateway.toml`, the 3-call fan-out) with and
without `[auth]`, `auth = true` on the endpoint and a `[limits]` rate no client reaches
(1,000,000/second, keyed by the token's `sub`), every request carrying a valid token:

- HS256 token, memory store   (the issue's target: at most 10 % of throughput)
- RS256 token (a JWKS file), memory store
- HS256 token, Redis store    (a redis-server started here, on the load core)

Keys are generated per run; the tokens expire in an hour. Exit status 1 if an A/B
could not run; the figures go to BENCHMARKS.md by hand.

Then, because a shared machine makes the throughput ratios noisy, the same checks in
this process, timed alone: CPU microseconds per token verified (`Authenticator.identify`,
HS256 and RS256) and per request counted (`RateLimiter.hit`, memory and Redis), to set
against the gateway's CPU per request in the A/B rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import ab
import harness
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import LOAD_CPUS, BenchError, Procs

from gateway.auth.authenticator import Authenticator
from gateway.auth.jwks import read_jwks_file
from gateway.config.auth import AuthSettings
from gateway.limits import RateLimiter, parse_rate

TARGET = 0.10  # HS256 + memory limits may cost at most this share of throughput
RATE = "1000000/second"  # counted on every request, never reached


def _token(key: Any, alg: str, kid: str | None = None) -> str:
    now = int(time.time())
    claims = {"sub": "bench-user", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _rsa_jwks(workdir: Path) -> tuple[Path, str]:
    """A JWKS file with one RS256 public key; a token signed with its private key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    algo = jwt.get_algorithm_by_name("RS256")
    jwk = {**json.loads(algo.to_jwk(private.public_key())), "kid": "bench-rsa",
           "alg": "RS256", "use": "sig"}
    path = workdir / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return path, _token(private, "RS256", "bench-rsa")


def _start_redis(procs: Procs, workdir: Path) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    port = harness.free_port()
    procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(workdir)], LOAD_CPUS)
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"redis-server did not answer on port {port}")


def cases(workdir: Path, redis_url: str) -> list[tuple[str, list[tuple[str, str]], str]]:
    """(name, [(key path, TOML value for 'on')], token) per A/B."""
    secret = secrets.token_urlsafe(48)
    hs_token = _token(secret, "HS256")
    jwks_file, rs_token = _rsa_jwks(workdir)
    common = [("endpoints[*].auth", "true"), ("limits.rate", f'"{RATE}"'),
              ("limits.key", '"jwt.sub"')]
    return [
        ("HS256 + memory limits", [("auth.secret", json.dumps(secret)), *common], hs_token),
        ("RS256 + memory limits", [("auth.jwks_file", json.dumps(str(jwks_file))),
                                   ("auth.algorithms", '["RS256"]'), *common], rs_token),
        ("HS256 + Redis limits", [("auth.secret", json.dumps(secret)), *common,
                                  ("limits.store", json.dumps(redis_url))], hs_token),
    ]


MICRO_N = 2000  # checks timed per row


async def _micro(workdir: Path, redis_url: str) -> dict[str, float]:
    """CPU us per check, each kind timed alone in this process (after 100 warm-up calls)."""
    secret = secrets.token_urlsafe(48)
    jwks_file, rs_token = _rsa_jwks(workdir)
    hs = Authenticator(AuthSettings(secret=secret, algorithms=("HS256",)))
    rs = Authenticator(AuthSettings(jwks_file=str(jwks_file), algorithms=("RS256",),
                                    file_keys=read_jwks_file(str(jwks_file))))
    hs_headers = {"authorization": f"Bearer {_token(secret, 'HS256')}"}
    rs_headers = {"authorization": f"Bearer {rs_token}"}
    rate = parse_rate(RATE)
    out: dict[str, float] = {}

    async def timed(name: str, step: Any) -> None:
        for _ in range(100):
            await step()
        start = time.process_time()
        for _ in range(MICRO_N):
            await step()
        out[name] = 1e6 * (time.process_time() - start) / MICRO_N

    await timed("HS256 token verified", lambda: hs.identify(hs_headers))
    await timed("RS256 token verified", lambda: rs.identify(rs_headers))
    for store, label in (("memory", "rate counted, memory store"),
                         (redis_url, "rate counted, Redis store (client CPU only)")):
        limiter = RateLimiter(store)
        try:
            await timed(label, lambda limiter=limiter: limiter.hit("default", rate, "bench"))
        finally:
            await limiter.close()
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with Procs() as procs:
        workdir = procs.file("auth-cost.marker", "").parent
        redis_url = _start_redis(procs, workdir)
        args.micro = asyncio.run(_micro(workdir, redis_url))
        for name, keys, token in cases(workdir, redis_url):
            print(f"{name}:", file=sys.stderr, flush=True)
            ns = argparse.Namespace(
                config=str(harness.GATEWAY_CONFIG), key=[k for k, _ in keys],
                on=[v for _, v in keys], off=["absent"] * len(keys),
                header=[f"Authorization: Bearer {token}"], rounds=args.rounds,
                duration=args.duration, warmup=args.warmup, connections=args.connections)
            result = ab.run(ns)
            if any(r["errors"] for side in result["rounds"].values() for r in side):
                raise BenchError(f"{name}: wrk saw errors (non-2xx answers): "
                                 "is the token refused?")
            results.append({"name": name, **result})
    return results


def report(results: list[dict[str, Any]], micro: dict[str, float] | None = None) -> str:
    rows = []
    for r in results:
        median = {side: sorted(x["rps"] for x in r["rounds"][side]) for side in ("off", "on")}
        low, high = r["throughput_cost_range"]
        rows.append([r["name"], f"{median['off'][len(median['off']) // 2]:.0f}",
                     f"{median['on'][len(median['on']) // 2]:.0f}",
                     f"{100 * r['throughput_cost']:.1f} % ({100 * low:.1f} .. {100 * high:.1f})",
                     f"{100 * r['cpu_cost']:+.1f} %"])
    first = results[0] if results else None
    verdict = "" if first is None else (
        f"HS256 + memory limits cost {100 * first['throughput_cost']:.1f} % "
        f"(target <= {100 * TARGET:.0f} %): "
        f"{'met' if first['throughput_cost'] <= TARGET else 'NOT met'}")
    loads = ", ".join(f"{r['loadavg_before'][0]:.1f}" for r in results)
    return "\n".join([
        "## Auth + limits on vs off (same run, paired rounds)", "",
        harness.markdown_table(["variant", "off req/s", "on req/s", "throughput cost",
                                "CPU per request"], rows), "",
        verdict, f"load average before each A/B: {loads}; {os.cpu_count()} cores",
        *(["", f"In-process, each alone ({MICRO_N} calls):", "",
           harness.markdown_table(["check", "CPU us per call"],
                                  [[name, f"{us:.0f}"] for name, us in micro.items()])]
          if micro else [])])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="auth_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4, help="wrk runs per variant and A/B")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--json", metavar="PATH", help="also save every number as JSON")
    args = p.parse_args(argv)
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    try:
        results = run(args)
    except BenchError as exc:
        print(f"auth cost failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    print(report(results, args.micro))
    if args.json:
        harness.save_json(args.json, {"auth_cost": results, "micro_us": args.micro})
    return 0


if __name__ == "__main__":
    sys.exit(main())
