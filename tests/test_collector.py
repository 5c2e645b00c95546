"""The serving process's GC tuning (collector.py), in a fresh interpreter of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECK = """
import gc
from gateway import collector
garbage = []
garbage.append(garbage)  # a cycle left by start-up: collected, not frozen
del garbage
before = gc.get_freeze_count()
collector.tune()
print(gc.get_freeze_count() > before, gc.get_threshold()[0], gc.garbage == [])
"""


def test_tune_freezes_what_start_up_left_and_collects_the_young_less_often() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["True", "10000", "True"]



RELOAD = """
import asyncio, gc, weakref
from support import make_config
from gateway import collector
from gateway.config import parse_config
from gateway.runtime import Runtime

async def main():
    batch = {"path": "/b", "param": "ids", "key": "id"}
    config = parse_config(make_config({"u": {"url": "http://127.0.0.1:9", "batch": batch}}),
                          env={})
    runtime = Runtime(config)
    old = weakref.ref(runtime.upstreams["u"])
    collector.tune()  # as a serving worker does once the app is loaded
    runtime.switch(config, {"u": runtime.new_upstream(config.upstreams["u"])})
    await asyncio.gather(*runtime._retired.values())
    gc.collect()
    print(old() is None, gc.get_freeze_count())
asyncio.run(main())
"""


def test_a_batch_upstream_frozen_at_start_is_freed_once_a_reload_retires_it() -> None:
    """Upstream <-> Batcher is a cycle: frozen, it would outlive its retirement."""
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", RELOAD], capture_output=True, text=True,
                         timeout=60, check=True, env=env).stdout.split()
    assert out == ["True", "0"]
