"""The seed pattern: a Flask view that runs `asyncio.run(fanout())` and opens a new
httpx.AsyncClient on every request. Served by gunicorn threads:

    UPSTREAM=http://127.0.0.1:9001 PYTHONPATH=benchmarks/servers \
        gunicorn --threads 8 --bind 127.0.0.1:8003 flask_asyncio:app

This is the anti-pattern the gateway replaces (STYLE.md, anti-pattern 1);
it is here to measure what the rewrite is worth.
"""

from __future__ import annotations

import asyncio
import os

import httpx
from flask import Flask

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9001")
# Upstream calls per request (the width curve); 3 = the usual /a, /b, /c fan-out.
CALLS = int(os.environ.get("CALLS", "3"))
SOURCES = [
    ("abc"[i % 3], "abc"[i % 3] if CALLS <= 3 else f"{'abc'[i % 3]}{i}") for i in range(CALLS)
]  # (path prefix, key in the reply)

app = Flask(__name__)


async def _fanout(item_id: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=UPSTREAM) as client:
        responses = await asyncio.gather(*(client.get(f"/{src}/{item_id}") for src, _ in SOURCES))
    for response in responses:
        response.raise_for_status()
    return {key: r.json() for (_, key), r in zip(SOURCES, responses, strict=True)}


@app.get("/fanout/<int:item_id>")
def fanout(item_id: int) -> dict[str, object]:
    return asyncio.run(_fanout(item_id))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8003")))
    app.run(host="127.0.0.1", port=parser.parse_args().port, threaded=True)
