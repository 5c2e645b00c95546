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

app = Flask(__name__)


async def _fanout(item_id: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=UPSTREAM) as client:
        ra, rb, rc = await asyncio.gather(
            client.get(f"/a/{item_id}"),
            client.get(f"/b/{item_id}"),
            client.get(f"/c/{item_id}"),
        )
    for response in (ra, rb, rc):
        response.raise_for_status()
    return {"a": ra.json(), "b": rb.json(), "c": rc.json()}


@app.get("/fanout/<int:item_id>")
def fanout(item_id: int) -> dict[str, object]:
    return asyncio.run(_fanout(item_id))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8003")))
    app.run(host="127.0.0.1", port=parser.parse_args().port, threaded=True)
