"""The serving process's GC tuning (collector.py), in a fresh interpreter of its own."""

from __future__ import annotations

import subprocess
import sys

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

